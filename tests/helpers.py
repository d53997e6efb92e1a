"""What tests share: train.py run as a user runs it, on a tiny random model; a GRPOTrainer to score with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from trl import GRPOConfig

from browserrl import rewards
from browserrl.grpo import GRPOTrainer
from browserrl.rollout import instance_prompt

ROOT = Path(__file__).resolve().parents[1]

# conf/debug/tiny.yaml: a random 4-layer LFM2 on 2-step episodes, one GRPO step in seconds.
TINY = ["+debug=tiny"]

#: Token ids of `tiny_llama`'s made-up vocabulary: padding, end of turn, size.
PAD, EOT, VOCAB = 0, 1, 96


def tiny_llama() -> LlamaForCausalLM:
    """A random 2-layer Llama (the architecture of the packaged SmolLM2), the same at every call."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD,
        eos_token_id=EOT,
    )
    return LlamaForCausalLM(config).eval()


def user_env() -> dict[str, str]:
    """The environment a user's run gets in tests: W&B without a key (offline), quiet."""
    return {**os.environ, "WANDB_API_KEY": "", "WANDB_SILENT": "true"}


def run_train(
    *args: str, timeout: int = 600, launcher: list[str] | None = None, script: str = "train.py"
) -> subprocess.CompletedProcess:
    """`python train.py ARGS` (or `LAUNCHER train.py ARGS`, e.g. torchrun; or another of the repo's Hydra
    scripts) from the repo root; W&B without a key (offline), output captured."""
    return subprocess.run(
        [*(launcher or [sys.executable]), script, *args],
        cwd=ROOT,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scoring_trainer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: Path, **grpo_args: Any
) -> GRPOTrainer:
    """The project's GRPOTrainer for tests that call its scoring or its loss directly: a dataset of one
    click-test instance, the success reward, no logging; `grpo_args` are GRPOConfig fields."""
    args = GRPOConfig(
        output_dir=str(output_dir), max_steps=1, use_cpu=True, report_to=[], beta=0.0, **grpo_args
    )
    rows = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return GRPOTrainer(
        model=model,
        reward_funcs=rewards.success,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": [instance_prompt("click-test", 7)] * rows}),
    )
