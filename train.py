"""GRPO on MiniWoB++: `python train.py task=click-test tuning=lora -m lora.r=8,16,32` (conf/, README)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from browserrl.compose import moved
from browserrl.config import ConfigError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from browserrl.train import run

    try:
        summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    return summary.get("eval/success_rate", float("nan"))


if __name__ == "__main__":
    # Hydra's parser takes its flags only before the overrides; accept `train.py a=b -m c=1,2` too.
    for flag in ("-m", "--multirun"):
        if flag in sys.argv[2:]:
            sys.argv.remove(flag)
            sys.argv.insert(1, flag)
    if message := moved(sys.argv[1:]):
        print(f"config error: {message}", file=sys.stderr)
        sys.exit(2)
    main()
