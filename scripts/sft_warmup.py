"""SFT warm-up on its own: oracle demonstrations -> SFTTrainer -> a checkpoint GRPO can start from.

    python scripts/sft_warmup.py sft=oracle [model=... tuning=... infra=...]
    python train.py [model=...] model.source=path model.name_or_path=<printed folder>
    python scripts/evaluate.py RUN/sft/final        # the SFT-only policy's held-out success

Same config tree as train.py (conf/train.yaml), so model, tuning, infra, env and the task's prompt settings
are those the GRPO run will use. `python train.py sft=oracle` does both steps in one run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from browserrl.build import env_pool
from browserrl.config import ConfigError, preflight, validate
from browserrl.modeling import SFT_DIR
from browserrl.sft import warm_up

log = logging.getLogger("sft_warmup")


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if not cfg.get("sft") or not cfg.sft.enabled:
        raise SystemExit("choose the warm-up: sft=oracle")
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        preflight(cfg)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)  # as train.py does: evaluate.py reads sft/final
    with env_pool(cfg) as pool:
        final = warm_up(cfg, pool, out / SFT_DIR)
    log.info(
        "GRPO from it: python train.py model=%s model.source=path model.name_or_path=%s",
        cfg.model.name,
        final.resolve(),
    )


if __name__ == "__main__":
    main()
