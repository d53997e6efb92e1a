"""Reward functions, GRPOTrainer-style: `f(prompts, completions, **episode_fields) -> list[float]`.

The rollout forwards per-episode fields (success, steps, max_steps, valid_action_rate, ...); the functions
only read them, so each reward is logged on its own by TRL (`rewards/<name>/mean`) and weighted by
`cfg.rewards`. `select` adds `browserrl.metrics.log_episodes` at weight 0: it scores nothing and logs the
episode metrics (success rates, per task too) through TRL's `log_metric`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from browserrl import metrics

RewardFunc = Callable[..., list[float]]


def success(prompts: list[Any], completions: list[Any], success: list[bool], **_: Any) -> list[float]:
    """1 when the MiniWoB task was solved, else 0: the sparse reward the study is about."""
    return [float(s) for s in success]


def action_format(
    prompts: list[Any], completions: list[Any], valid_action_rate: list[float], **_: Any
) -> list[float]:
    """Fraction of the episode's turns that were one well-formed, allowed action."""
    return [float(v) for v in valid_action_rate]


def efficiency(
    prompts: list[Any],
    completions: list[Any],
    success: list[bool],
    steps: list[int],
    max_steps: list[int],
    **_: Any,
) -> list[float]:
    """Success discounted linearly by steps used: 1 when solved in one step, 1/max_steps at the cap."""
    return [float(s) * (m - n + 1) / m if s else 0.0 for s, n, m in zip(success, steps, max_steps)]


REWARDS: dict[str, RewardFunc] = {"success": success, "format": action_format, "efficiency": efficiency}


def select(weights: dict[str, float]) -> tuple[list[RewardFunc], list[float]]:
    """Reward functions and weights for the names with a non-zero weight in `cfg.rewards`, then the metric
    logger at weight 0 (it also logs each task's mean total reward, from the same functions and weights)."""
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"rewards: unknown {sorted(unknown)}; known: {sorted(REWARDS)}")
    chosen = [(REWARDS[name], float(w)) for name, w in weights.items() if w]
    if not chosen:
        raise ValueError("rewards: every weight is 0; give at least one reward a weight")

    def log_episodes(prompts: list[Any], completions: list[Any], **fields: Any) -> list[None]:
        scores = [func(prompts, completions, **fields) for func, _ in chosen]
        totals = [sum(w * s[i] for (_, w), s in zip(chosen, scores)) for i in range(len(prompts))]
        return metrics.log_episodes(prompts, completions, rewards=totals, **fields)

    funcs, ws = zip(*chosen, (log_episodes, 0.0))
    return list(funcs), list(ws)
