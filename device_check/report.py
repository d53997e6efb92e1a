"""What the check writes: `pytest -m gpu`'s outcomes, the environment, the markdown tables, the failures."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

from browserrl.analysis import markdown_table
from device_check.plan import ROOT


def gpu_tests(scratch: Path, timeout_s: float) -> dict[str, Any]:
    """`pytest -m gpu` over tests/: each GPU test's outcome, and for test modules that cannot even be
    imported here (no openenv, Chromium, vLLM on the check machine) whether they hold GPU tests, and why
    they cannot run."""
    report = scratch / "pytest-gpu.xml"
    command = [
        sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", f"--junitxml={report}", "tests",
    ]  # fmt: skip
    shown = "python " + " ".join(command[1:])
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"command": shown, "status": f"timed out after {timeout_s:.0f} s", "tests": []}
    cases = ET.parse(report).getroot().iter("testcase") if report.exists() else []
    return {
        "command": shown,
        "exit_code": done.returncode,
        "seconds": time.perf_counter() - started,
        "tests": [junit_case(case) for case in cases],
        "output_tail": done.stdout[-3000:],
    }


def junit_case(case: ET.Element) -> dict[str, Any]:
    """One junit testcase: a test's outcome, or a module's collection error (with its GPU tests, if any)."""
    name = f"{case.get('classname')}::{case.get('name')}" if case.get("classname") else case.get("name", "")
    outcome, reason = "passed", ""
    for tag, outcome_if in (("skipped", "skipped"), ("failure", "failed"), ("error", "error")):
        node = case.find(tag)
        if node is not None:
            errors = [line.lstrip("E ").strip() for line in (node.text or "").splitlines() if "Error" in line]
            outcome, reason = outcome_if, (errors[-1] if errors else node.get("message", ""))[:300]
    if outcome == "error" and not case.get("classname"):  # a module (or a folder's conftest) not collected
        path = ROOT / case.get("name", "").replace(".", "/")
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        holds_gpu = any(f.exists() and "mark.gpu" in f.read_text() for f in files)
        outcome = "not collected (holds gpu tests)" if holds_gpu else "not collected (no gpu tests)"
    return {"test": name, "outcome": outcome, "reason": reason}


def environment(device: torch.device) -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "hydra"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    env = {"device": str(device), "versions": versions, "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


# the columns of the markdown tables (every number is in device_check.json)
GRPO_COLUMNS = (
    "model", "tuning", "workload", "batch", "overrides", "step_s_median", "tokens_per_step",
    "model_tokens_per_step", "padded_tokens_per_step", "tokens_per_s", "peak_gpu_mb", "params/trainable",
    "grad_norm", "weights_dtype", "weights_changed", "status",
)  # fmt: skip
GENERATION_COLUMNS = (
    "model", "workload", "batch", "context_tokens_mean", "new_tokens", "max_new_tokens", "seconds",
    "new_tokens_per_s",
)  # fmt: skip


def table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    if not rows:
        return "none\n"
    return markdown_table([{k: r.get(k) for k in columns or r} for r in rows])


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    took = f"{result['wall_s']:.0f} s " + ("in all" if result["complete"] else "so far: INCOMPLETE")
    grpo = [
        r | {"status": r["status"] + (f": {r['error'][:80]}" if r.get("error") else "")}
        for r in result["grpo"]
    ]
    agreement = [
        {
            "model": r["model"],
            "logits": r["logits"],
            "precision": r["precision"],
            "model tokens": r["model_tokens"],
            "mean abs diff": f"{r['mean_abs_diff']:.2e}",
            "max abs diff": f"{r['max_abs_diff']:.2e}",
            "tolerance (mean, max)": f"{r['tolerance_mean']:.2g}, {r['tolerance_max']:.2g}",
            "ok": "yes" if r["ok"] else "NO",
        }
        for r in result["agreement"]
    ]
    sections = [
        "# Device check\n",
        f"{env.get('gpu', env.get('cpu'))} ({env['device']}); {versions}; mode {result['mode']}; {took}. "
        "Recorded episodes (tests/fixtures/recorded_episodes.json) instead of a live env; random weights; "
        "each configuration composed as `python train.py infra=gpu model=M tuning=T OVERRIDES`.\n",
        "## GRPO steps (GRPOTrainer, this repo's rollout_func contract)\n",
        table(grpo, GRPO_COLUMNS),
        "batch: micro-batch x accumulation. step_s: the whole optimizer step; the recorded rollout costs ~0, "
        "so it is forward, backward and the optimizer. tokens: the step's prompt + completion tokens; model "
        "tokens: those the policy wrote (env_mask 1); padded: what TRL's padding of the generation batch "
        "makes of them.\n",
        "## HFGenerator throughput\n",
        table(result["generation"], GENERATION_COLUMNS),
        "## Sampler vs trainer logprobs\n",
        table(agreement),
    ]
    tests = result.get("gpu_tests")
    if tests:
        shown = [t for t in tests["tests"] if t["outcome"] != "not collected (no gpu tests)"]
        sections += [
            f"## `{tests['command']}`\n",
            table(shown) if shown else tests.get("status", "none") + "\n",
        ]
        if others := [t for t in tests["tests"] if t not in shown]:
            missing = sorted(
                {t["reason"].split("'")[1] for t in others if "No module named '" in t["reason"]}
            )
            sections.append(
                f"{len(others)} other test modules cannot be imported here (missing: {', '.join(missing)}); "
                "none of them holds a gpu test.\n"
            )
    if result["skipped"]:
        sections.append("Skipped (time budget): " + ", ".join(result["skipped"]) + "\n")
    return "\n".join(sections)


def master_weights_ok(row: dict[str, Any]) -> bool:
    """A full fine-tune's optimizer steps fp32 weights, and its steps move most of them (issue: full tuning
    barely trained when the weights were bf16)."""
    return row.get("weights_dtype") == "float32" and row.get("weights_changed", 0.0) > 0.5


def failures(result: dict[str, Any]) -> list[str]:
    """What makes the check fail: a recipe configuration that did not run, a full fine-tune whose weights
    are not fp32 or did not move, a logprob disagreement, a GPU test that failed. A probe that runs out of
    memory is a finding, not a failure."""
    bad = [
        f"grpo {r['model']} {r['tuning']} {r['workload']}: {r['status']}"
        for r in result["grpo"]
        if r["status"] != "ok" and not (r["probe"] and r["status"] == "out of memory")
    ]
    bad += [
        f"grpo {r['model']} full {r['workload']}: {r['weights_dtype']}, {r['weights_changed']:.0%} moved"
        for r in result["grpo"]
        if r["tuning"] == "full" and r["status"] == "ok" and not master_weights_ok(r)
    ]
    bad += [f"agreement {r['model']} ({r['logits']})" for r in result["agreement"] if not r["ok"]]
    tests = result.get("gpu_tests") or {"tests": []}
    bad += [f"{t['test']}: {t['outcome']}" for t in tests["tests"] if t["outcome"] in ("failed", "error")]
    return bad
