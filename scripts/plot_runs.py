"""Plots and a summary table of a sweep, from its runs' local records or from W&B.

    python scripts/plot_runs.py multirun/2026-01-01/12-00-00
    python scripts/plot_runs.py wandb:ENTITY/PROJECT/GROUP --out plots/

Writes curves.png (reward and success@N against step, mean and min-max band over seeds per tuning mode and
rank), final_success.png, resources.png (wall time, peak memory, trainable parameters), eval_curves.png
(when the runs evaluated during training) and summary.md into the sweep folder (or --out); for the runs of
experiments/rl_vs_sft.yaml also rl_vs_sft.png, generalization.png and rl_vs_sft.md (browserrl/comparison.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

from browserrl import comparison
from browserrl.analysis import load_runs, write_report

matplotlib.use("Agg")  # files only, also without a display


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a sweep folder (multirun/DATE/TIME) or wandb:[ENTITY/]PROJECT/GROUP")
    p.add_argument("--out", type=Path, help="where to write (default: the sweep folder; required for W&B)")
    args = p.parse_args()
    if args.out is None and args.source.startswith("wandb:"):
        p.error("--out is required with a W&B source")
    out = args.out or Path(args.source)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(args.source)
    written = write_report(runs, out) | comparison.write_report(runs, out)
    print(written["table"].read_text())
    if "rl_vs_sft_table" in written:
        print(written["rl_vs_sft_table"].read_text())
    print("\n".join(f"{name}: {path}" for name, path in written.items()))


if __name__ == "__main__":
    main()
