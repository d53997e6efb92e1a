"""What the end-to-end tests share: train.py run as a user runs it, on a tiny random model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# conf/debug/tiny.yaml: a random 4-layer LFM2 on 2-step episodes, one GRPO step in seconds.
TINY = ["+debug=tiny"]


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
