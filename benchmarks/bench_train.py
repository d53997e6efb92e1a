"""GRPO step time and its split (generate / env / train), and SFT tokens/s, across precision and generation
settings, in one run on this machine: the numbers of docs/benchmarks.md's CPU speed table.

    python benchmarks/bench_train.py                    # click-button, 5 GRPO steps per setting, 4 settings
    python benchmarks/bench_train.py --steps 3 --settings fp32,bf16+kv --sft-episodes 16 task=click-test

Each setting is a real `train.py` run (browserrl.train.run: local env server, the packaged SmolLM2, LoRA,
the default CPU batch) with held-out evaluation off, so a step is what training pays for. Settings:
`fp32` (no autocast, every turn re-encodes the episode: the generator before the prefix cache),
`fp32+kv`, `bf16` (autocast, re-encoding), `bf16+kv` (the CPU default where bf16 is native). The first
step of each run warms up and is left out of the medians. SFT: the oracle's demonstrations of the run's
tasks (the task, or the suite's), fp32 vs bf16, and micro-batch sizes at the same episodes per optimizer
step, tokens per second of SFTTrainer's training loop. Extra arguments are train.py overrides.

    python benchmarks/bench_train.py --settings= --sft-episodes 6 --sft-precisions bf16 \
        --sft-micro-batches 1,2 +experiment=cpu_suite   # SFT only: padding cost of micro-batches of 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from browserrl.build import env_pool
from browserrl.compose import compose
from browserrl.config import preflight, validate
from browserrl.sft import warm_up
from browserrl.train import run

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "fp32": ["infra.precision=fp32", "infra.reuse_kv_cache=false"],
    "fp32+kv": ["infra.precision=fp32", "infra.reuse_kv_cache=true"],
    "bf16": ["infra.precision=bf16", "infra.reuse_kv_cache=false"],
    "bf16+kv": ["infra.precision=bf16", "infra.reuse_kv_cache=true"],
}
QUIET = ["eval.before=false", "eval.after=false", "logger=none", "trainer.save_strategy=no"]


def grpo(setting: str, steps: int, extra: list[str], out: Path) -> dict[str, Any]:
    """One run of `steps` GRPO steps; medians over the steps after the first."""
    cfg = compose(*SETTINGS[setting], *QUIET, f"trainer.max_steps={steps}", *extra)
    run(cfg, out / setting)
    rows = [json.loads(line) for line in (out / setting / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r][1:]
    keys = {
        "step_s": "step_time",
        "generate_s": "time/generate_s",
        "env_s": "time/env_s",
        "train_s": "time/train_s",
    }
    result = {name: round(statistics.median(r[key] for r in rows), 2) for name, key in keys.items()}
    tokens = [b["num_tokens"] - a["num_tokens"] for a, b in zip(rows, rows[1:])]
    if tokens:  # tokens the forward/backward processed per second of training
        result["train_tokens_per_s"] = round(statistics.median(tokens) / result["train_s"])
    result["generated_tokens_per_s"] = round(
        statistics.median(r["tokens/generated"] / r["time/generate_s"] for r in rows)
    )
    result["success_rate"] = round(statistics.mean(r["success_rate"] for r in rows), 3)
    return result


def sft(
    precision: str, episodes: int, micro_batch: int | None, extra: list[str], out: Path
) -> dict[str, Any]:
    """The SFT warm-up on `episodes` oracle episodes of each task, one epoch: tokens per second. A
    `micro_batch` keeps the config's episodes per optimizer step (more accumulation, same loss)."""
    cfg = compose(
        f"infra.precision={precision}", "sft=oracle", f"sft.episodes_per_task={episodes}", *QUIET, *extra
    )
    with open_dict(cfg):
        cfg.sft.tasks = list(cfg.suite.tasks)
        cfg.sft.episodes_by_task = {}
        cfg.sft.trainer.num_train_epochs = 1
        if micro_batch:
            trainer = cfg.sft.trainer
            per_step = trainer.per_device_train_batch_size * trainer.gradient_accumulation_steps
            trainer.per_device_train_batch_size = micro_batch
            trainer.gradient_accumulation_steps = per_step // micro_batch
    validate(cfg)
    preflight(cfg)
    with env_pool(cfg) as pool:
        start = time.perf_counter()
        final = warm_up(cfg, pool, out)
        seconds = time.perf_counter() - start
    stats = json.loads((final.parent / "sft_summary.json").read_text())
    return {
        "micro_batch": cfg.sft.trainer.per_device_train_batch_size,
        "tokens": stats["tokens"],
        "train_s": round(stats["train_s"], 1),
        "wall_s": round(seconds, 1),
        "tokens_per_s": round(stats["tokens"] / stats["train_s"]),
        "train_loss": round(stats["train_loss"], 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="GRPO steps per setting (the first is a warm-up)")
    p.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma separated, of {', '.join(SETTINGS)}"
    )
    p.add_argument(
        "--sft-episodes", type=int, default=32, help="oracle episodes for the SFT timing (0: skip)"
    )
    p.add_argument("--sft-precisions", default="fp32,bf16", help="comma separated: fp32, bf16")
    p.add_argument(
        "--sft-micro-batches",
        default="",
        help="SFT micro-batch sizes, comma separated (default: the config's)",
    )
    p.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    p.add_argument("overrides", nargs="*", help="train.py overrides (default: task=click-button)")
    args = p.parse_args()
    extra = args.overrides or ["task=click-button"]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-train-"))
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "overrides": extra,
        "steps": args.steps,
    }
    for setting in filter(None, args.settings.split(",")):  # --settings= : SFT only
        report[setting] = grpo(setting, args.steps, extra, out)
        print(json.dumps({setting: report[setting]}), flush=True)
    micro_batches = [int(m) for m in args.sft_micro_batches.split(",") if m] or [None]
    for precision in args.sft_precisions.split(",") if args.sft_episodes else []:
        for micro_batch in micro_batches:
            key = f"sft-{precision}" + (f"-micro{micro_batch}" if micro_batch else "")
            report[key] = sft(precision, args.sft_episodes, micro_batch, extra, out / key)
            print(json.dumps({key: report[key]}), flush=True)
    print(json.dumps(report, indent=1))
    (out / "bench_train.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
