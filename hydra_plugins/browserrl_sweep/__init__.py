"""Hydra's launcher `hydra/launcher=process_per_run`: each point of a sweep in a fresh process, one at a time
(browserrl/sweep.py says why). Hydra instantiates launchers from this package only, and imports its modules
without registering them, so no `from __future__ import annotations` here: dataclasses would fail on it."""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from browserrl.sweep import point_return, quote, run_point

log = logging.getLogger(__name__)


@dataclass
class ProcessPerRunConf:
    _target_: str = "hydra_plugins.browserrl_sweep.ProcessPerRunLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="process_per_run", node=ProcessPerRunConf, provider="browserrl"
)


class ProcessPerRunLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        flags = [a for a in sys.argv[1:] if a.startswith("-") and a not in ("-m", "--multirun")]
        if flags:  # every point is `python <script> <overrides>`: other flags would be lost
            raise ValueError(f"hydra/launcher=process_per_run takes overrides only, not {flags}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d runs, each in a fresh process", len(job_overrides))
        returns = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
            HydraConfig.instance().set_config(config)  # the subdir may read hydra.job.num
            run_dir = sweep_dir / str(config.hydra.sweep.subdir)
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            extra = [f"hydra.run.dir={quote(str(run_dir))}", f"++logger.group={quote(sweep_dir.name)}"]
            _, code = run_point([sys.executable, sys.argv[0], *overrides, *extra])
            returns.append(point_return(overrides, config, run_dir, code))
        return returns
