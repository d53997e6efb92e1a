"""What RL buys over imitation: the runs of experiments/rl_vs_sft.yaml as points of held-out success against
the demonstrations and the CPU minutes each policy cost, and paired differences with their intervals.

A run with an SFT warm-up gives two policies: its SFT checkpoint (`sft/*`, evaluated before GRPO: the
SFT-only arm) and its final policy (`eval/*`: SFT+GRPO), on the same held-out seeds. A run without one gives
the base model (`base/*`) and GRPO's policy (with the expert in the group or without). Demonstrations are
the SFT warm-up's plus every expert episode GRPO put into a group; CPU minutes are the wall minutes of the
phases that made the policy (SFT, GRPO) on the machine the run used, evaluation left out.

A difference between two policies is paired by (training seed, task, held-out seed): both played the same
pages. Its 95% interval is a percentile bootstrap over held-out seeds, resampled within each (training seed,
task) cell; tasks are the suite's (fixed), and two or three training seeds are too few to resample, so the
interval is the evaluation's noise for these training runs, not the spread over training seeds.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, NamedTuple

from browserrl.analysis import Run, _finite, _pyplot, markdown_table


@dataclass
class Point:
    """One policy of one run."""

    run: Run
    arm: str
    prefix: str  # its keys in summary.json: base, sft or eval
    demonstrations: float
    cpu_minutes: float

    def success(self, greedy: bool = False, transfer: bool = False) -> float | None:
        key = ("transfer/" if transfer else "") + f"{self.prefix}/{'greedy_' if greedy else ''}success_rate"
        value = self.run.summary.get(key)
        return float(value) if _finite(value) else None


class GRPOSetting(NamedTuple):
    """What sets one GRPO arm apart from another in the study: the expert in the group, its SFT weight (0:
    off), guided starts, and the task sampling (records from before an option have its default)."""

    expert: bool
    expert_weight: float
    sampling: str
    guided: bool = False

    @classmethod
    def of(cls, run: Run) -> GRPOSetting:
        grpo = run.config.get("grpo", {})
        weight = float(grpo.get("expert_sft_weight") or 0.0)
        sampling = str(grpo.get("task_sampling", "uniform"))
        return cls(bool(grpo.get("expert")), weight, sampling, bool(grpo.get("guided")))

    @property
    def expert_text(self) -> str:
        """'plain', 'with the expert', 'with the expert, SFT weight 1', 'with the expert, guided starts'."""
        if not self.expert:
            return "plain"
        weight = f", SFT weight {self.expert_weight:g}" if self.expert_weight else ""
        return "with the expert" + weight + (", guided starts" if self.guided else "")

    @property
    def suffix(self) -> str:
        """A point's label after 'GRPO': '+expert', '+expert x1', '+expert+guided', ', learning'."""
        weight = f" x{self.expert_weight:g}" if self.expert_weight else ""
        sampling = "" if self.sampling == "uniform" else f", {self.sampling}"
        expert = "+expert" + weight + ("+guided" if self.guided else "")
        return (expert if self.expert else "") + sampling


def sft_epochs(run: Run) -> float | None:
    """The SFT warm-up's epochs over its demonstrations (None: not recorded): 2 and 8 epochs over the same
    40 episodes are different imitation baselines (docs/benchmarks.md), so they are never pooled."""
    epochs = run.config.get("sft", {}).get("trainer", {}).get("num_train_epochs")
    return float(epochs) if epochs is not None else None


def _epochs_text(epochs: float | None) -> str:
    """A label's tail: ', 8 SFT epochs' ('' where the record does not say)."""
    return "" if epochs is None else f", {epochs:g} SFT epochs"


