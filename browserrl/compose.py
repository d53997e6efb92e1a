"""conf/train.yaml composed outside `train.py` (evaluation, benchmarks, the device check, tests): the same
config `python train.py OVERRIDES` would run. Imports Hydra and nothing of browserrl's, so the device check
can use it on a machine without openenv or Chromium."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml with train.py's command-line overrides (`task=click-button`, `trainer.max_steps=2`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)
