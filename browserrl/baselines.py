"""Reference policies that expose a shortcut: a random valid action, and one constant action string.

A trained policy reads the page only where it beats both. click-test's button has the same bid on every
seed, so `click('13')` played at every step solves it without reading anything; a task on which one constant
string solves half the held-out seeds does not test page reading, and the suite evaluation leaves it out of
the suite mean (browserrl.evaluate.NOT_READING). Like the oracles they are scripts of the last observation,
played through the rollout engine (browserrl.rollout.scripted_policy).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from browserrl.prompts import parse_axtree

#: Roles that take text: a random action may fill them.
TEXT_ROLES = frozenset({"textbox", "searchbox", "combobox", "spinbutton"})


def random_action(obs: Any) -> str | None:
    """A uniformly random valid action on the page: click any element with a bid, or fill a text box with
    one of the goal's quoted strings (its words when it quotes none). Seeded by (task, seed, step), so an
    episode replays the same actions."""
    nodes = [node for node in parse_axtree(obs.axtree_txt or "") if node.bid]
    if not nodes:
        return None
    meta = obs.metadata or {}
    rng = random.Random(f"{meta.get('task_name')}/{meta.get('seed')}/{meta.get('step')}")
    texts = re.findall(r'"([^"]+)"', obs.goal) or obs.goal.split()
    actions = [f"click({n.bid!r})" for n in nodes]
    actions += [f"fill({n.bid!r}, {t!r})" for n in nodes if n.role in TEXT_ROLES for t in texts]
    return rng.choice(actions)


def constant_action(action: str) -> Callable[[Any], str]:
    """The same action string at every step."""
    return lambda obs: action


def constant_candidates(traces: Sequence[dict[str, Any]], k: int = 3) -> list[str]:
    """The k action strings played most often in these episode traces (the oracle's and the random
    policy's on the held-out seeds): a string that solves many seeds, or an element every page has, is
    among them."""
    counts = Counter(step["action"] for trace in traces for step in trace["trace"] if step["action"])
    return [action for action, _ in counts.most_common(k)]
