"""Generation time of a LoRA policy in GRPO's rollout: through PEFT's adapted layers, or through a merged copy
(browserrl.generation.HFGenerator's `merge_lora`, the default).

    python benchmarks/bench_generate.py --checkpoint RUN/final +experiment=cpu_suite
    python benchmarks/bench_generate.py --groups 2 --repeats 1 +experiment=cpu_suite   # a fresh adapter

Both ways play the same groups as a GRPO step draws them (`--groups` (task, seed) instances of the run's
tasks, `trainer.num_generations` episodes each, sampled) on the real env server, and then the same instances
greedily, as a held-out evaluation does, with the same sampling seed, alternating which goes first. Reports
seconds spent generating (env time apart), model tokens generated, and their rate. A fresh adapter (no
`--checkpoint`) costs the same to run as a trained one, but its episodes differ (B is zero: the base model
plays). Extra arguments are train.py overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model

from browserrl import build
from browserrl.compose import compose
from browserrl.config import bf16_autocast, preflight, validate
from browserrl.modeling import load_checkpoint, load_policy, lora_config
from browserrl.rollout import ChatFormat, RolloutBatch, model_policy

WAYS = ("adapted", "merged")


def instances(cfg: Any, groups: int) -> list[tuple[str, int]]:
    """`groups` (task, training seed) instances over the run's tasks, each `num_generations` times."""
    tasks = list(cfg.suite.tasks)
    drawn = [(tasks[i % len(tasks)], 1000 + i) for i in range(groups)]
    return [i for i in drawn for _ in range(cfg.trainer.num_generations)]


def measure(batch: RolloutBatch) -> dict[str, float]:
    tokens = sum(sum(e.env_mask) for e in batch.episodes)
    return {
        "generate_s": batch.generate_s,
        "env_s": batch.env_s,
        "model_tokens": tokens,
        "tokens_per_s": tokens / batch.generate_s,
        "success_rate": sum(e.success for e in batch.episodes) / len(batch.episodes),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a LoRA run's final/ or checkpoint folder")
    p.add_argument("--groups", type=int, default=4, help="groups per play (a GRPO step's, by default)")
    p.add_argument("--repeats", type=int, default=2, help="plays of each way, alternating")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_generate.json"), help="the report")
    p.add_argument("overrides", nargs="*", help="train.py overrides (+experiment=cpu_suite)")
    args = p.parse_args()
    cfg = compose(*args.overrides)
    validate(cfg)
    preflight(cfg)
    if args.checkpoint:
        policy, tokenizer, _ = load_checkpoint(args.checkpoint)
    else:
        model, tokenizer = load_policy(cfg.model)
        policy = get_peft_model(model, lora_config(cfg))
    chat = ChatFormat(tokenizer, cfg.model.eot_token)
    played = instances(cfg, args.groups)
    results: dict[str, dict[str, list[dict[str, float]]]] = {w: {"sampled": [], "greedy": []} for w in WAYS}
    with build.env_pool(cfg) as pool:
        for repeat in range(args.repeats):
            for way in WAYS if repeat % 2 == 0 else WAYS[::-1]:
                generator = build.hf_generator(policy, chat, cfg)
                generator.merge_lora = way == "merged"
                engine = build.rollout_engine(model_policy(generator), pool, chat, cfg)
                for decoding in ("sampled", "greedy"):
                    torch.manual_seed(repeat)
                    row = measure(engine.play(played, greedy=decoding == "greedy"))
                    results[way][decoding].append(row)
                    print(json.dumps({"repeat": repeat, "way": way, "decoding": decoding, **row}), flush=True)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, bf16={bf16_autocast(cfg)}",
        "checkpoint": str(args.checkpoint) if args.checkpoint else "a fresh adapter",
        "overrides": args.overrides,
        "episodes_per_play": len(played),
    }
    for way, by_decoding in results.items():
        for decoding, rows in by_decoding.items():
            report[f"{way}/{decoding}"] = {
                k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]
            }
    for decoding in ("sampled", "greedy"):
        adapted, merged = (report[f"{w}/{decoding}"]["generate_s"] for w in WAYS)
        report[f"merged/adapted generate_s, {decoding}"] = round(merged / adapted, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