def points(runs: list[Run]) -> list[Point]:
    """Each run's two policies: its start (the base model, or its SFT checkpoint) and its GRPO result (runs
    that record their demonstrations: older records say nothing of what they cost)."""
    found = []
    for run in (r for r in runs if "demonstrations" in r.summary):
        s = run.summary
        sft = int(s.get("demonstrations/sft") or 0)
        expert = int(s.get("demonstrations/expert") or 0)
        sft_min, grpo_min = (float(s.get(k) or 0.0) / 60 for k in ("time/sft_s", "time/grpo_s"))
        with_expert = GRPOSetting.of(run).suffix
        if sft:
            epochs = _epochs_text(sft_epochs(run))
            found.append(Point(run, f"SFT only{epochs}", "sft", sft, sft_min))
            found.append(
                Point(run, f"SFT+GRPO{with_expert}{epochs}", "eval", sft + expert, sft_min + grpo_min)
            )
        else:
            arm = f"GRPO{with_expert}"
            found.append(Point(run, "base", "base", 0, 0.0))
            found.append(Point(run, arm, "eval", expert, grpo_min))
    return [p for p in found if p.success() is not None]


def outcomes(run_dir: Path, prefix: str, decoding: str) -> dict[tuple[str, int], bool]:
    """(task, held-out seed) -> solved, from the run's heldout/PREFIX-DECODING.json."""
    path = run_dir / "heldout" / f"{prefix.replace('/', '-')}-{decoding}.json"
    return {(task, int(seed)): bool(ok) for task, seed, ok in json.loads(path.read_text())}


@dataclass
class Difference:
    mean: float
    low: float
    high: float
    pairs: int


def paired_difference(
    pairs: list[tuple[dict[tuple[str, int], bool], dict[tuple[str, int], bool]]],
    resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """Mean of (b - a) over every (training seed, task) cell's held-out seeds, for pairs (a, b) of outcome
    maps of one training seed each, with a 95% percentile bootstrap interval over held-out seeds resampled
    within each cell (module docstring)."""
    cells = []
    for a, b in pairs:
        by_task: dict[str, list[float]] = defaultdict(list)
        for (task, held_out), solved in b.items():
            by_task[task].append(float(solved) - float(a[(task, held_out)]))
        cells += list(by_task.values())
    observed = mean(mean(c) for c in cells)
    rng = random.Random(seed)
    draws = sorted(mean(mean(rng.choices(c, k=len(c))) for c in cells) for _ in range(resamples))
    return Difference(
        observed, draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1], sum(map(len, cells))
    )


def difference_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """SFT+GRPO minus SFT only, per number of demonstrations, SFT epochs, GRPO setting, suite and decoding
    (runs whose held-out outcomes are on disk)."""
    by_arm: dict[tuple[int, float | None, GRPOSetting], list[Run]] = defaultdict(list)  # each setting apart
    for run in runs:
        if run.summary.get("demonstrations/sft") and run.path is not None:
            by_arm[(int(run.summary["demonstrations/sft"]), sft_epochs(run), GRPOSetting.of(run))].append(run)
    rows = []
    arms = sorted(by_arm.items(), key=lambda arm: (arm[0][0], arm[0][1] or 0.0, arm[0][2]))
    for (demos, epochs, setting), members in arms:
        for suite in ("", "transfer/"):
            for decoding in ("sampled", "greedy"):
                try:
                    pairs = [
                        (
                            outcomes(r.path, f"{suite}sft", decoding),
                            outcomes(r.path, f"{suite}eval", decoding),
                        )
                        for r in members
                    ]
                except FileNotFoundError:
                    continue
                diff = paired_difference(pairs)
                rows.append(
                    {
                        "SFT demonstrations": demos,
                        "SFT epochs": None if epochs is None else f"{epochs:g}",
                        "GRPO": setting.expert_text,
                        "task sampling": setting.sampling,
                        "suite": "transfer" if suite else "training suite",
                        "decoding": decoding,
                        "seeds": ",".join(str(r.seed) for r in members),
                        "SFT+GRPO - SFT": diff.mean,
                        "95% interval": f"[{diff.low:+.3f}, {diff.high:+.3f}]",
                        "paired episodes": diff.pairs,
                    }
                )
    return rows


def oracle_steps(traces_path: str | Path) -> dict[tuple[str, int], int]:
    """(task, held-out seed) -> actions the oracle took to solve that page, from traces/oracle-scripted.json
    of `scripts/evaluate.py --baselines-only` (pages it did not solve left out)."""
    traces = json.loads(Path(traces_path).read_text())
    return {(t["task"], int(t["seed"])): int(t["steps"]) for t in traces if t["success"]}


