"""Generation time of a LoRA policy in GRPO's rollout, by way of generating: transformers through PEFT's
adapted layers (`adapted`), transformers through a merged copy (`merged`, HFGenerator's default), or vLLM's
engine on the merged weights (`vllm`: the venv `make test-vllm` builds, with `infra=cpu-vllm`).

    python benchmarks/bench_generate.py --checkpoint RUN/final +experiment=cpu_suite
    python benchmarks/bench_generate.py --groups 2 --repeats 1 +experiment=cpu_suite   # a fresh adapter
    .venv-vllm/bin/python benchmarks/bench_generate.py --ways merged,vllm +experiment=cpu_suite infra=cpu-vllm

Every way plays the same groups as a GRPO step draws them (`--groups` (task, seed) instances of the run's
tasks, `trainer.num_generations` episodes each, sampled) on the real env server, and then the same instances
greedily, as a held-out evaluation does, with the same sampling seed, taking turns at going first. Reports
seconds spent generating (env time apart), the tokens the model generated and their rate, and the context
tokens it read (the first prompt and the observations between turns: each is encoded once with key/value
reuse). A trained policy's turns are short after a long page (prefill-heavy); a fresh adapter (no
`--checkpoint`: B is zero, the base model plays) writes to the action cap (decode-heavy). Extra arguments
are train.py overrides.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model

from browserrl import build
from browserrl.compose import compose
from browserrl.config import bf16_autocast, preflight, validate
from browserrl.generation import Generator, VLLMGenerator
from browserrl.modeling import load_checkpoint, load_policy, lora_config
from browserrl.rollout import ChatFormat, RolloutBatch, model_policy

WAYS = ("adapted", "merged", "vllm")


def instances(cfg: Any, groups: int) -> list[tuple[str, int]]:
    """`groups` (task, training seed) instances over the run's tasks, each `num_generations` times."""
    tasks = list(cfg.suite.tasks)
    drawn = [(tasks[i % len(tasks)], 1000 + i) for i in range(groups)]
    return [i for i in drawn for _ in range(cfg.trainer.num_generations)]


def measure(batch: RolloutBatch) -> dict[str, float]:
    tokens = sum(sum(e.env_mask) for e in batch.episodes)
    context = sum(len(e.prompt_ids) + len(e.env_mask) - sum(e.env_mask) for e in batch.episodes)
    return {
        "generate_s": batch.generate_s,
        "env_s": batch.env_s,
        "model_tokens": tokens,
        "tokens_per_s": tokens / batch.generate_s,
        "context_tokens": context,
        "success_rate": sum(e.success for e in batch.episodes) / len(batch.episodes),
    }


def vllm_engine(policy: Any, tokenizer: Any, cfg: Any, overrides: list[str], folder: Path) -> Any:
    """A `vllm.LLM` on the policy's merged weights, in this process, as TRL builds its colocated engine
    (browserrl.build.grpo_trainer): the scoring dtype, processed logprobs, `infra.vllm_engine`'s options,
    the infra's environment (`hydra.job.env_set`, which train.py gets from Hydra)."""
    import vllm

    copy.deepcopy(policy).merge_and_unload().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    launcher = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env_set = compose(*overrides, return_hydra_config=True).hydra.job.env_set
    for key, value in {**launcher, "MASTER_PORT": "29518", **env_set}.items():
        os.environ.setdefault(key, str(value))
    return vllm.LLM(
        model=str(folder),
        dtype="bfloat16" if bf16_autocast(cfg) else str(policy.dtype).removeprefix("torch."),
        distributed_executor_backend="external_launcher",
        logprobs_mode="processed_logprobs",
        seed=0,
        **cfg.infra.get("vllm_engine", {}),
    )


def generators(
    ways: list[str], policy: Any, chat: ChatFormat, cfg: Any, overrides: list[str], folder: Path
) -> dict[str, Callable[[], Generator]]:
    """A maker of each way's generator: a fresh one per play, so no way reuses another's key/value cache."""
    engine = vllm_engine(policy, chat.tokenizer, cfg, overrides, folder) if "vllm" in ways else None

    def hf(merge: bool) -> Callable[[], Generator]:
        def make() -> Generator:
            generator = build.hf_generator(policy, chat, cfg)
            generator.merge_lora = merge
            return generator

        return make

    def vllm() -> Generator:
        engine.reset_prefix_cache()  # vLLM's own key/value reuse starts each play empty, as HFGenerator's
        return VLLMGenerator(engine, chat.eot_id, build.sampling(cfg))

    makers = {"adapted": hf(False), "merged": hf(True), "vllm": vllm}
    return {way: makers[way] for way in ways}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a LoRA run's final/ or checkpoint folder")
    p.add_argument("--groups", type=int, default=4, help="groups per play (a GRPO step's, by default)")
    p.add_argument("--repeats", type=int, default=2, help="plays of each way, taking turns at going first")
    p.add_argument("--ways", default="adapted,merged", help=f"comma-separated, of {', '.join(WAYS)}")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_generate.json"), help="the report")
    p.add_argument("overrides", nargs="*", help="train.py overrides (+experiment=cpu_suite)")
    args = p.parse_args()
    ways = args.ways.split(",")
    if len(ways) < 2 or not set(ways) <= set(WAYS):
        p.error(f"--ways: two or more of {', '.join(WAYS)}, comma-separated; got {args.ways!r}")
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
    results: dict[str, dict[str, list[dict[str, float]]]] = {w: {"sampled": [], "greedy": []} for w in ways}
    with build.env_pool(cfg) as pool, tempfile.TemporaryDirectory() as folder:
        makers = generators(ways, policy, chat, cfg, args.overrides, Path(folder))
        for repeat in range(args.repeats):
            for way in ways[repeat % len(ways) :] + ways[: repeat % len(ways)]:
                engine = build.rollout_engine(model_policy(makers[way]()), pool, chat, cfg)
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
    for way in ways[1:]:
        for decoding in ("sampled", "greedy"):
            ratio = report[f"{way}/{decoding}"]["generate_s"] / report[f"{ways[0]}/{decoding}"]["generate_s"]
            report[f"{way}/{ways[0]} generate_s, {decoding}"] = round(ratio, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
