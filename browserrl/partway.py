"""Held-out success from the oracle's state part-way through a page: which of a page's turns a policy loses.

A page the scripted oracle solves in L turns is played L times by the policy: from the start (k = 0, as the
held-out evaluation plays it) and from the oracle's state after k = 1..L-1 of its turns, the guided starts
GRPO trains on (`grpo.guided`, browserrl.groups). Success from k says whether the policy can finish a page
it was handed with L - k turns left; the policy's first own turn there is sorted against the oracle's turns:
the oracle's own action at that state, a repeat of the turn before it, the oracle's last action too soon
(Submit with boxes left unchecked), or another.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from browserrl.rollout import Episode

#: How a policy's first own turn from the oracle's state relates to the oracle's turns.
KINDS = ("oracle's", "repeat", "ends early", "other")


def first_turn_kind(oracle_actions: Sequence[str], k: int, action: str) -> str:
    """`action`, the policy's turn after the oracle's first `k` actions of a page, against the oracle's."""
    if action == oracle_actions[k]:
        return "oracle's"
    if k > 0 and action == oracle_actions[k - 1]:
        return "repeat"
    if action == oracle_actions[-1]:  # the page's last action (its Submit) while the oracle had more to do
        return "ends early"
    return "other"


def starts(oracle: Sequence[Episode]) -> list[tuple[str, int, int]]:
    """(task, seed, k) for every page the oracle solved and every k in 0..L-1 of its L turns."""
    return [(e.task, e.seed, k) for e in oracle if e.success for k in range(e.steps)]


def partway_rows(oracle: Sequence[Episode], played: Mapping[str, Sequence[Episode]]) -> list[dict[str, Any]]:
    """A row per (task, L, k): pages, then per policy (`played`: its episodes, in `starts(oracle)`'s order)
    the pages solved from there and its first turns by kind (KINDS, as counts: `name: kind`)."""
    actions = {(e.task, e.seed): [t["action"] for t in e.trace] for e in oracle if e.success}
    cells: dict[tuple[str, int, int], dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for task, seed, k in starts(oracle):
        cells[(task, len(actions[(task, seed)]), k)]["pages"] += 1
    for policy, episodes in played.items():
        for (task, seed, k), episode in zip(starts(oracle), episodes, strict=True):
            oracle_actions = actions[(task, seed)]
            cell = cells[(task, len(oracle_actions), k)]
            cell[f"{policy} solved"] += episode.success
            if len(episode.trace) > k and "action" in episode.trace[k]:
                cell[f"{policy}: {first_turn_kind(oracle_actions, k, episode.trace[k]['action'])}"] += 1
    rows = []
    for (task, length, k), cell in sorted(cells.items()):
        row: dict[str, Any] = {
            "task": task,
            "oracle steps": length,
            "oracle played": k,
            "pages": cell["pages"],
        }
        for policy in played:
            row[f"{policy} solved"] = cell[f"{policy} solved"]
            row[f"{policy} first turn"] = ", ".join(
                f"{kind} {cell[f'{policy}: {kind}']}" for kind in KINDS if cell[f"{policy}: {kind}"]
            )
        rows.append(row)
    return rows
