"""scripts/evaluate.py on real tiny checkpoints: success@N table, traces, screenshots, a GIF per episode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY, run_train
from PIL import Image

from browserrl.modeling import load_checkpoint

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUNS = ("0-click-test-full-s0", "1-click-test-lora-r8-s0")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GRPO step each, full and LoRA, saved (final/ and checkpoints/checkpoint-1); no eval in training."""
    sweep = tmp_path_factory.mktemp("ckpt")
    done = run_train(
        "-m",
        *TINY,
        "env.sessions=2",
        "trainer.per_device_train_batch_size=2",
        "trainer.max_steps=1",
        "trainer.save_steps=1",
        "eval.before=false",
        "eval.after=false",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        "tuning=full,lora-r8",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/final")) == list(RUNS)
    return sweep


@pytest.mark.parametrize("run", RUNS)
def test_load_checkpoint_gives_the_saved_weights(runs, run):
    """final/ and the trainer's checkpoint-1 (config from the run dir) load to the same trained weights."""
    final, _, cfg = load_checkpoint(runs / run / "final")
    step1, tokenizer, _ = load_checkpoint(runs / run / "checkpoints" / "checkpoint-1")
    assert cfg.tuning.name == ("full" if "full" in run else "lora") and tokenizer.pad_token is not None
    trained = {k: v for k, v in final.state_dict().items() if "lora_" in k or cfg.tuning.name == "full"}
    assert trained and all(torch.equal(v, step1.state_dict()[k]) for k, v in trained.items())
    if cfg.tuning.name == "lora":
        assert type(final).__name__ == "PeftModelForCausalLM" and final.peft_config["default"].r == 8


def test_suite_evaluation_has_every_baseline_and_flags_click_test(runs, tmp_path):
    """scripts/evaluate.py on a two-task suite: base and trained rows, the oracle, random and constant
    baselines per task, click-test marked as not reading the page (one bid solves it), traces with a
    screenshot per step and a GIF per episode."""
    out = tmp_path / "eval"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/evaluate.py",
            str(runs / RUNS[1] / "final"),
            "--suite",
            "smoke",
            "eval.num_seeds=6",  # on 2, click-button's best constant click solves one: 0.5
            "env.sessions=2",
            "--samples",
            "2",
            "--gif",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "success_table.md").read_text()
    assert table in done.stdout and (out / "suite_success.png").stat().st_size > 0
    rows = json.loads((out / "results.json").read_text())
    by = {(r["policy"], r["decoding"], r["task"]): r for r in rows}
    for task in ("click-test", "click-button"):
        for policy, decoding, episodes in [
            ("base", "greedy", 6),
            ("base", "sampled", 12),
            ("trained", "greedy", 6),
            ("trained", "sampled", 12),
            ("oracle", "scripted", 6),
            ("random", "scripted", 6),
            ("constant", "scripted", 6),
        ]:
            row = by[(policy, decoding, task)]
            assert row["episodes"] == episodes
            assert row["success@1"] <= row["success@max"]
        assert by[("oracle", "scripted", task)]["success@max"] == 1.0
    assert (
        by[("constant", "scripted", "click-test")] | {"success@max": 1.0}
        == by[("constant", "scripted", "click-test")]
    )
    summary = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| click")}
    assert summary["click-test"].rstrip(" |").endswith("no")  # one constant bid solves it
    assert summary["click-button"].rstrip(" |").endswith("yes")
    assert "suite mean (1 page-reading tasks)" in table
    for name in ("base-greedy", "trained-sampled", "oracle-scripted", "random-scripted"):
        traces = json.loads((out / "traces" / f"{name}.json").read_text())
        assert {t["task"] for t in traces} == {"click-test", "click-button"}
        for trace in traces:
            assert trace["goal"] and trace["steps"] == len(trace["trace"]) >= 1
            assert all({"action", "reward", "error"} <= set(step) for step in trace["trace"])
            shots = [out / p for p in trace["screenshots"]]
            assert len(shots) == trace["steps"] + 1  # the page after reset, then after each action
            with Image.open(shots[0]) as first:
                assert first.width > 50 and first.height > 50
            with Image.open(shots[0].parent / "episode.gif") as gif:
                assert gif.n_frames == len(shots)
        if name.startswith(("base", "trained")):
            assert all("reply" in step for trace in traces for step in trace["trace"])


def test_base_and_baselines_are_cached(tmp_path):
    """Without a checkpoint and screenshots, a second evaluation reads every row from the cache."""
    command = [sys.executable, "scripts/evaluate.py", "--suite", "smoke", "+debug=tiny", "eval.num_seeds=2"]
    results = []
    for i in range(2):
        done = subprocess.run(
            [*command, "env.sessions=2", "--out", str(tmp_path / str(i))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads((tmp_path / str(i) / "results.json").read_text()))
    assert results[0] == results[1]
    assert done.stderr.count("read from the cache") >= 5  # base greedy and sampled, oracle, random, constants
