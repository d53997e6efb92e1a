"""Read the runs of a sweep (local records or W&B), aggregate them over seeds, draw the study's plots.

A run's local record is its Hydra folder: config.yaml (resolved), metrics.jsonl (one row per logging step)
and summary.json (held-out results of its start, base/* or sft/*, and of its end, eval/*; parameters, wall
time, peak memory). Runs are grouped by tuning mode and LoRA rank; the seeds of a group give a mean and a
min-max band. Nothing here invents a value: a metric a run did not record is left out of the plots and
shown as "-" in the table.

Peak memory is measured here too (`reset_peak_memory` / `peak_memory_mb`), so the analysis owns how the
number it plots was taken.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

SUCCESS_KEYS = ("success@1", "success@2", "success@4", "success@max")
CURVE_METRICS = ("reward", *SUCCESS_KEYS)
TARGET_SUCCESS = 0.9


@dataclass
class Run:
    """One training run: its resolved config, logged rows (training steps and periodic eval) and summary."""

    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # its folder, for a local record (held-out outcomes live there)

    @property
    def tuning(self) -> str:
        return self.config["tuning"]["name"]

    @property
    def rank(self) -> int | None:
        lora = self.config.get("lora")
        return int(lora["r"]) if self.tuning == "lora" and lora else None

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def tasks(self) -> list[str]:
        """The tasks the run trained on: its suite's (runs older than suites: its one task)."""
        suite = self.config.get("suite") or {"tasks": [self.config["task"]["name"]]}
        return list(suite["tasks"])

    @property
    def start(self) -> str:
        """The policy GRPO started from, as the summary names its held-out results: `sft` after the SFT
        warm-up, else `base`."""
        return "sft" if (self.config.get("sft") or {}).get("enabled") else "base"

    @property
    def group(self) -> str:
        """What the seeds of a study share: `full`, `lora r=8`, ..."""
        return self.tuning if self.rank is None else f"{self.tuning} r={self.rank}"

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a logged metric, skipping rows where it is absent or null."""
        points = [(r["step"], r[metric]) for r in self.history if _finite(r.get(metric))]
        return [s for s, _ in points], [float(v) for _, v in points]

    def steps_to(self, target: float = TARGET_SUCCESS, metric: str = "success_rate") -> int | None:
        """First logged step whose training success rate reaches `target` (None: never)."""
        steps, values = self.series(metric)
        return next((s for s, v in zip(steps, values) if v >= target), None)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _job_order(path: Path) -> tuple[int, str]:
    """Multirun folders are `N-RUNNAME`: sort by N, not alphabetically (10 after 9)."""
    match = re.match(r"(\d+)-", path.name)
    return (int(match.group(1)) if match else sys.maxsize, path.name)


def load_local(sweep_dir: str | Path) -> list[Run]:
    """Every run folder under `sweep_dir` (a multirun dir, or one run dir) that holds config.yaml and
    metrics.jsonl; summary.json is optional (a run still going, or one that crashed, has none)."""
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    folders = (
        [sweep_dir] if (sweep_dir / "metrics.jsonl").exists() else sorted(sweep_dir.iterdir(), key=_job_order)
    )
    runs = []
    for folder in folders:
        if not ((folder / "config.yaml").exists() and (folder / "metrics.jsonl").exists()):
            continue
        config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=False)
        history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        summary_file = folder / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        runs.append(Run(folder.name, config, history, summary, folder))
    if not runs:
        raise FileNotFoundError(f"no runs (config.yaml + metrics.jsonl) under {sweep_dir}")
    return runs


def load_wandb(project: str, group: str) -> list[Run]:
    """The runs of one W&B group (`project` as ENTITY/PROJECT or PROJECT): the config logged at init, the
    history (HF's callback prefixes training keys with `train/`, stripped here) and the summary."""
    import wandb

    runs = []
    for remote in wandb.Api().runs(project, filters={"group": group}, order="+created_at"):
        history = []
        for row in remote.scan_history():
            step = row.get("train/global_step")
            if step is None:
                continue
            metrics = {k.removeprefix("train/"): v for k, v in row.items() if not k.startswith("_")}
            history.append({**metrics, "step": int(step)})
        summary = {k: v for k, v in remote.summary.items() if not k.startswith(("_", "train/"))}
        runs.append(Run(remote.name, dict(remote.config), history, summary))
    if not runs:
        raise LookupError(f"no W&B runs in {project} with group {group}")
    return runs


def load_runs(source: str | Path) -> list[Run]:
    """A sweep folder, or `wandb:PROJECT/GROUP` / `wandb:ENTITY/PROJECT/GROUP`."""
    text = str(source)
    if text.startswith("wandb:"):
        project, _, group = text.removeprefix("wandb:").rpartition("/")
        return load_wandb(project, group)
    return load_local(source)


def latest_sweep(root: str | Path = "multirun") -> Path:
    """The newest multirun folder (`multirun/DATE/TIME`) holding at least one run."""
    sweeps = sorted(p.parent.parent for p in Path(root).glob("*/*/*/metrics.jsonl"))
    if not sweeps:
        raise FileNotFoundError(f"no sweep with runs under {root}/: run `make sweep` first")
    return sweeps[-1]


def by_group(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by tuning mode and rank: full first, then LoRA by increasing rank."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.tuning != "full", r.rank or 0, r.seed)):
        groups[run.group].append(run)
    return dict(groups)


@dataclass
class Band:
    """A metric against step over the seeds of a group: mean and min/max at each step all seeds logged."""

    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    seeds: int


def band(runs: list[Run], metric: str) -> Band | None:
    """Aggregate over seeds at the steps every run logged (a shorter or crashed run cuts the band short)."""
    series = [dict(zip(*run.series(metric))) for run in runs]
    series = [s for s in series if s]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    values = [[s[step] for s in series] for step in steps]
    return Band(
        steps, [mean(v) for v in values], [min(v) for v in values], [max(v) for v in values], len(series)
    )


def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run: what the study compares (held-out success after training, budget, size)."""
    return [
        {
            "run": run.name,
            "tuning": run.tuning,
            "r": run.rank,
            "seed": run.seed,
            "success@1": run.summary.get("eval/success@1"),
            "success@max": run.summary.get("eval/success@max"),
            "start": run.start,
            "start success@max": run.summary.get(f"{run.start}/success@max"),
            f"steps to {TARGET_SUCCESS}": run.steps_to(),
            "wall time (s)": run.summary.get("wall_time_s"),
            "peak RSS (MB)": run.summary.get("peak_rss_mb"),
            "trainable params": run.summary.get("params/trainable"),
        }
        for run in runs
    ]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """pyplot, imported on first use: loading and aggregating runs needs no matplotlib."""
    import matplotlib.pyplot as plt

    return plt


#: Line styles and markers by group: runs whose curves coincide (LoRA ranks from the same seed) stay apart.
STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 3)), "P"))


def plot_curves(runs: list[Run], metrics: tuple[str, ...] = CURVE_METRICS, prefix: str = "") -> Any:
    """One panel per metric against step: a line per group (mean over seeds) and its min-max band."""
    plt = _pyplot()
    groups = by_group(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for (label, members), (style, marker) in zip(groups.items(), itertools.cycle(STYLES)):
            agg = band(members, prefix + metric)
            if agg is None:
                continue
            (line,) = ax.plot(
                agg.steps, agg.mean, ls=style, marker=marker, ms=4, label=f"{label} (n={agg.seeds})"
            )
            ax.fill_between(agg.steps, agg.low, agg.high, color=line.get_color(), alpha=0.2)
        ax.set_title(prefix + metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(("held-out " if prefix else "training ") + "mean over seeds, band: min-max")
    fig.tight_layout()
    return fig


def plot_final_success(runs: list[Run]) -> Any:
    """Held-out success@N after training per group, the policies they started from first (the base model,
    an SFT warm-up; bars: mean over seeds, whiskers: min-max)."""
    plt = _pyplot()
    groups = by_group(runs)
    starts = {s: [r for r in runs if f"{s}/success@max" in r.summary] for s in ("base", "sft")}
    rows = {s: members for s, members in starts.items() if members} | groups
    prefixes = {s: f"{s}/" for s in starts}
    fig, ax = plt.subplots(figsize=(3 + 0.8 * len(SUCCESS_KEYS) * len(rows), 3.6))
    width = 0.8 / max(len(rows), 1)
    for i, (label, members) in enumerate(rows.items()):
        key_prefix = prefixes.get(label, "eval/")
        for j, key in enumerate(SUCCESS_KEYS):
            values = [
                r.summary[key_prefix + key] for r in members if _finite(r.summary.get(key_prefix + key))
            ]
            if not values:
                continue
            x = j + (i - (len(rows) - 1) / 2) * width
            err = [[mean(values) - min(values)], [max(values) - mean(values)]]
            ax.bar(
                x, mean(values), width, yerr=err, capsize=3, color=f"C{i}", label=label if j == 0 else None
            )
    ax.set_xticks(range(len(SUCCESS_KEYS)), SUCCESS_KEYS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out success")
    ax.legend(fontsize="small")
    ax.set_title("after training (bars: mean over seeds, whiskers: min-max)")
    fig.tight_layout()
    return fig


RESOURCE_KEYS = {
    "wall_time_s": "wall time (s)",
    "peak_rss_mb": "peak RSS (MB)",
    "peak_gpu_mb": "peak GPU memory (MB)",
    "params/trainable": "trainable params",
}


def plot_resources(runs: list[Run]) -> Any:
    """Wall time, peak memory and trainable parameters per group (mean over seeds, min-max whiskers)."""
    plt = _pyplot()
    groups = by_group(runs)
    keys = [k for k in RESOURCE_KEYS if any(_finite(r.summary.get(k)) for r in runs)]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4 * max(len(keys), 1), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, members in enumerate(groups.values()):
            values = [r.summary[key] for r in members if _finite(r.summary.get(key))]
            if values:
                err = [[mean(values) - min(values)], [max(values) - mean(values)]]
                ax.bar(i, mean(values), yerr=err, capsize=3, color=f"C{i}")
        ax.set_xticks(range(len(groups)), list(groups), rotation=30)
        ax.set_title(RESOURCE_KEYS[key])
        if key == "params/trainable":
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def plot_task_curves(runs: list[Run]) -> Any:
    """Training success per task against step, a panel per task, a line per run (a step's rate covers the
    groups of that task it drew, so a task is absent from steps that drew none of it)."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(t for run in runs for t in run.tasks))
    cols = min(len(tasks), 4)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    groups = by_group(runs)
    colors = {label: f"C{i}" for i, label in enumerate(groups)}  # a colour per group, a style per seed in it
    styles = {
        run.name: STYLES[i % len(STYLES)] for members in groups.values() for i, run in enumerate(members)
    }
    last = max((max(run.series("success_rate")[0], default=1) for run in runs), default=1)
    for ax, task in zip(axes.flat, tasks):
        for run in runs:
            steps, values = run.series(f"{task}/success_rate")
            if steps:
                style, marker = styles[run.name]
                ax.plot(steps, values, ls=style, marker=marker, ms=3, color=colors[run.group], label=run.name)
        ax.set_title(task, fontsize="medium")
        ax.set_xlim(0.5, last + 0.5)  # every panel on the run's steps, so a task's gaps show as gaps
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize="x-small")
    fig.suptitle("training success per task (sampled episodes of each step)")
    fig.tight_layout()
    return fig


def task_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Held-out success per run and task, before and after training, sampled and greedy."""
    rows = []
    for run in runs:
        for task in run.tasks:
            get = run.summary.get
            rows.append(
                {
                    "run": run.name,
                    "task": task,
                    "before": get(f"{run.start}/{task}/success_rate"),
                    "after": get(f"eval/{task}/success_rate"),
                    "before, greedy": get(f"{run.start}/greedy_{task}/success_rate"),
                    "after, greedy": get(f"eval/greedy_{task}/success_rate"),
                }
            )
    return rows


def training_task_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """Where each run's GRPO steps went, per task: the steps that trained on it and its success in the groups
    they kept (`TASK/success_rate` counts the trained episodes: groups that dynamic sampling dropped are not
    in it), and its mean sampling weight over all steps (`sampling/TASK/weight`, from the task sampler)."""
    rows = []
    for run in runs:
        steps = [r for r in run.history if "reward" in r]
        for task in run.tasks:
            success = [v for r in steps if _finite(v := r.get(f"{task}/success_rate"))]
            weights = [v for r in steps if _finite(v := r.get(f"sampling/{task}/weight"))]
            rows.append(
                {
                    "run": run.name,
                    "task": task,
                    "steps trained on it": f"{len(success)} of {len(steps)}",
                    "training success, kept groups": mean(success) if success else None,
                    "mean sampling weight": mean(weights) if weights else None,
                }
            )
    return rows


def plot_task_success(runs: list[Run]) -> Any:
    """Held-out success per task before and after training, sampled and greedy (mean over the runs)."""
    plt = _pyplot()
    rows = task_rows(runs)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    columns = ("before", "after", "before, greedy", "after, greedy")
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(tasks) + 2), 3.6))
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        values = []
        for task in tasks:
            found = [r[column] for r in rows if r["task"] == task and _finite(r[column])]
            values.append(mean(found) if found else 0.0)
        xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, values, width, label=column, color=("C7", "C0", "C8", "C1")[i])
    ax.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out success")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


#: Bars of the suite plot, in order; the baselines without a decoding are drawn as ticks.
SUITE_BARS = ("base greedy", "base sampled", "trained greedy", "trained sampled", "oracle scripted")
SUITE_TICKS = {"constant scripted": ("k", "_"), "random scripted": ("0.5", "x")}


def plot_suite(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Per-task held-out success (browserrl.evaluate.evaluate_suite's rows): a bar per model and decoding
    and for the oracle, a tick for the constant and the random baselines."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    value = {(r["task"], f"{r['policy']} {r['decoding']}"): r["success@max"] for r in rows}
    bars = [b for b in SUITE_BARS if any(key[1] == b for key in value)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) + 2), 3.8))
    width = 0.8 / max(len(bars), 1)
    for i, bar in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(tasks))]
        heights = [value.get((task, bar)) or 0.0 for task in tasks]
        ax.bar(xs, heights, width, label=bar.removesuffix(" scripted"), color=f"C{i}")
    for tick, (color, marker) in SUITE_TICKS.items():
        points = [(j, value[(task, tick)]) for j, task in enumerate(tasks) if (task, tick) in value]
        if points:
            ax.scatter(*zip(*points), color=color, marker=marker, s=120, zorder=3, label=tick.split()[0])
    ax.set_xticks(range(len(tasks)), tasks, rotation=35, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out success")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(runs: list[Run], out_dir: str | Path) -> dict[str, Path]:
    """All PNGs and the markdown summary table of a sweep, written into `out_dir` (the sweep folder)."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    figures = {
        "curves": plot_curves(runs),
        "final_success": plot_final_success(runs),
        "resources": plot_resources(runs),
    }
    if any(band([r], "eval/success_rate") for r in runs):  # periodic held-out eval during training
        figures["eval_curves"] = plot_curves(runs, ("success_rate", *SUCCESS_KEYS), prefix="eval/")
    if any(len(r.tasks) > 1 for r in runs):  # suites: each task's training curve and held-out success
        figures["task_curves"] = plot_task_curves(runs)
        figures["task_success"] = plot_task_success(runs)
    written = {}
    for name, fig in figures.items():
        written[name] = out_dir / f"{name}.png"
        fig.savefig(written[name], dpi=110)
        plt.close(fig)
    written["table"] = out_dir / "summary.md"
    suites = figures.keys() >= {"task_success"}
    per_task = markdown_table(task_rows(runs)) if suites else ""
    training = markdown_table(training_task_rows(runs)) if suites else ""
    written["table"].write_text(
        f"# Sweep summary ({len(runs)} runs)\n\nsuccess@N: held-out, after training. "
        f"steps to {TARGET_SUCCESS}: first step whose training success rate reached it.\n\n"
        + markdown_table(summary_rows(runs))
        + (f"\nHeld-out success per task (sampled; greedy):\n\n{per_task}" if per_task else "")
        + (f"\nGRPO's steps per task (training episodes):\n\n{training}" if training else "")
    )
    return written
