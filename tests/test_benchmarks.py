"""Each benchmark script runs as documented, on the tiny model and the shared env server, in seconds: a
benchmark nobody runs rots (device_check/record_vllm_fixture.py once did)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.browser


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(monkeypatch: pytest.MonkeyPatch, name: str, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    script(name).main()


def test_bench_generate(monkeypatch, tmp_path, env_url):
    out = tmp_path / "report.json"
    run(
        monkeypatch,
        "bench_generate",
        "--groups",
        "1",
        "--repeats",
        "1",
        "--out",
        str(out),
        "+debug=tiny",
        "env=remote",
        f"env.url={env_url}",
    )
    report = json.loads(out.read_text())
    assert report["episodes_per_play"] == 2
    for way in ("adapted", "merged"):
        for decoding in ("sampled", "greedy"):
            assert report[f"{way}/{decoding}"]["model_tokens"] > 0


def test_bench_eval(monkeypatch, tmp_path, env_url):
    out = tmp_path / "report.json"
    run(
        monkeypatch,
        "bench_eval",
        "--sessions",
        "2",
        "--out",
        str(out),
        "+debug=tiny",
        "env=remote",
        f"env.url={env_url}",
        "eval.num_seeds=2",
    )
    report = json.loads(out.read_text())
    assert report["episodes"] == 4 and report["sessions=2"]["wall_s"] > 0


def test_bench_env(monkeypatch, tmp_path, env_url):
    out = tmp_path / "lines.jsonl"
    run(monkeypatch, "bench_env", "single", "--url", env_url, "--episodes", "2", "--out", str(out))
    assert json.loads(out.read_text())["bench"] == "single"


def test_bench_idle_sessions(monkeypatch, env_url, capsys):
    run(
        monkeypatch,
        "bench_idle_sessions",
        "--rounds",
        "1",
        "--steps",
        "1",
        "--tokens",
        "16",
        "--settle",
        "0",
        "+debug=tiny",
        "env=remote",
        f"env.url={env_url}",
        "env.sessions=2",
    )
    assert '"slowdown_open"' in capsys.readouterr().out


def test_bench_grpo_trainer(monkeypatch, env_url, capsys):
    run(
        monkeypatch,
        "bench_grpo_trainer",
        "--steps",
        "1",
        "--trainers",
        "trl,completion-head,browserrl",
        "+debug=tiny",
        "env=remote",
        f"env.url={env_url}",
    )
    assert '"speedup_over_trl"' in capsys.readouterr().out


def test_bench_train(monkeypatch, tmp_path, env_url):
    run(
        monkeypatch,
        "bench_train",
        "--steps",
        "2",
        "--settings",
        "fp32",
        "--sft-episodes",
        "1",
        "--sft-precisions",
        "fp32",
        "--out",
        str(tmp_path),
        "+debug=tiny",
        "env=remote",
        f"env.url={env_url}",
    )
    report = json.loads((tmp_path / "bench_train.json").read_text())
    assert {"step_s", "generate_s", "env_s", "train_s"} <= set(report["fp32"])  # a tiny step may round to 0
    assert report["sft-fp32"]["tokens"] > 0


def test_bench_book_flight(tmp_path, env_url):
    """A Hydra script: run as a user runs it."""
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_book_flight.py"),
            "task=book-flight",
            "model=tiny-lfm2",
            "eval.num_seeds=1",
            "env=remote",
            f"env.url={env_url}",
            f"hydra.run.dir={tmp_path}",
            "hydra.output_subdir=null",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["episodes"] == 1
