"""Held-out evaluation of a suite: the base model, a trained checkpoint, and the baselines that would expose a
shortcut (the scripted oracle, a random valid action, the best constant action), per task.

    python scripts/evaluate.py --suite cpu                          # base model + baselines on the cpu suite
    python scripts/evaluate.py RUN/final                            # a run, on the tasks it trained on
    python scripts/evaluate.py RUN/final --suite heldout --samples 4 eval.num_seeds=64
    make eval ARGS="--suite cpu"          make eval CKPT=RUN/final ARGS="--suite heldout"

CKPT is a run's final/ (LoRA adapter or full model) or one of its checkpoints/checkpoint-N; the run's saved
config gives the model, prompt and sampling, and dotted overrides change it (eval.num_seeds=64,
env.mode=remote env.url=http://HOST:8000). Without CKPT the overrides are train.py's (model=..., task=...).
`--suite NAME` plays conf/suite/NAME.yaml's tasks with their own settings. Writes success_table.md,
results.json, suite_success.png and traces/ (screenshots/ on request) into --out (default: RUN/eval, or
outputs/eval/SUITE). Base-model and baseline results are cached (docs/experiments.md).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hydra.errors import HydraException

from browserrl.compose import MovedKeyError
from browserrl.config import ConfigError, preflight, validate
from browserrl.evaluate import evaluate_suite, evaluation_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", type=Path, help="RUN/final or RUN/checkpoints/checkpoint-N")
    p.add_argument("overrides", nargs="*", help="eval.num_seeds=64 ... (without CKPT: train.py's overrides)")
    p.add_argument("--suite", help="evaluate on conf/suite/SUITE.yaml's tasks (default: the run's own)")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--samples", type=int, default=1, help="sampled episodes per held-out seed")
    p.add_argument("--no-baselines", action="store_true", help="skip the oracle, random and constant rows")
    p.add_argument("--baselines-only", action="store_true", help="only the oracle, random and constant rows")
    p.add_argument("--screenshots", action="store_true", help="a PNG screenshot per step of every episode")
    p.add_argument("--gif", action="store_true", help="a GIF per episode (implies --screenshots)")
    args = p.parse_intermixed_args()  # options may come between the checkpoint and the overrides
    if args.checkpoint is not None and "=" in str(args.checkpoint):  # only overrides were given
        args.overrides.insert(0, str(args.checkpoint))
        args.checkpoint = None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = evaluation_config(args.checkpoint, args.overrides, args.suite)
    except (HydraException, MovedKeyError) as exc:  # a bad group option or a moved key ends here, in one line
        raise SystemExit(f"config error: {exc}") from None
    try:
        validate(cfg, trains=False)  # an evaluation trains nothing: sft.*, grpo.*, lora.* are not read
        preflight(cfg)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None
    if args.out:
        out = args.out
    elif args.checkpoint is not None:
        run_dir = args.checkpoint.parent if args.checkpoint.name == "final" else args.checkpoint.parent.parent
        out = run_dir / "eval" / (args.suite or "")
    else:
        out = Path("outputs") / "eval" / cfg.suite.name
    evaluate_suite(
        cfg,
        out,
        args.checkpoint,
        samples=args.samples,
        with_baselines=not args.no_baselines,
        with_models=not args.baselines_only,
        screenshots=args.screenshots,
        gif=args.gif,
    )
    print((out / "success_table.md").read_text())
    print(f"written to {out}: success_table.md, results.json, suite_success.png, traces/")


if __name__ == "__main__":
    main()
