"""browserrl.comparison on hand-written run records: each run's policies as points, paired differences with
their bootstrap intervals, the study's plots and table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from browserrl import comparison
from browserrl.analysis import Run, load_local

TASKS = ("t1", "t2")
SEEDS = range(100, 120)


def record(
    tmp_path: Path, name: str, seed: int, summary: dict, outcomes: dict[str, dict] | None = None
) -> Run:
    """A run folder with summary.json and heldout/PREFIX-DECODING.json files; outcomes[prefix] maps a task
    to the held-out seeds it solved."""
    folder = tmp_path / name
    (folder / "heldout").mkdir(parents=True)
    for prefix, solved in (outcomes or {}).items():
        rows = [[t, s, s in solved.get(t, ())] for t in TASKS for s in SEEDS]
        for decoding in ("sampled", "greedy"):
            (folder / "heldout" / f"{prefix.replace('/', '-')}-{decoding}.json").write_text(json.dumps(rows))
    config = {
        "tuning": {"name": "lora"},
        "lora": {"r": 16},
        "seed": seed,
        "grpo": {"expert": "expert" in name},
        "sft": {"trainer": {"num_train_epochs": 2}},
    }
    return Run(name, config, [], summary, folder)


def test_each_run_gives_its_start_and_its_grpo_policy():
    sft = {"demonstrations": 40, "demonstrations/sft": 40, "demonstrations/expert": 0, "time/sft_s": 120,
           "time/grpo_s": 600, "sft/success_rate": 0.5, "eval/success_rate": 0.7,
           "sft/greedy_success_rate": 0.4}  # fmt: skip
    expert = {"demonstrations": 12, "demonstrations/sft": 0, "demonstrations/expert": 12, "time/grpo_s": 300,
              "base/success_rate": 0.02, "eval/success_rate": 0.3}  # fmt: skip
    found = comparison.points([Run("sft", {"seed": 0}, [], sft), Run("grpo-expert", {"seed": 0,
                               "grpo": {"expert": True}}, [], expert)])  # fmt: skip
    rows = [(p.arm, p.demonstrations, p.cpu_minutes, p.success()) for p in found]
    assert rows == [
        ("SFT only", 40, 2.0, 0.5),
        ("SFT+GRPO", 40, 12.0, 0.7),
        ("base", 0, 0.0, 0.02),
        ("GRPO+expert", 12, 5.0, 0.3),  # the expert's episodes are demonstrations too
    ]
    assert found[0].success(greedy=True) == 0.4 and found[1].success(greedy=True) is None


def test_paired_difference_and_its_interval():
    """b solves 5 more of t1's 20 seeds than a, t2 the same: +0.125 over the two tasks; the interval
    holds it and is above zero; identical outcomes give an interval of exactly zero."""
    a = {(t, s): s < 110 for t in TASKS for s in SEEDS}
    b = {(t, s): s < (115 if t == "t1" else 110) for t in TASKS for s in SEEDS}
    diff = comparison.paired_difference([(a, b)])
    assert diff.mean == pytest.approx(0.125) and diff.pairs == 40
    assert 0 < diff.low < diff.mean < diff.high < 0.26
    same = comparison.paired_difference([(a, a)])
    assert (same.mean, same.low, same.high) == (0, 0, 0)


def test_report_draws_the_study_and_pairs_by_seed(tmp_path):
    runs = []
    for seed in (0, 1):
        summary = {"demonstrations/sft": 40, "demonstrations/expert": 0, "demonstrations": 40,
                   "time/sft_s": 100, "time/grpo_s": 900, "sft/success_rate": 0.5, "eval/success_rate": 0.75,
                   "sft/greedy_success_rate": 0.5, "eval/greedy_success_rate": 0.75,
                   "transfer/sft/success_rate": 0.3, "transfer/eval/success_rate": 0.35}  # fmt: skip
        solved = {
            "sft": {t: range(100, 110) for t in TASKS},
            "eval": {t: range(100, 115) for t in TASKS},
            "transfer/sft": {"t1": range(100, 106)},
            "transfer/eval": {"t1": range(100, 107)},
        }
        runs.append(record(tmp_path, f"sft4-s{seed}", seed, summary, solved))
    solved["eval"] = {t: range(100, 120) for t in TASKS}  # the same SFT, GRPO with the expert: 10 of 20 more
    runs.append(record(tmp_path, "sft4-expert-s1", 1, summary, solved))
    solved["eval"] = {t: range(100, 118) for t in TASKS}  # the expert and another task sampling: 8 more
    runs.append(record(tmp_path, "sft4-expert-teaching-s1", 1, summary, solved))
    runs[-1].config["grpo"]["task_sampling"] = "teaching"
    solved["eval"] = {t: range(100, 116) for t in TASKS}  # the expert trained as SFT, weight 1: 6 more
    runs.append(record(tmp_path, "sft4-expert-w1-s1", 1, summary, solved))
    runs[-1].config["grpo"]["expert_sft_weight"] = 1.0
    solved["eval"] = {t: range(100, 114) for t in TASKS}  # 8 SFT epochs, else as sft4-expert-s1: 4 more
    runs.append(record(tmp_path, "sft4e8-expert-s1", 1, summary, solved))
    runs[-1].config["sft"]["trainer"]["num_train_epochs"] = 8
    solved["eval"] = {t: range(100, 113) for t in TASKS}  # the expert and guided starts: 3 more
    runs.append(record(tmp_path, "sft4-expert-guided-s1", 1, summary, solved))
    runs[-1].config["grpo"]["guided"] = True
    written = comparison.write_report(runs, tmp_path)
    assert {"rl_vs_sft", "generalization", "rl_vs_sft_table"} <= set(written)
    table = written["rl_vs_sft_table"].read_text()
    assert "| 40 | 2 | plain | uniform | training suite | sampled | 0,1 | 0.250 |" in table  # 5 of 20 more
    assert "| 40 | 2 | plain | uniform | transfer | greedy | 0,1 | 0.025 |" in table
    assert "| 40 | 2 | with the expert | uniform | training suite | sampled | 1 | 0.500 |" in table  # apart
    assert (
        "| 40 | 2 | with the expert | teaching | training suite | sampled | 1 | 0.400 |" in table
    )  # apart too
    assert "| sft4-expert-s1 | 1 | SFT+GRPO+expert, 2 SFT epochs |" in table  # its point, labelled apart
    assert "| sft4-expert-teaching-s1 | 1 | SFT+GRPO+expert, teaching, 2 SFT epochs |" in table
    assert (
        "| 40 | 2 | with the expert, SFT weight 1 | uniform | training suite | sampled | 1 | 0.300 |" in table
    )
    assert "| sft4-expert-w1-s1 | 1 | SFT+GRPO+expert x1, 2 SFT epochs |" in table
    assert "| 40 | 8 | with the expert | uniform | training suite | sampled | 1 | 0.200 |" in table  # apart
    assert "| sft4e8-expert-s1 | 1 | SFT only, 8 SFT epochs |" in table
    guided = "| 40 | 2 | with the expert, guided starts | uniform | training suite | sampled | 1 | 0.150 |"
    assert guided in table and "| sft4-expert-guided-s1 | 1 | SFT+GRPO+expert+guided, 2 SFT epochs |" in table
    counts = " | ".join(f"10 -> {n}" for n in (15, 15, 20, 18, 16, 14, 13))
    row = f"| training suite | t1 | 20 | {counts} |"
    assert row in table  # a column per run, in the order given
    assert (
        comparison.write_report([Run("plain", {"seed": 0}, [], {"eval/success_rate": 1.0})], tmp_path) == {}
    )


def test_count_rows_split_each_task_by_the_oracle_s_steps(tmp_path):
    """t1's pages need 1 action below seed 110 and 3 from 110: SFT solved 100-109, GRPO 105-114, so the split
    shows GRPO trading short pages for long ones; a page the oracle did not solve (seed 119) is left out."""
    solved = {"sft": {"t1": range(100, 110)}, "eval": {"t1": range(105, 115)}}
    run = record(tmp_path, "sft4-s0", 0, {}, solved)
    traces = [{"task": "t1", "seed": s, "steps": 1 if s < 110 else 3, "success": s != 119} for s in SEEDS]
    path = tmp_path / "oracle-scripted.json"
    path.write_text(json.dumps(traces))
    rows = comparison.count_rows(comparison.run_columns([run]), comparison.oracle_steps(path))
    assert [(r["task"], r["oracle steps"], r["held-out seeds"], r["sft4-s0"]) for r in rows] == [
        ("t1", 1, 10, "10 -> 5"),
        ("t1", 3, 9, "0 -> 5"),
    ]
    evaluation = tmp_path / "eval-sft4" / "traces"  # scripts/evaluate.py's output: base -> trained
    evaluation.mkdir(parents=True)
    for policy, solved_seeds in (("base", range(100, 110)), ("trained", range(105, 115))):
        played = [{"task": "t1", "seed": s, "success": s in solved_seeds} for s in SEEDS]
        (evaluation / f"{policy}-sampled.json").write_text(json.dumps(played))
    script = subprocess.run(
        [sys.executable, "scripts/horizon.py", str(evaluation.parent), "--oracle", str(path)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| training suite | t1 | 3 | 9 | 0 -> 5 |" in script.stdout


@pytest.mark.parametrize(
    ("folder", "grpo", "seeds", "suite_sampled", "transfer_sampled"),
    [
        ("rl_vs_sft-11steps", "with the expert", "0", "+0.138 [+0.062, +0.206]", "+0.039 [-0.023, +0.102]"),
        (
            "rl_vs_sft-16steps",
            "with the expert",
            "0,1,2",
            "+0.154 [+0.117, +0.192]",
            "+0.078 [+0.047, +0.109]",
        ),
        ("teaching-16steps", "with the expert", "0", "+0.181 [+0.106, +0.256]", "+0.023 [-0.047, +0.094]"),
        (
            "expert-sft-weight-16steps",
            "with the expert, SFT weight 1",
            "2",
            "+0.075 [+0.000, +0.150]",
            "+0.117 [+0.070, +0.164]",
        ),
        ("sft8-16steps", "with the expert", "0,1", "+0.144 [+0.103, +0.181]", "+0.059 [+0.023, +0.094]"),
        ("sft8-32steps", "with the expert", "0,2", "+0.125 [+0.084, +0.166]", "+0.027 [-0.004, +0.059]"),
    ],
)
def test_published_records_give_the_differences_the_docs_report(
    folder, grpo, seeds, suite_sampled, transfer_sampled
):
    """docs/runs holds the records benchmarks.md's numbers come from: they load as runs and pair as written
    there (arm sft4-grpo-expert and its variants, SFT+GRPO minus SFT only, sampled)."""
    runs = load_local(Path(__file__).resolve().parents[1] / "docs" / "runs" / folder)
    rows = {(r["suite"], r["decoding"]): r for r in comparison.difference_rows(runs)}
    suite, transfer = rows["training suite", "sampled"], rows["transfer", "sampled"]
    assert (suite["GRPO"], suite["seeds"], suite["paired episodes"]) == (
        grpo,
        seeds,
        160 * len(seeds.split(",")),
    )
    assert f"{suite['SFT+GRPO - SFT']:+.3f} {suite['95% interval']}" == suite_sampled
    assert f"{transfer['SFT+GRPO - SFT']:+.3f} {transfer['95% interval']}" == transfer_sampled
    assert transfer["paired episodes"] == 128 * len(seeds.split(","))


def test_published_records_split_by_the_oracle_s_steps_as_the_docs_report():
    """docs/runs/oracle-cpu-16seeds holds the oracle's episodes on the suite's held-out pages: with it the
    32-step records show click-checkboxes solved where the page names one box (2 actions) and on no page
    that needs 4 or 5 (benchmarks.md, "Where click-checkboxes fails")."""
    runs_dir = Path(__file__).resolve().parents[1] / "docs" / "runs"
    steps = comparison.oracle_steps(runs_dir / "oracle-cpu-16seeds" / "oracle-scripted.json")
    assert len(steps) == 160
    rows = comparison.count_rows(comparison.run_columns(load_local(runs_dir / "sft8-32steps")), steps)
    boxes = [
        (
            r["oracle steps"],
            r["held-out seeds"],
            r["cpu-sft4e8-expert-grpo32-s0"],
            r["cpu-sft4e8-expert-grpo32-s2"],
        )
        for r in rows
        if r["task"] == "click-checkboxes"
    ]
    assert boxes == [(2, 2, "2 -> 2", "2 -> 2"), (3, 4, "0 -> 1", "0 -> 0"), (4, 4, "0 -> 0", "0 -> 0"),
                     (5, 6, "0 -> 0", "0 -> 0")]  # fmt: skip
    script = subprocess.run(
        [sys.executable, "scripts/horizon.py", str(runs_dir / "sft8-32steps"), "--tasks", "click-checkboxes",
         "--oracle", str(runs_dir / "oracle-cpu-16seeds" / "oracle-scripted.json")],
        cwd=runs_dir.parents[1], capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| training suite | click-checkboxes | 5 | 6 | 0 -> 0 | 0 -> 0 |" in script.stdout


def test_published_sft_epochs_record_pairs_with_the_seed_0_run_as_the_docs_report():
    """docs/runs/sft-epochs: the 2-epoch SFT policy is the seed-0 record's start, episode for episode, and
    the 8-epoch SFT-only policy beats that record's GRPO policy on the same pages (benchmarks.md)."""
    runs = Path(__file__).resolve().parents[1] / "docs" / "runs"
    epochs, grpo = runs / "sft-epochs" / "sft4-s0", runs / "rl_vs_sft-16steps" / "cpu-sft4-expert-grpo16-s0"
    for decoding in ("sampled", "greedy"):
        for prefix in ("", "transfer/"):
            start = comparison.outcomes(grpo, f"{prefix}sft", decoding)
            assert comparison.outcomes(epochs, f"{prefix}sft2", decoding) == start
    reported = {"sampled": "+0.113 [+0.062, +0.163]", "greedy": "+0.106 [+0.056, +0.156]"}
    for decoding, text in reported.items():
        d = comparison.paired_difference(
            [(comparison.outcomes(grpo, "eval", decoding), comparison.outcomes(epochs, "sft8", decoding))]
        )
        assert f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" == text


