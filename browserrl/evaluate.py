"""Held-out evaluation: the same episodes and metrics as training, on seeds training never sees."""

from __future__ import annotations

from omegaconf import DictConfig

from browserrl.metrics import episode_metrics
from browserrl.rollout import Episode, RolloutEngine


def heldout_seeds(cfg: DictConfig) -> list[int]:
    return list(range(cfg.eval.first_seed, cfg.eval.first_seed + cfg.eval.num_seeds))


def evaluate(
    engine: RolloutEngine, task: str, seeds: list[int], greedy: bool
) -> tuple[dict[str, float], list[Episode]]:
    batch = engine.play([(task, s) for s in seeds], greedy=greedy)
    return episode_metrics(batch.episodes), batch.episodes


def heldout_report(engine: RolloutEngine, cfg: DictConfig, prefix: str) -> dict[str, float]:
    """`{prefix}/success_rate`, ... sampled at the training temperature; `{prefix}/greedy_*` if enabled."""
    seeds = heldout_seeds(cfg)
    sampled, _ = evaluate(engine, cfg.task.name, seeds, greedy=False)
    report = {f"{prefix}/{k}": v for k, v in sampled.items()}
    if cfg.eval.greedy:
        greedy, _ = evaluate(engine, cfg.task.name, seeds, greedy=True)
        report |= {f"{prefix}/greedy_{k}": v for k, v in greedy.items()}
    return report
