"""What the end-to-end tests share: train.py run as a user runs it, on a tiny random model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A random 4-layer LFM2 on 2-step episodes: one GRPO step takes seconds. It never solves anything.
TINY = [
    "model=tiny-lfm2",
    "task.max_steps=2",
    "task.max_action_tokens=6",
    "trainer.num_generations=2",
    "trainer.gradient_accumulation_steps=1",
]


def run_train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from the repo root; W&B without a key (offline), output captured."""
    env = {**os.environ, "WANDB_API_KEY": "", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