def test_notebook_draws_the_published_study():
    """notebooks/rl_vs_sft runs top to bottom on the published records (no env var): the two plots, the
    three tables, the 2- and 8-epoch arms apart; its .ipynb and .py hold the same cells."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    root = Path(__file__).resolve().parents[1]
    path = root / "notebooks" / "rl_vs_sft"
    notebook = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    paired = jupytext.read(path.with_suffix(".py"))
    assert [c.source for c in notebook.cells] == [c.source for c in paired.cells], "run `jupytext --sync`"
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}
    ).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    points, differences, tasks = (
        o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})
    )
    assert "| cpu-sft4e8-expert-grpo16-s1 | 1 | SFT+GRPO+expert, learning, 8 SFT epochs |" in points
    assert "| 40 | 2 | with the expert | learning | training suite | sampled | 0,1,2 | 0.154 |" in differences
    assert "| cpu-sft4e8-expert-grpo16-s0 | 0 | SFT+GRPO+expert, learning, 8 SFT epochs | 53 |" in points
    assert "| 40 | 8 | with the expert | learning | training suite | sampled | 0,1 | 0.144 |" in differences
    assert "| choose-list | 16 | 2 -> 3 | 3 -> 3 | 3 -> 3 | 5 -> 14 | 3 -> 11 |" in tasks  # 8 epochs: last


def test_published_seed_2_record_pairs_with_seeds_0_and_1_as_the_docs_report():
    """docs/runs/sft8-16steps-s2: the GRPO policy's outcomes come from scripts/evaluate.py on the run's last
    checkpoint (the run did not end); paired with its own SFT start, with seed 1 (as first published), and
    with seeds 0 and 1 (benchmarks.md, results.md)."""
    runs = Path(__file__).resolve().parents[1] / "docs" / "runs"
    seed0 = runs / "sft8-16steps" / "cpu-sft4e8-expert-grpo16-s0"
    seed1 = runs / "sft8-16steps" / "cpu-sft4e8-expert-grpo16-s1"
    seed2 = runs / "sft8-16steps-s2" / "cpu-sft4e8-expert-grpo16-s2"
    reported = {  # (prefix, decoding): (seed 2 alone, seeds 1 and 2, seeds 0, 1 and 2)
        ("", "sampled"): ("+0.031 [-0.031, +0.094]", "+0.097 [+0.056, +0.138]", "+0.106 [+0.071, +0.138]"),
        ("", "greedy"): ("+0.062 [+0.025, +0.100]", "+0.109 [+0.075, +0.144]", "+0.113 [+0.085, +0.140]"),
        ("transfer/", "sampled"): (
            "+0.008 [-0.031, +0.055]",
            "+0.039 [+0.008, +0.070]",
            "+0.042 [+0.016, +0.068]",
        ),
        ("transfer/", "greedy"): (
            "+0.000 [-0.023, +0.023]",
            "+0.020 [+0.000, +0.043]",
            "+0.021 [+0.003, +0.039]",
        ),
    }
    for (prefix, decoding), texts in reported.items():
        pairs = [
            (
                comparison.outcomes(run, f"{prefix}sft", decoding),
                comparison.outcomes(run, f"{prefix}eval", decoding),
            )
            for run in (seed0, seed1, seed2)
        ]
        found = [comparison.paired_difference(p) for p in (pairs[2:], pairs[1:], pairs)]
        assert tuple(f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" for d in found) == texts


@pytest.mark.parametrize(
    ("record", "reported"),
    [
        (  # (prefix, decoding): (minus SFT only, minus the run without guided starts)
            "guided-16steps/cpu-sft4e8-guided-grpo16-s0",
            {
                ("", "sampled"): ("+0.100 [+0.037, +0.163]", "-0.025 [-0.081, +0.031]"),
                ("", "greedy"): ("+0.144 [+0.087, +0.194]", "+0.025 [-0.013, +0.056]"),
                ("transfer/", "sampled"): ("+0.000 [-0.039, +0.031]", "-0.047 [-0.094, +0.000]"),
                ("transfer/", "greedy"): ("+0.016 [-0.016, +0.055]", "-0.008 [-0.031, +0.016]"),
            },
        ),
        (
            "teaching-guided-16steps/cpu-sft4e8-teaching-guided-grpo16-s0",
            {
                ("", "sampled"): ("+0.100 [+0.044, +0.156]", "-0.025 [-0.075, +0.025]"),
                ("", "greedy"): ("+0.119 [+0.069, +0.163]", "+0.000 [-0.031, +0.031]"),
                ("transfer/", "sampled"): ("+0.062 [+0.016, +0.117]", "+0.016 [-0.023, +0.055]"),
                ("transfer/", "greedy"): ("+0.047 [+0.016, +0.086]", "+0.023 [+0.000, +0.047]"),
            },
        ),
    ],
)
def test_published_guided_records_pair_with_the_seed_0_run_they_started_beside(record, reported):
    """docs/runs/guided-16steps (`learning` sampler) and teaching-guided-16steps: GRPO with guided starts
    from the seed-0 run's SFT checkpoint (heldout/sft-* copied from that record). Paired with the SFT-only
    start and with the run without guided starts, as benchmarks.md reports."""
    runs = Path(__file__).resolve().parents[1] / "docs" / "runs"
    guided = runs / record
    plain = runs / "sft8-16steps" / "cpu-sft4e8-expert-grpo16-s0"
    for (prefix, decoding), texts in reported.items():
        after = comparison.outcomes(guided, f"{prefix}eval", decoding)
        sft = comparison.outcomes(guided, f"{prefix}sft", decoding)
        assert sft == comparison.outcomes(plain, f"{prefix}sft", decoding)
        found = [
            comparison.paired_difference([(start, after)])
            for start in (sft, comparison.outcomes(plain, f"{prefix}eval", decoding))
        ]
        assert tuple(f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]" for d in found) == texts
