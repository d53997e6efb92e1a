"""Sweeps with every point in a fresh process: Hydra's launcher `hydra/launcher=process_per_run`
(hydra_plugins/browserrl_sweep: Hydra takes launchers from that package only).

Hydra's basic launcher runs a sweep's points one after another in its own process. On a GPU each point builds
a GRPOTrainer with a colocated vLLM engine that holds its share of GPU memory (and an engine process) after
the run ends, so the second point stacks a second engine on the first. Here each point is `python train.py
<its overrides>` in a new session, run to its end; whatever it left running in its process group (a vLLM
engine core) is killed before the next point starts; the env server, in a session of its own, is stopped by
the run itself. Points run one at a time; a failed point does not stop the rest, and the sweep reports it at
the end. `infra=gpu` selects this launcher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: Seconds a point gets to end by itself after Ctrl-C, before its process group is killed.
INTERRUPT_GRACE_S = 30


def quote(value: str) -> str:
    """A value as a quoted Hydra override string (a path may hold characters the grammar reads)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def end_group(pgid: int) -> None:
    """Kill whatever the point left in its process group (an engine core, a server, a browser)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_point(command: list[str]) -> tuple[int, int]:
    """Run one point to its end in a session of its own; (pid, exit code). Ctrl-C reaches it as SIGINT."""
    process = subprocess.Popen(command, start_new_session=True)
    log.info("\t  pid %d", process.pid)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(INTERRUPT_GRACE_S)
        finally:
            end_group(process.pid)
        raise
    end_group(process.pid)
    return process.pid, code


def point_return(overrides: Sequence[str], config: DictConfig, run_dir: Path, code: int) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), cfg=config, working_dir=str(run_dir))
    ret.task_name = str(config.hydra.job.name)
    if code == 0:
        ret.status, ret.return_value = JobStatus.COMPLETED, code
    else:
        ret.status = JobStatus.FAILED
        ret.return_value = RuntimeError(f"the run in {run_dir} exited with code {code}: see its train.log")
    return ret
