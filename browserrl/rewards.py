"""Reward functions, GRPOTrainer-style: `f(prompts, completions, **episode_fields) -> list[float | None]`.

The rollout forwards per-episode fields (success, steps, max_steps, valid_action_rate, env_error, ...); the
functions only read them, so each reward is logged on its own by TRL (`rewards/<name>/mean`) and weighted by
`cfg.rewards`. An episode an env error cut short scores None: the page failed, not the policy, and TRL
leaves such an episode out of its group's baseline with an advantage of 0. `select` adds
`browserrl.metrics.log_episodes` at weight 0: it scores nothing and logs the episode metrics (success rates,
per task too) through TRL's `log_metric`. `scorer` totals the same functions for the rollout, which needs a
group's rewards before the trainer sees them (browserrl.groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from browserrl import metrics
from browserrl.rollout import Episode, RolloutBatch, trainer_output

RewardFunc = Callable[..., list[float | None]]


def _scored(values: list[float], env_error: list[bool] | None) -> list[float | None]:
    return [None if error else v for v, error in zip(values, env_error or [False] * len(values))]


def success(
    prompts: list[Any],
    completions: list[Any],
    success: list[bool],
    env_error: list[bool] | None = None,
    **_: Any,
) -> list[float | None]:
    """1 when the MiniWoB task was solved, else 0: the sparse reward the study is about."""
    return _scored([float(s) for s in success], env_error)


def action_format(
    prompts: list[Any],
    completions: list[Any],
    valid_action_rate: list[float],
    env_error: list[bool] | None = None,
    **_: Any,
) -> list[float | None]:
    """Fraction of the episode's turns that were one well-formed, allowed action."""
    return _scored([float(v) for v in valid_action_rate], env_error)


def efficiency(
    prompts: list[Any],
    completions: list[Any],
    success: list[bool],
    steps: list[int],
    max_steps: list[int],
    env_error: list[bool] | None = None,
    **_: Any,
) -> list[float | None]:
    """Success discounted linearly by steps used: 1 when solved in one step, 1/max_steps at the cap."""
    values = [float(s) * (m - n + 1) / m if s else 0.0 for s, n, m in zip(success, steps, max_steps)]
    return _scored(values, env_error)


REWARDS: dict[str, RewardFunc] = {"success": success, "format": action_format, "efficiency": efficiency}


def _chosen(weights: dict[str, float]) -> list[tuple[RewardFunc, float]]:
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"rewards: unknown {sorted(unknown)}; known: {sorted(REWARDS)}")
    chosen = [(REWARDS[name], float(w)) for name, w in weights.items() if w]
    if not chosen:
        raise ValueError("rewards: every weight is 0; give at least one reward a weight")
    return chosen


def _totals(
    chosen: list[tuple[RewardFunc, float]], prompts: list[Any], completions: list[Any], fields: dict[str, Any]
) -> list[float | None]:
    """Each episode's weighted sum of the chosen rewards (None where they are None: an env error)."""
    scores = [func(prompts, completions, **fields) for func, _ in chosen]
    return [
        None if any(s[i] is None for s in scores) else sum(w * s[i] for (_, w), s in zip(chosen, scores))
        for i in range(len(prompts))
    ]


def select(weights: dict[str, float]) -> tuple[list[RewardFunc], list[float]]:
    """Reward functions and weights for the names with a non-zero weight in `cfg.rewards`, then the metric
    logger at weight 0 (it also logs each task's mean total reward, from the same functions and weights)."""
    chosen = _chosen(weights)

    def log_episodes(prompts: list[Any], completions: list[Any], **fields: Any) -> list[None]:
        totals = _totals(chosen, prompts, completions, fields)
        return metrics.log_episodes(prompts, completions, rewards=totals, **fields)

    funcs, ws = zip(*chosen, (log_episodes, 0.0))
    return list(funcs), list(ws)


def scorer(weights: dict[str, float]) -> Callable[[Sequence[Episode]], list[float | None]]:
    """Episodes -> each one's total reward, as GRPOTrainer will weigh the same functions."""
    chosen = _chosen(weights)

    def score(episodes: Sequence[Episode]) -> list[float | None]:
        fields = trainer_output(RolloutBatch(list(episodes)))
        blank = [None] * len(episodes)
        return _totals(chosen, blank, blank, fields)

    return score