def trace_outcomes(path: str | Path) -> dict[tuple[str, int], bool]:
    """(task, held-out seed) -> solved, from a traces/POLICY-DECODING.json of scripts/evaluate.py."""
    return {(t["task"], int(t["seed"])): bool(t["success"]) for t in json.loads(Path(path).read_text())}


#: One column of `count_rows`: (its name, suite prefix "" or "transfer/", outcomes before, outcomes after).
Column = tuple[str, str, dict[tuple[str, int], bool], dict[tuple[str, int], bool]]


def run_columns(runs: list[Run], decoding: str = "sampled") -> list[Column]:
    """Each run's SFT-only and GRPO outcomes from heldout/, on the suite and on the transfer tasks."""
    columns = []
    for run in runs:
        if run.path is None:  # a W&B run: no heldout/ outcomes
            continue
        for suite in ("", "transfer/"):
            try:  # a run from the base model has no SFT-only outcomes, a run still going no GRPO ones
                start = outcomes(run.path, f"{suite}sft", decoding)
                end = outcomes(run.path, f"{suite}eval", decoding)
            except FileNotFoundError:
                continue
            columns.append((run.name, suite, start, end))
    return columns


def count_rows(
    columns: list[Column], steps: dict[tuple[str, int], int] | None = None
) -> list[dict[str, Any]]:
    """Where a difference comes from: a row per (suite, task), a column per policy pair, the held-out seeds
    each solved ("5 -> 14"). With `steps` (`oracle_steps`) a row per (suite, task, actions the page needs):
    whether a policy fails a task everywhere or only on its longer pages; pages the oracle did not solve are
    left out."""
    table: dict[tuple[str, str, int], dict[str, Any]] = {}
    for name, suite, start, end in columns:
        cells: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
        for key in start:
            if steps is None:
                cells[key[0], 0].append(key)
            elif key in steps:
                cells[key[0], steps[key]].append(key)
        for (task, n), keys in cells.items():
            row = table.setdefault(
                (suite, task, n),
                {"suite": "transfer" if suite else "training suite", "task": task}
                | ({} if steps is None else {"oracle steps": n})
                | {"held-out seeds": len(keys)},
            )
            row[name] = f"{sum(start[k] for k in keys)} -> {sum(end[k] for k in keys)}"
    return [table[key] for key in sorted(table)]


def task_rows(runs: list[Run], decoding: str = "sampled") -> list[dict[str, Any]]:
    """`count_rows` of the runs with an SFT start: SFT only -> SFT+GRPO, per task."""
    return count_rows(run_columns(runs, decoding))


def point_rows(found: list[Point]) -> list[dict[str, Any]]:
    return [
        {
            "run": p.run.name,
            "seed": p.run.seed,
            "arm": p.arm,
            "demonstrations": p.demonstrations,
            "CPU minutes": p.cpu_minutes,
            "suite sampled": p.success(),
            "suite greedy": p.success(greedy=True),
            "transfer sampled": p.success(transfer=True),
            "transfer greedy": p.success(greedy=True, transfer=True),
        }
        for p in found
    ]


