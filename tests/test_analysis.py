"""A real two-run sweep (tiny LFM2, real env server); plot_runs.py and the notebook draw it from records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from helpers import ROOT, TINY, run_train
from nbclient import NotebookClient
from PIL import Image

from browserrl import analysis

NOTEBOOK = ROOT / "notebooks" / "full_vs_lora"
SMALL = [*TINY, "env.sessions=2", "trainer.per_device_train_batch_size=4", "eval.greedy=false", "logger=none"]
FIGURES = ("curves", "final_success", "resources", "eval_curves")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real full_vs_lora experiment cut to 2 runs x 2 steps, evaluating (held-out) after every step."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    done = run_train(
        "-m",
        "+experiment=full_vs_lora",
        *SMALL,
        "trainer.max_steps=2",
        "eval.num_seeds=2",
        "eval.every_steps=1",
        "tuning=full,lora-r8",
        "seed=0",
        f"hydra.sweep.dir={sweep_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


@pytest.mark.browser
@pytest.mark.slow
def test_sweep_records_load_with_periodic_eval_and_peak_memory(sweep):
    runs = analysis.load_runs(sweep)
    assert [r.group for r in runs] == ["full", "lora r=8"]
    for run in runs:
        assert run.series("reward")[0] == [1, 2]
        assert run.series("eval/success_rate")[0] == [1, 2]  # PeriodicEval: held-out eval at each step
        assert run.summary["peak_rss_mb"] > 0 and "eval/success@max" in run.summary
    full, lora = runs
    assert full.summary["params/trainable"] == full.summary["params/total"]
    assert lora.summary["params/trainable"] < full.summary["params/trainable"]


@pytest.mark.browser
@pytest.mark.slow
def test_plot_runs_writes_pngs_and_table_from_the_records(sweep):
    done = subprocess.run(
        [sys.executable, "scripts/plot_runs.py", str(sweep)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in FIGURES:
        with Image.open(sweep / f"{name}.png") as image:
            assert image.width > 300 and image.height > 200
    table = (sweep / "summary.md").read_text()
    assert table in done.stdout
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for summary_file, line in zip(sorted(sweep.glob("*/summary.json")), lines[1:], strict=True):
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        summary = json.loads(summary_file.read_text())
        assert cells["run"] == summary_file.parent.name
        assert cells["success@max"] == f"{summary['eval/success@max']:.3f}"
        assert cells["trainable params"].replace(",", "") == str(summary["params/trainable"])


@pytest.mark.browser
@pytest.mark.slow
def test_notebook_runs_on_the_sweep(sweep, monkeypatch):
    paired = jupytext.read(NOTEBOOK.with_suffix(".py"))
    notebook = nbformat.read(NOTEBOOK.with_suffix(".ipynb"), as_version=4)
    assert [c.source for c in notebook.cells] == [c.source for c in paired.cells], "run `jupytext --sync`"

    out = sweep / "from_notebook"
    out.mkdir()
    for run_dir in sweep.iterdir():  # a copy of the runs only, so the notebook's files are its own
        if (run_dir / "metrics.jsonl").exists():
            (out / run_dir.name).symlink_to(run_dir)
    monkeypatch.setenv("BROWSERRL_SWEEP", str(out))
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()

    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4  # curves, eval curves, final, cost
    tables = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(tables) == 1 and all(
        name in tables[0] for name in ("0-click-test-full-s0", "1-click-test-lora-r8-s0")
    )
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 0
    assert (
        analysis.markdown_table(analysis.summary_rows(analysis.load_runs(out)))
        in (out / "summary.md").read_text()
    )


def test_band_is_mean_and_min_max_over_seeds_at_shared_steps():
    """Aggregation on hand-written rows: steps only one seed logged are left out, never filled in."""
    config = {"tuning": {"name": "lora"}, "lora": {"r": 8}, "seed": 0}
    a = analysis.Run(
        "a", config, [{"step": 1, "reward": 0.0}, {"step": 2, "reward": 0.5}, {"step": 3, "reward": 1}]
    )
    b = analysis.Run(
        "b", config, [{"step": 1, "reward": 0.5}, {"step": 2, "reward": None}, {"step": 3, "reward": 0.5}]
    )
    agg = analysis.band([a, b], "reward")
    assert (agg.steps, agg.mean, agg.low, agg.high, agg.seeds) == (
        [1, 3],
        [0.25, 0.75],
        [0.0, 0.5],
        [0.5, 1],
        2,
    )
    assert a.steps_to(0.9, "reward") == 3 and b.steps_to(0.9, "reward") is None
    assert analysis.band([a], "success_rate") is None


def test_task_curves_tell_seeds_apart_on_the_runs_steps():
    """Two seeds of one group: one colour, two line styles; each panel spans the run's steps."""
    config = {"tuning": {"name": "lora"}, "lora": {"r": 16}, "suite": {"tasks": ["a", "b"]}}
    rows = [
        {"step": 1, "success_rate": 0.5, "a/success_rate": 0.5},
        {"step": 4, "success_rate": 1, "b/success_rate": 1},
    ]
    runs = [analysis.Run(f"s{seed}", {**config, "seed": seed}, rows) for seed in (0, 1)]
    fig = analysis.plot_task_curves(runs)
    panel_a = fig.axes[0]
    assert [line.get_color() for line in panel_a.lines] == ["C0", "C0"]
    assert len({line.get_linestyle() for line in panel_a.lines}) == 2
    assert panel_a.get_xlim() == (0.5, 4.5)


def test_per_task_tables_read_the_start_policy_and_where_grpo_s_steps_went():
    """A run after an SFT warm-up: 'before' is the SFT policy's held-out success; each task's training row
    counts the steps that trained on it and averages the sampler's weight over every step."""
    config = {"tuning": {"name": "lora"}, "seed": 0, "sft": {"enabled": True}, "suite": {"tasks": ["a", "b"]}}
    rows = [
        {"step": 1, "reward": 0.5, "a/success_rate": 0.5, "sampling/a/weight": 0.9, "sampling/b/weight": 0.1},
        {"step": 2, "reward": 1.0, "a/success_rate": 1.0, "sampling/a/weight": 0.5, "sampling/b/weight": 0.5},
    ]
    summary = {"sft/a/success_rate": 0.25, "eval/a/success_rate": 0.75, "base/a/success_rate": 0.0}
    run = analysis.Run("s0", config, rows, summary)
    assert run.start == "sft"
    row = analysis.task_rows([run])[0]
    assert (row["task"], row["before"], row["after"]) == ("a", 0.25, 0.75)
    a, b = analysis.training_task_rows([run])
    assert list(a.values())[2:] == ["2 of 2", 0.75, 0.7]  # steps trained on it, success, mean weight
    assert list(b.values())[2:] == ["0 of 2", None, 0.3]
