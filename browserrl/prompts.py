"""Observation -> chat messages: a short system prompt, one worked example, the page as a cleaned AX tree.

The packaged SmolLM2-135M needs both to answer in the action format at all: without the worked example its
first turn on click-test was never a click; with a long system prompt fewer were. Held-out base rates with
this prompt are in docs/benchmarks.md.

Long pages (book-flight) can be rendered compact (`task.prompt.compact`): the same elements in about half
the tokens. The AX-tree line parser here also serves the scripted oracles (browserrl.oracle).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from browserrl.settings import TaskSettings

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

_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""  # a Python repr, as BrowserGym writes names
_AX_LINE = re.compile(
    rf"^(?P<indent>\t*)(?:\[(?P<bid>[^\]]+)\] )?(?P<role>\w+) (?P<name>{_QUOTED})(?P<rest>.*)$"
)
_AX_VALUE = re.compile(rf"value=(?P<value>{_QUOTED})")


@dataclass
class AXNode:
    """One line of BrowserGym's flattened AX tree, e.g. `\t[19] textbox 'From:' value='SHG', focused`."""

    depth: int
    bid: str  # empty for lines the policy cannot act on (StaticText, ListMarker, ...)
    role: str
    name: str
    value: str | None
    rest: str  # the attributes after the name


def parse_line(line: str) -> AXNode | None:
    """The node of one AX-tree line, or None for a line in another shape."""
    m = _AX_LINE.match(line)
    if m is None:
        return None
    value = _AX_VALUE.search(m["rest"])
    return AXNode(
        depth=len(m["indent"]),
        bid=m["bid"] or "",
        role=m["role"],
        name=ast.literal_eval(m["name"]),
        value=ast.literal_eval(value["value"]) if value else None,
        rest=m["rest"],
    )


def parse_axtree(axtree: str) -> list[AXNode]:
    return [node for line in axtree.splitlines() if (node := parse_line(line)) is not None]


#: Roles that only lay a page out: without a name of their own, their children say everything.
_LAYOUT_ROLES = frozenset({"table", "rowgroup", "row", "list", "LabelText", "status", "generic", "group"})
_LIVE_REGION = re.compile(r", live='[^']*'|, atomic|, relevant='[^']*'")


def compact_axtree(axtree: str) -> str:
    """The same actionable content in fewer tokens, for long pages (book-flight's date picker and flights).

    Drops nameless lines without a bid, nameless layout lines, table cells (a calendar day's link inside
    says the same), text that repeats its parent's name or value, and live-region attributes; joins runs of
    text lines into one, at the shallower depth (a flight card's text becomes one line).
    """
    kept: list[str] = []
    text: tuple[int, str] | None = None  # the text run not yet written: (depth, joined text)
    above: list[tuple[int, set[str | None]]] = []  # (depth, {name, value}) of the enclosing lines
    for line in axtree.splitlines():
        node = parse_line(line)
        if node is None:
            kept.append(line)
            text = None
            continue
        while above and above[-1][0] >= node.depth:
            above.pop()
        repeats = node.role == "StaticText" and bool(above) and node.name in above[-1][1]
        above.append((node.depth, {node.name, node.value}))
        nameless = not node.name and node.value is None
        if repeats or node.role == "cell" or (nameless and (not node.bid or node.role in _LAYOUT_ROLES)):
            continue
        if node.role == "StaticText" and not node.bid:
            if text is not None:
                kept.pop()
                node.depth, node.name = min(node.depth, text[0]), f"{text[1]} {node.name}"
            text = (node.depth, node.name)
            kept.append("\t" * node.depth + f"StaticText {node.name!r}")
            continue
        text = None
        kept.append(_LIVE_REGION.sub("", line))
    return "\n".join(kept)


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


def bid_after_name(axtree: str) -> str:
    """`[22] button 'previous', focused` -> `button 'previous' [22], focused`: the element's id right after
    its name, so that a model which has found the name copies the id that follows it (what small models
    do well), instead of the id written before it."""
    lines = []
    for line in axtree.splitlines():
        node = parse_line(line)
        if node is None or not node.bid:
            lines.append(line)
        else:
            lines.append("\t" * node.depth + f"{node.role} {node.name!r} [{node.bid}]{node.rest}")
    return "\n".join(lines)


def render_page(axtree: str, task: TaskSettings) -> str:
    """The page as the prompt shows it: cleaned, compacted for long pages, ids after names if asked."""
    page = clean_axtree(axtree)
    if task.prompt.compact:
        page = compact_axtree(page)
    if task.prompt.bid_after_name:
        page = bid_after_name(page)
    return truncate_axtree(page, task.prompt.max_axtree_chars)


def target_turn(action: str, axtree: str, task: TaskSettings) -> str:
    """The assistant turn as the prompt teaches it: with `prompt.name_target`, the element the action acts
    on (its line, as `bid_after_name` shows it) before the action: `button 'previous' [22] -> click('22')`.
    The env reads the action (the first call in the turn); the model gets to find the element first."""
    if not task.prompt.name_target:
        return action
    bid = re.match(r"\w+\(\s*['\"]([^'\"]+)['\"]", action)
    node = next((n for n in parse_axtree(axtree) if bid and n.bid == bid[1]), None)
    return f"{node.role} {node.name!r} [{node.bid}] -> {action}" if node else action


def observation_text(obs: Any, task: TaskSettings) -> str:
    """One user turn: the goal, the page, and the previous action's error if there was one."""
    parts = [f"Goal: {obs.goal}", "Page:\n" + render_page(obs.axtree_txt or "", task)]
    if obs.last_action_error and obs.error:
        parts.append(f"Your last action failed: {obs.error[: task.prompt.max_error_chars]}")
    return "\n\n".join(parts)


def initial_messages(obs: Any, task: TaskSettings) -> list[dict[str, str]]:
    """System prompt, worked example (if enabled), first observation."""
    messages = [{"role": "system", "content": task.prompt.system or DEFAULT_SYSTEM_PROMPT}]
    if task.prompt.worked_example:
        page = bid_after_name(EXAMPLE_PAGE) if task.prompt.bid_after_name else EXAMPLE_PAGE
        messages += [
            {"role": "user", "content": f"Goal: {EXAMPLE_GOAL}\n\nPage:\n{page}"},
            {"role": "assistant", "content": target_turn(EXAMPLE_ACTION, EXAMPLE_PAGE, task)},
        ]
    messages.append({"role": "user", "content": observation_text(obs, task)})
    return messages
