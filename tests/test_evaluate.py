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


def test_evaluate_script_writes_table_traces_and_gifs(runs, tmp_path):
    out = tmp_path / "eval"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/evaluate.py",
            str(runs / RUNS[1] / "final"),
            "eval.num_seeds=2",
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
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = (out / "success_table.md").read_text()
    assert table in done.stdout
    rows = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["decoding"], r["episodes"]) for r in rows] == [
        ("base", "greedy", 2),
        ("base", "sampled", 4),
        ("checkpoint", "greedy", 2),
        ("checkpoint", "sampled", 4),
    ]
    for row in rows:
        assert f"| {row['model']} | {row['decoding']} | {int(row['episodes'])} |" in table
        assert row["success@1"] <= row["success@2"] <= row["success@4"] <= row["success@max"]
        traces = json.loads((out / "traces" / f"{row['model']}-{row['decoding']}.json").read_text())
        assert len(traces) == row["episodes"]
        assert row["success@max"] == sum(t["success"] for t in traces) / len(traces)
        assert row["mean_steps"] == sum(t["steps"] for t in traces) / len(traces)
        assert {t["seed"] for t in traces} == {1000000, 1000001}
        for trace in traces:
            assert trace["goal"] and trace["steps"] == len(trace["trace"]) >= 1
            assert all({"action", "reward", "error", "reply"} <= set(step) for step in trace["trace"])
            shots = [out / p for p in trace["screenshots"]]
            assert len(shots) == trace["steps"] + 1  # the page after reset, then after each action
            with Image.open(shots[0]) as first:
                assert first.width > 50 and first.height > 50
            with Image.open(shots[0].parent / "episode.gif") as gif:
                assert gif.n_frames == len(shots)