def plot_success_vs_cost(found: list[Point]) -> Any:
    """Held-out suite success against demonstrations and against CPU minutes: a line per arm through the
    mean over seeds at each number of demonstrations, the seeds' min-max as a band; sampled and greedy."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    arms = list(dict.fromkeys(p.arm for p in found))
    for row, greedy in enumerate((False, True)):
        for col, (x_of, label) in enumerate(
            ((lambda p: p.demonstrations, "demonstrations"), (lambda p: p.cpu_minutes, "CPU minutes"))
        ):
            ax = axes[row][col]
            for i, arm in enumerate(arms):
                mine = [p for p in found if p.arm == arm and p.success(greedy) is not None]
                by_demos: dict[int, list[Point]] = defaultdict(list)
                for p in mine:  # a point per number of SFT demonstrations (expert runs: their mean)
                    by_demos[int(p.run.summary.get("demonstrations/sft") or 0)].append(p)
                xs, ys, lo, hi = [], [], [], []
                for _, members in sorted(by_demos.items()):
                    values = [p.success(greedy) for p in members]
                    xs.append(mean(x_of(p) for p in members))
                    ys.append(mean(values))
                    lo.append(min(values))
                    hi.append(max(values))
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=arm)
                ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.2)
                ax.scatter([x_of(p) for p in mine], [p.success(greedy) for p in mine], color=f"C{i}", s=10)
            _axes(ax, label, f"held-out success, {'greedy' if greedy else 'sampled'}")
    axes[0][0].legend(fontsize="small")
    fig.suptitle("what RL buys: held-out suite success (line: mean over seeds, band: min-max)")
    fig.tight_layout()
    return fig


def _axes(ax: Any, xlabel: str, ylabel: str) -> None:
    """Labels, a success axis from 0 to 1 and a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def plot_generalization(found: list[Point]) -> Any:
    """Transfer-suite success against suite success, a point per policy, an arrow from each run's start
    (base or SFT) to its GRPO result: does what RL adds carry to tasks it never trained on?"""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), squeeze=False)
    arms = list(dict.fromkeys(p.arm for p in found))
    for ax, greedy in zip(axes[0], (False, True)):
        for i, arm in enumerate(arms):
            mine = [p for p in found if p.arm == arm and p.success(greedy, transfer=True) is not None]
            ax.scatter(
                [p.success(greedy) for p in mine],
                [p.success(greedy, transfer=True) for p in mine],
                color=f"C{i}",
                label=arm,
            )
        by_run: dict[str, list[Point]] = defaultdict(list)
        for p in found:
            by_run[p.run.name].append(p)
        for start, end in (ps for ps in by_run.values() if len(ps) == 2):
            a = (start.success(greedy), start.success(greedy, transfer=True))
            b = (end.success(greedy), end.success(greedy, transfer=True))
            if None not in a + b:
                ax.annotate("", b, a, arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8})
        ax.plot([0, 1], [0, 1], ls=":", color="0.7")
        decoding = "greedy" if greedy else "sampled"
        _axes(ax, f"training suite, held-out seeds ({decoding})", "transfer suite (unseen tasks)")
        ax.set_xlim(-0.02, 1.02)
    axes[0][0].legend(fontsize="small")
    fig.suptitle("does RL generalize? each run's start -> its GRPO policy")
    fig.tight_layout()
    return fig


def write_report(runs: list[Run], out_dir: str | Path) -> dict[str, Path]:
    """rl_vs_sft.png, generalization.png and rl_vs_sft.md (every policy's point; SFT+GRPO minus SFT with its
    interval) for the runs that record demonstrations; nothing for other sweeps."""
    found = points(runs)
    if not found:
        return {}
    plt = _pyplot()
    out_dir = Path(out_dir)
    written = {}
    for name, fig in (
        ("rl_vs_sft", plot_success_vs_cost(found)),
        ("generalization", plot_generalization(found)),
    ):
        written[name] = out_dir / f"{name}.png"
        fig.savefig(written[name], dpi=110)
        plt.close(fig)
    diffs = difference_rows(runs)
    written["rl_vs_sft_table"] = out_dir / "rl_vs_sft.md"
    written["rl_vs_sft_table"].write_text(
        "# What RL buys\n\nHeld-out success of every policy (suite: the training suite's tasks on held-out "
        "seeds; transfer: tasks never trained on), the demonstrations it consumed (SFT + expert episodes) "
        "and the CPU minutes of the phases that made it (evaluation excluded).\n\n"
        + markdown_table(point_rows(found))
        + (
            "\nSFT+GRPO minus SFT only, paired by (training seed, task, held-out seed); 95% percentile "
            "bootstrap over held-out seeds within each (training seed, task) (browserrl/comparison.py):\n\n"
            + markdown_table(diffs)
            + "\nHeld-out seeds solved per task, SFT only -> SFT+GRPO (sampled):\n\n"
            + markdown_table(task_rows(runs))
            if diffs
            else ""
        )
    )
    return written
