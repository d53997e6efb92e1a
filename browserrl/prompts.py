"""Observation -> chat messages: a short system prompt, one worked example, the page as a cleaned AX tree.

The packaged SmolLM2-135M needs both to answer in the action format at all: without the worked example its
first turn on click-test was never a click; with a long system prompt fewer were. Held-out base rates with
this prompt are in docs/benchmarks.md.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig

DEFAULT_SYSTEM_PROMPT = "Answer with one browser action, like click('12')."

EXAMPLE_GOAL = "Click the button labelled Submit."
EXAMPLE_PAGE = (
    "RootWebArea 'Example Task', focused\n\t[3] link 'Home'\n\t[4] button 'Submit'\n\t[5] button 'Cancel'"
)

_URL_ATTR = re.compile(r", url='[^']*'")


def clean_axtree(axtree: str) -> str:
    """Drop what costs tokens and gives the model nothing to act on: InlineTextBox lines, the file URL."""
    lines = (line for line in axtree.splitlines() if not line.lstrip().startswith("InlineTextBox"))
    return _URL_ATTR.sub("", "\n".join(lines))


EXAMPLE_ACTION = "click('4')"


def truncate_axtree(axtree: str, max_chars: int) -> str:
    """Keep whole lines from the top until `max_chars`; MiniWoB pages put the task's elements first."""
    if len(axtree) <= max_chars:
        return axtree
    kept, size = [], 0
    for line in axtree.splitlines():
        if size + len(line) + 1 > max_chars:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept) + "\n[... page truncated]"


def observation_text(obs: Any, task: DictConfig) -> str:
    """One user turn: the goal, the page, and the previous action's error if there was one."""
    parts = [
        f"Goal: {obs.goal}",
        "Page:\n" + truncate_axtree(clean_axtree(obs.axtree_txt or ""), task.prompt.max_axtree_chars),
    ]
    if obs.last_action_error and obs.error:
        parts.append(f"Your last action failed: {obs.error[: task.prompt.max_error_chars]}")
    return "\n\n".join(parts)


def example_user_text() -> str:
    return f"Goal: {EXAMPLE_GOAL}\n\nPage:\n{EXAMPLE_PAGE}"


def initial_messages(obs: Any, task: DictConfig) -> list[dict[str, str]]:
    """System prompt, worked example (if enabled), first observation."""
    messages = [{"role": "system", "content": task.prompt.system or DEFAULT_SYSTEM_PROMPT}]
    if task.prompt.worked_example:
        messages += [
            {"role": "user", "content": example_user_text()},
            {"role": "assistant", "content": EXAMPLE_ACTION},
        ]
    messages.append({"role": "user", "content": observation_text(obs, task)})
    return messages
