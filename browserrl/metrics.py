"""Episode statistics (success@N, steps, invalid actions) and the run's local record (metrics.jsonl).

success@N: the share of episodes solved within N env steps; success@max is the share solved at all.
The same function scores training rollouts, held-out evaluation and scripts/evaluate.py, so numbers compare.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from browserrl.rollout import Episode, RolloutBatch

SUCCESS_AT = (1, 2, 4)


def episode_metrics(episodes: list[Episode]) -> dict[str, float]:
    n = len(episodes)
    solved = [e for e in episodes if e.success]
    actions = sum(e.steps for e in episodes)
    return {
        "success_rate": len(solved) / n,
        **{f"success@{k}": sum(e.steps <= k for e in solved) / n for k in SUCCESS_AT},
        "success@max": len(solved) / n,
        "steps_to_success": mean(e.steps for e in solved) if solved else math.nan,
        "invalid_action_rate": sum(e.invalid_actions for e in episodes) / actions if actions else 0.0,
        "truncated_rate": sum(e.truncated for e in episodes) / n,
        "env_errors": float(sum(e.env_error is not None for e in episodes)),
        "episodes": float(n),
    }


def batch_metrics(batch: RolloutBatch) -> dict[str, float]:
    return {**episode_metrics(batch.episodes), "time/generate_s": batch.generate_s, "time/env_s": batch.env_s}


def episode_record(e: Episode) -> dict[str, Any]:
    """A JSON trace of one episode: what the policy did and what the page answered."""
    return {
        "task": e.task,
        "seed": e.seed,
        "goal": e.goal,
        "success": e.success,
        "steps": e.steps,
        "raw_reward": e.raw_reward,
        "truncated": e.truncated,
        "env_error": e.env_error,
        "trace": e.trace,
    }


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf (e.g. steps_to_success with no success) become null: strict JSON readers reject NaN."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


class JsonlLogger(TrainerCallback):
    """Appends every trainer log (TRL's rewards + our episode metrics) to `metrics.jsonl` in the run dir."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - HF callback signature
        if logs:
            row = {"step": state.global_step, "time": time.time(), **jsonable(logs)}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


class StepTimer(TrainerCallback):
    """Wall time per optimizer step; `time/train_s` is what remains after generation and env steps."""

    def __init__(self, metrics: dict[str, dict[str, list[float]]]):
        self.metrics, self.start = metrics, 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        train = self.metrics["train"]
        step_s = time.perf_counter() - self.start
        rollout_s = (train["time/generate_s"][-1] if train["time/generate_s"] else 0.0) + (
            train["time/env_s"][-1] if train["time/env_s"] else 0.0
        )
        train["time/step_s"].append(step_s)
        train["time/train_s"].append(max(step_s - rollout_s, 0.0))


class ProgressBar(TrainerCallback):
    """One tqdm bar: step, reward and success rate as training goes (replaces the trainer's own bar)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.bar = tqdm(total=state.max_steps, desc="GRPO", unit="step", dynamic_ncols=True)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if self.bar is None or not logs or "reward" not in logs:
            return
        self.bar.n = state.global_step
        self.bar.set_postfix(
            reward=f"{logs['reward']:.3f}", success=f"{logs.get('success_rate', math.nan):.2f}"
        )

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.n = state.global_step
            self.bar.close()
