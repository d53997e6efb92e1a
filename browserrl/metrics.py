"""Episode statistics (success@N, steps, invalid actions) and the run's local record (metrics.jsonl).

success@N: the share of episodes solved within N env steps; success@max is the share solved at all.
The same function scores training rollouts, held-out evaluation and scripts/evaluate.py, so numbers compare.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean
from types import SimpleNamespace
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from browserrl.rollout import Episode

SUCCESS_AT = (1, 2, 4)


def metric_samples(episodes: Sequence[Any]) -> dict[str, list[float]]:
    """The values each metric is the mean of: one per episode (success rates, truncations, env errors), one
    per solved episode (steps to success), one per action (invalid actions), and per task under `TASK/`.

    Episodes are anything with the `Episode` fields task, success, steps, invalid_actions, truncated and
    env_error, so the rollout's episodes and the per-episode fields TRL hands the reward functions both work.
    """
    samples: dict[str, list[float]] = defaultdict(list)
    for e in episodes:
        solved = float(e.success)
        samples["success_rate"].append(solved)
        samples[f"{e.task}/success_rate"].append(solved)
        for k in SUCCESS_AT:
            samples[f"success@{k}"].append(float(e.success and e.steps <= k))
        samples["success@max"].append(solved)
        if e.success:
            samples["steps_to_success"].append(float(e.steps))
        samples["invalid_action_rate"] += [1.0] * e.invalid_actions + [0.0] * (e.steps - e.invalid_actions)
        samples["truncated_rate"].append(float(e.truncated))
        samples["env_error_rate"].append(float(bool(e.env_error)))
    return samples


def episode_metrics(episodes: Sequence[Any]) -> dict[str, float]:
    """Means of `metric_samples` (NaN for steps to success with none solved), the episode count and the
    env errors as a count."""
    means = {key: mean(values) for key, values in metric_samples(episodes).items()}
    means.setdefault("steps_to_success", math.nan)
    return {**means, "env_errors": sum(bool(e.env_error) for e in episodes), "episodes": len(episodes)}


def log_episodes(
    prompts: list[Any],
    completions: list[Any],
    log_metric: Callable[[str, float], None],
    generate_s: list[float],
    env_s: list[float],
    generated_tokens: list[int],
    rewards: list[float | None] | None = None,
    step_metrics: list[dict[str, float]] | None = None,
    **fields: list[Any],
) -> list[None]:
    """A reward function that scores nothing and logs the batch's episode metrics (and, given each
    episode's total reward, the mean reward per task: `TASK/reward`), then the step's own numbers
    (`step_metrics`: groups drawn and kept, expert episodes; browserrl.groups).

    The metrics are the policy's on whole pages: an expert's episode in a group (`expert`) and an episode
    started from the oracle's state part-way (`guided`) are left out of them. It returns
    None for every episode, which TRL leaves out of the reward. Each sample goes to TRL's `log_metric`, which
    averages everything logged under a name over all processes at the next log line, so the rates stay
    exact means over episodes under multi-process training (infra=gpu-vllm-server).
    """
    keys = ("task", "success", "steps", "invalid_actions", "truncated", "env_error")
    experts = fields.get("expert") or [False] * len(prompts)
    left_out = [x or g for x, g in zip(experts, fields.get("guided") or [False] * len(prompts))]
    rows = [row for row, out in zip(zip(*(fields[k] for k in keys)), left_out) if not out]
    for key, values in metric_samples([SimpleNamespace(**dict(zip(keys, row))) for row in rows]).items():
        for value in values:
            log_metric(key, value)
    for task, reward, out in zip(fields["task"], rewards or [], left_out):
        if reward is not None and not out:
            log_metric(f"{task}/reward", reward)
    log_metric("time/generate_s", generate_s[0])  # the rollout's totals, the same on every row
    log_metric("time/env_s", env_s[0])
    log_metric("tokens/generated", generated_tokens[0])
    for key, value in (step_metrics or [{}])[0].items():
        log_metric(key, value)
    return [None] * len(prompts)


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
        if not logs:
            return
        row = {"step": state.global_step, "time": time.time(), **jsonable(logs)}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


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

        def shown(key: str, digits: int) -> str:  # None: every episode of the step was an env error
            value = logs.get(key)
            return f"{math.nan if value is None else value:.{digits}f}"

        self.bar.set_postfix(reward=shown("reward", 3), success=shown("success_rate", 2))

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.n = state.global_step
            self.bar.close()
