"""Held-out success by how many actions a page needs: SFT-only -> SFT+GRPO per (task, oracle steps), per run.

    python scripts/evaluate.py --suite cpu --baselines-only eval.num_seeds=16 --out outputs/eval/cpu-16
    python scripts/horizon.py docs/runs/sft8-32steps --oracle outputs/eval/cpu-16/traces/oracle-scripted.json
    python scripts/horizon.py RECORDS --oracle TRACES --tasks click-checkboxes --decoding greedy

The oracle's traces must cover the records' held-out seeds (the same eval.num_seeds and eval.first_seed);
for the `heldout` suite's tasks, add the traces of `--suite heldout` (--oracle again). RECORDS are folders
of run records (train.py's run folders, or a folder of them, as plot_runs.py reads). Prints a markdown
table: a row per (task, oracle steps), a column per run, "solved by SFT only -> solved after GRPO" of that
row's held-out seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from browserrl import comparison
from browserrl.analysis import load_local, markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", type=Path, help="run folders, or folders of them")
    p.add_argument(
        "--oracle", type=Path, action="append", required=True, help="traces/oracle-scripted.json (repeatable)"
    )
    p.add_argument("--tasks", nargs="*", help="only these tasks")
    p.add_argument("--decoding", choices=("sampled", "greedy"), default="sampled")
    args = p.parse_args()
    steps: dict[tuple[str, int], int] = {}
    for path in args.oracle:
        steps |= comparison.oracle_steps(path)
    runs = [run for folder in args.records for run in load_local(folder)]
    rows = comparison.task_rows(runs, args.decoding, steps)
    if args.tasks:
        rows = [row for row in rows if row["task"] in args.tasks]
    if not rows:
        raise SystemExit("no held-out seed of these records is in the oracle's traces: same eval seeds?")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
