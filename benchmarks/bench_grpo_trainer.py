"""GRPO training on a suite's steps, by TRL's GRPOTrainer and by browserrl's (browserrl/grpo.py).

    python benchmarks/bench_grpo_trainer.py                  # the cpu recipe's steps, 2 of them, 3 trainers
    python benchmarks/bench_grpo_trainer.py --steps 3 --trainers trl,browserrl +experiment=cpu_suite

The scripted oracle plays the steps' (task, seed) groups once, drawn from the run's training instances (the
oracle's episodes are what SFT teaches, so their lengths are the warm-started policy's). Then each trainer
trains the same steps on those episodes, replayed by its rollout_func, so the timed part is the trainer's own
(forward/backward, optimizer) on identical inputs. Trainers: `trl`, TRL's as it is (every micro-batch at the
step's padded width, the LM head over every position on CPU); `own-width`, TRL's with each micro-batch cut
to its own length (browserrl.grpo.trim_padding); `completion-head`, that and the compact LM head
(browserrl.compat.compact_lm_head) over the whole completion, the env's observations included (browserrl's
until 2026-12-07); `browserrl`, the compact head over the model's turns only (compat.loss_tokens_only).
Extra arguments are train.py overrides (default: +experiment=cpu_suite).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import trl
from datasets import Dataset
from omegaconf import DictConfig
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig

from browserrl import build, grpo, rewards
from browserrl.compose import compose
from browserrl.config import preflight, validate
from browserrl.curriculum import TaskSampler
from browserrl.modeling import load_policy, load_tokenizer, lora_config, resolve_model_path
from browserrl.rollout import (
    ChatFormat,
    Episode,
    RolloutBatch,
    instance_prompt,
    parse_instance,
    trainer_output,
)


class OwnWidth(grpo.GRPOTrainer):
    """browserrl's trainer without the compact LM head: micro-batches cut to their own length, TRL's head."""

    def train(self, *args: Any, **kwargs: Any) -> Any:
        return trl.GRPOTrainer.train(self, *args, **kwargs)


class CompletionHead(grpo.GRPOTrainer):
    """browserrl's trainer with the compact LM head over the whole completion, the env's tokens included."""

    def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
        with mock.patch.object(grpo, "loss_tokens_only", lambda model, mask: contextlib.nullcontext()):
            return super().compute_loss(*args, **kwargs)


TRAINERS: dict[str, Callable[..., trl.GRPOTrainer]] = {
    "browserrl": grpo.GRPOTrainer,
    "completion-head": CompletionHead,
    "own-width": OwnWidth,
    "trl": trl.GRPOTrainer,
}


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds.append(time.perf_counter() - self.start)
        print(json.dumps({"step": state.global_step, "seconds": round(self.seconds[-1], 1)}), flush=True)


def record(cfg: DictConfig, prompts: list[str]) -> dict[str, Episode]:
    """The oracle's episode of each distinct instance, by its dataset prompt."""
    chat = ChatFormat(load_tokenizer(resolve_model_path(cfg.model)), cfg.model.eot_token)
    distinct = sorted(set(prompts))
    with build.env_pool(cfg) as pool:
        engine = build.demonstrator(pool, chat, cfg)
        episodes = engine.play([parse_instance(p) for p in distinct], progress="oracle").episodes
    return dict(zip(distinct, episodes))


def train(
    name: str, cfg: DictConfig, args: GRPOConfig, prompts: list[str], episodes: dict[str, Episode]
) -> tuple[list[float], list[dict[str, Any]]]:
    """`name`'s trainer on the replayed episodes: seconds per step, and per step the tokens its episodes
    hold and the tokens TRL's micro-batches compute at the step's padded width."""
    model, tokenizer = load_policy(cfg.model)
    reward_funcs, _ = rewards.select(dict(cfg.rewards))
    tokens: list[dict[str, Any]] = []

    def replay(step: list[str], _: Any) -> dict[str, Any]:
        # Every other episode scored as a failure: each group has a reward spread, so every episode carries
        # an advantage and costs the backward it would in a step of groups that teach (browserrl/grpo.py
        # skips zero-advantage micro-batches, which all-success oracle replays would otherwise be).
        eps = [dataclasses.replace(episodes[p], success=i % 2 == 0) for i, p in enumerate(step)]
        width = max(len(e.prompt_ids) for e in eps) + max(len(e.completion_ids) for e in eps)
        real = sum(len(e.prompt_ids) + len(e.completion_ids) for e in eps)
        groups = [json.loads(p)["task"] for p in dict.fromkeys(step)]
        tokens.append({"groups": groups, "tokens": real, "tokens_at_step_width": width * len(eps)})
        print(json.dumps(tokens[-1]), flush=True)
        return trainer_output(RolloutBatch(eps))

    trainer = TRAINERS[name](
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),  # one group a row (TRL repeats each row)
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        rollout_func=replay,
    )
    trainer.remove_callback(PrinterCallback)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.seconds, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="GRPO steps per trainer")
    p.add_argument(
        "--trainers", default=",".join(TRAINERS), help=f"comma separated, of {', '.join(TRAINERS)}"
    )
    p.add_argument("overrides", nargs="*", help="train.py overrides (default: +experiment=cpu_suite)")
    opts = p.parse_args()
    names = opts.trainers.split(",")
    if unknown := sorted(set(names) - set(TRAINERS)):
        p.error(f"--trainers: {', '.join(unknown)} not among {', '.join(TRAINERS)}")
    overrides = opts.overrides or ["+experiment=cpu_suite"]
    cfg = compose(*overrides, "logger=none", "trainer.save_strategy=no", f"trainer.max_steps={opts.steps}")
    out = tempfile.mkdtemp(prefix="bench-grpo-trainer-")
    validate(cfg)
    preflight(cfg)
    args = build.grpo_config(cfg, out)
    groups = args.per_device_train_batch_size * args.gradient_accumulation_steps // args.num_generations
    drawn = TaskSampler(cfg.suite.tasks, cfg.train_seeds, seed=cfg.seed).draw(groups * opts.steps)
    prompts = [instance_prompt(task, seed) for task, seed in drawn]
    episodes = record(cfg, prompts)

    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, bf16={args.bf16}",
        "overrides": overrides,
    }
    for name in names:  # the same seed: each draws the same groups into the same steps
        seconds, tokens = train(name, cfg, args, prompts, episodes)
        report["tokens"] = tokens
        report[name] = {
            "step_s": [round(s, 1) for s in seconds],
            "median_step_s": round(statistics.median(seconds), 1),
            "tokens_per_s": round(sum(t["tokens"] for t in tokens) / sum(seconds)),
        }
        print(json.dumps({name: report[name], "tokens": tokens}), flush=True)
    shutil.rmtree(out)
    if "trl" in names:
        for name in names:
            report[name]["speedup_over_trl"] = round(
                sum(report["trl"]["step_s"]) / sum(report[name]["step_s"]), 2
            )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
