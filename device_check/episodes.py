"""The recorded episodes: their turn structure, a rollout_func that replays them, and their model turns
sampled anew."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any


def by_task(fixture: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return [e for e in fixture["episodes"] if e["task"] == task]


def segments(env_mask: list[int]) -> list[tuple[int, int, int]]:
    """(from_model, start, end) runs of an episode's env_mask: model turns and env observations."""
    runs, start = [], 0
    for from_model, group in itertools.groupby(env_mask):
        n = len(list(group))
        runs.append((from_model, start, start + n))
        start += n
    return runs


def first_turns(episode: dict[str, Any], turns: int | None) -> dict[str, Any]:
    """The episode up to the end of its `turns`-th model turn (None: whole), as a token budget cuts one."""
    model_runs = [run for run in segments(episode["env_mask"]) if run[0]]
    if turns is None or turns >= len(model_runs):
        return episode
    end = model_runs[turns - 1][2]
    return episode | {
        "completion_ids": episode["completion_ids"][:end],
        "env_mask": episode["env_mask"][:end],
    }


def turn_contexts(episode: dict[str, Any]) -> list[list[int]]:
    """The token sequence the sampler continued at each model turn of a recorded episode."""
    ids = episode["prompt_ids"] + episode["completion_ids"]
    base = len(episode["prompt_ids"])
    return [ids[: base + start] for from_model, start, _ in segments(episode["env_mask"]) if from_model]


class RecordedRollouts:
    """A rollout_func that replays recorded episodes instead of playing a live env: the same return value as
    browserrl.rollout.trainer_output (one sequence per prompt received, env_mask, logprobs, extra fields
    that TRL forwards to the reward functions), cycling through the episodes.

    It also records what TRL passed: how many prompts per call and whether each prompt's num_generations
    repeats came consecutively (DESIGN.md: what browserrl.train.make_rollout_func relies on)."""

    def __init__(self, episodes: list[dict[str, Any]], num_generations: int):
        self.episodes, self.num_generations = episodes, num_generations
        self.next = 0
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        picked = [self.episodes[(self.next + i) % len(self.episodes)] for i in range(len(prompts))]
        self.next += len(prompts)
        groups = [prompts[i : i + self.num_generations] for i in range(0, len(prompts), self.num_generations)]
        self.calls.append(
            {
                "prompts": len(prompts),
                "repeats_consecutive": all(len(set(g)) == 1 for g in groups),
                "tokens": sum(len(e["prompt_ids"]) + len(e["completion_ids"]) for e in picked),
                "model_tokens": sum(sum(e["env_mask"]) for e in picked),
                # TRL pads the whole generation batch: prompts left to the longest, completions right
                "padded_tokens": len(picked)
                * (max(len(e["prompt_ids"]) for e in picked) + max(len(e["completion_ids"]) for e in picked)),
            }
        )
        fields = ("prompt_ids", "completion_ids", "env_mask", "task", "success", "steps")
        return {key: [e[key] for e in picked] for key in fields} | {
            "logprobs": [[0.0] * len(e["completion_ids"]) for e in picked],  # the oracle's: no sampler
        }


def seeded_reward(seed: int = 0) -> Callable[..., list[float]]:
    """Every recorded episode is a success (the oracle's), so a success reward would give every group zero
    advantage and a zero gradient; a seeded random reward keeps the step's update real (grad_norm > 0)."""
    rng = random.Random(seed)

    def recorded_random(completions: list[Any], success: list[bool], **_: Any) -> list[float]:
        assert len(success) == len(completions)  # the rollout_func's extra fields reach the rewards
        return [rng.random() for _ in completions]

    return recorded_random


def sampled_episodes(
    generator: Any, episodes: list[dict[str, Any]], eot_id: int, max_turns: int | None, max_new: int | None
) -> list[dict[str, Any]]:
    """The recorded episodes (up to their `max_turns`-th model turn) with every model turn sampled anew and
    the env tokens from the recording, built as RolloutEngine builds one: turns batched across episodes, a
    turn cut at its token limit closed with a masked end-of-turn, the sampler's logprobs on model tokens and
    0 on env tokens."""
    episodes = [first_turns(e, max_turns) for e in episodes]
    todo = [segments(e["env_mask"]) for e in episodes]
    outs = [
        {
            "prompt_ids": e["prompt_ids"],
            "completion_ids": [],
            "logprobs": [],
            "env_mask": [],
            "turns": 0,
            "cut_turns": 0,
        }
        for e in episodes
    ]

    def extend(out: dict[str, Any], ids: list[int], logprobs: list[float] | None, from_model: bool) -> None:
        out["completion_ids"] += ids
        out["logprobs"] += logprobs if logprobs is not None else [0.0] * len(ids)
        out["env_mask"] += [int(from_model)] * len(ids)

    while True:
        by_limit = defaultdict(list)  # (recording, sample) of the episodes that take a turn now
        for e, out, runs in zip(episodes, outs, todo):
            while runs and not runs[0][0]:  # the recording's observation tokens, up to the next model turn
                _, start, end = runs.pop(0)
                extend(out, e["completion_ids"][start:end], None, from_model=False)
            if runs:
                runs.pop(0)
                by_limit[min(e["max_action_tokens"], max_new or e["max_action_tokens"])].append((e, out))
        if not by_limit:
            return outs
        for limit, group in by_limit.items():
            turns = generator([e["prompt_ids"] + out["completion_ids"] for e, out in group], False, limit)
            for (_, out), turn in zip(group, turns):
                extend(out, turn.ids, turn.logprobs, from_model=True)
                out["turns"] += 1
                if not turn.finished:
                    extend(out, [eot_id], None, from_model=False)
                    out["cut_turns"] += 1
