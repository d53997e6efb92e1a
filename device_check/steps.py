"""GRPO steps and generation on the device, timed."""

from __future__ import annotations

import contextlib
import gc
import itertools
import statistics
import time
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from datasets import Dataset
from omegaconf import OmegaConf
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig

from browserrl.grpo import GRPOTrainer
from browserrl.memory import peak_memory_mb, reset_peak_memory
from browserrl.modeling import count_parameters, lora_config
from device_check.episodes import RecordedRollouts, by_task, first_turns, seeded_reward, turn_contexts
from device_check.models import build_model, hf_generator, watched_weights, weight_update
from device_check.plan import Context, GRPORun, grpo_args


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
            model = build_model(cfg.model, ctx.tokenizer, ctx.device, trains_weights=run.tuning == "full")
            args = grpo_args(cfg, ctx.scratch / "grpo", warmup + steps)
            trainer = make_trainer(ctx, model, args, rollout, lora_config(cfg))
            trainer.add_callback(timer)
            trainer.remove_callback(PrinterCallback)  # the timer keeps the logs; the table shows them
            row |= count_parameters(trainer.model)
            watched = watched_weights(trainer.model)
            before = {name: p.detach().float().cpu().clone() for name, p in watched}
            trainer.train()
            row |= weight_update(watched, before)
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
