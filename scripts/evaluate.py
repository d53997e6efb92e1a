"""Evaluate a checkpoint on held-out seeds: greedy and sampled episodes, the base model as the baseline row.

    python scripts/evaluate.py RUN/final [eval.num_seeds=64 env.sessions=8 ...] [--samples 4] [--gif]
    make eval CKPT=RUN/final ARGS="--samples 4"

CKPT is a run's final/ (LoRA adapter or full model) or one of its checkpoints/checkpoint-N. Settings are
dotted overrides on the run's saved config (e.g. env.mode=remote env.url=http://HOST:8000). Writes
success_table.md, results.json and traces/ (and screenshots/ on request) into --out (default: RUN/eval).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from browserrl.evaluate import evaluate_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="RUN/final or RUN/checkpoints/checkpoint-N")
    p.add_argument("overrides", nargs="*", help="dotted settings on the run's config: eval.num_seeds=64")
    p.add_argument("--out", type=Path, help="output folder (default: the run dir's eval/)")
    p.add_argument("--samples", type=int, default=1, help="sampled episodes per held-out seed")
    p.add_argument("--no-baseline", action="store_true", help="skip the base model's rows")
    p.add_argument("--screenshots", action="store_true", help="a PNG screenshot per step of every episode")
    p.add_argument("--gif", action="store_true", help="a GIF per episode (implies --screenshots)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_dir = args.checkpoint.parent if args.checkpoint.name == "final" else args.checkpoint.parent.parent
    out = args.out or run_dir / "eval"
    evaluate_checkpoint(
        args.checkpoint,
        out,
        args.overrides,
        samples=args.samples,
        baseline=not args.no_baseline,
        screenshots=args.screenshots,
        gif=args.gif,
    )
    print((out / "success_table.md").read_text())
    print(f"traces: {out / 'traces'}")


if __name__ == "__main__":
    main()
