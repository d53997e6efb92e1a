"""Held-out success by how many actions a page needs: before -> after per (task, oracle steps), per run.

    python scripts/evaluate.py --suite cpu --baselines-only eval.num_seeds=16 --out outputs/eval/cpu-16
    python scripts/horizon.py docs/runs/sft8-32steps --oracle outputs/eval/cpu-16/traces/oracle-scripted.json
    python scripts/horizon.py RECORDS --oracle TRACES --tasks click-checkboxes --decoding greedy

RECORDS are folders of run records (train.py's run folders, or a folder of them, as plot_runs.py reads):
SFT only -> SFT+GRPO. A folder scripts/evaluate.py wrote for a checkpoint (its traces/) counts too:
its base model -> its checkpoint. The oracle's traces must cover the same held-out seeds (eval.num_seeds,
eval.first_seed); for the `heldout` suite's tasks add the traces of `--suite heldout` (--oracle again).
Prints a markdown table: a row per (task, oracle steps), a column per run, the row's held-out seeds solved
before -> after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from browserrl import comparison
from browserrl.analysis import load_local, markdown_table


def columns(folder: Path, decoding: str) -> list[comparison.Column]:
    """A scripts/evaluate.py output (base -> trained) or run records (SFT only -> SFT+GRPO)."""
    traces = folder / "traces"
    if (traces / f"trained-{decoding}.json").exists():
        start = comparison.trace_outcomes(traces / f"base-{decoding}.json")
        return [(folder.name, "", start, comparison.trace_outcomes(traces / f"trained-{decoding}.json"))]
    return comparison.run_columns(load_local(folder), decoding)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", type=Path, help="run folders, folders of them, evaluate.py outputs")
    p.add_argument(
        "--oracle", type=Path, action="append", required=True, help="traces/oracle-scripted.json (repeatable)"
    )
    p.add_argument("--tasks", nargs="*", help="only these tasks")
    p.add_argument("--decoding", choices=("sampled", "greedy"), default="sampled")
    args = p.parse_args()
    steps: dict[tuple[str, int], int] = {}
    for path in args.oracle:
        steps |= comparison.oracle_steps(path)
    rows = comparison.count_rows(
        [c for folder in args.records for c in columns(folder, args.decoding)], steps
    )
    if args.tasks:
        rows = [row for row in rows if row["task"] in args.tasks]
    if not rows:
        raise SystemExit("no held-out seed of these records is in the oracle's traces: same eval seeds?")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
