"""conf/train.yaml composed outside `train.py` (evaluation, benchmarks, the device check, tests): the same
config `python train.py OVERRIDES` would run. Imports Hydra and nothing of browserrl's, so the device check
can use it on a machine without openenv or Chromium."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

#: Keys a command line may still name that have moved: old key -> what sets it now. Hydra alone would
#: answer that the old key is not in the config, without saying where it went.
MOVED = {
    "infra.study_max_steps": "trainer.max_steps (a study's budget by infra: study.budgets in experiments/)",
    "infra.study_eval_seeds": "eval.num_seeds (a study's budget by infra: study.budgets in experiments/)",
}


class MovedKeyError(ValueError):
    """An override names a key that has moved; the message names where it went."""


def moved(overrides: list[str]) -> str | None:
    """'KEY: moved to ...' for the first override that sets a moved key, else None."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in MOVED:
            return f"{key}: moved to {MOVED[key]}"
    return None


def compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml with train.py's command-line overrides (`task=click-button`, `trainer.max_steps=2`)."""
    if message := moved(list(overrides)):
        raise MovedKeyError(message)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)
