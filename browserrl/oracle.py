"""Scripted oracles: the next correct action from the goal and the AX tree, nothing else.

They play MiniWoB tasks for the SFT warm-up's demonstrations (browserrl.sft) and show what a solved episode
costs in steps and tokens (scripts/bench_book_flight.py). Stateless on purpose: everything an oracle decides
from is in the observation the policy sees, so a demonstration never relies on hidden information.
"""

from __future__ import annotations

import calendar
import re
from typing import Any

from browserrl.prompts import AXNode, parse_axtree

#: Tasks an oracle solves. click-link is absent: its links are <span>s that the AX tree shows as StaticText
#: without a bid, so no bid action can click them.
ORACLE_TASKS = (
    "click-test",
    "click-test-2",
    "click-button",
    "focus-text",
    "enter-text",
    "enter-password",
    "book-flight",
)


def subtree_text(nodes: list[AXNode], index: int) -> str:
    """The StaticText under nodes[index], joined: a list item's or a flight card's visible text."""
    parts = []
    for node in nodes[index + 1 :]:
        if node.depth <= nodes[index].depth:
            break
        if node.role == "StaticText" and node.name:
            parts.append(node.name)
    return " ".join(parts)


def oracle_action(goal: str, axtree: str) -> str | None:
    """The next correct action, or None when the page is not one an oracle knows."""
    if goal.startswith("Book the "):
        return book_flight_action(goal, axtree)
    return simple_action(goal, axtree)


def act(obs: Any) -> str | None:
    """The oracle as a script of the last observation (browserrl.rollout.scripted_policy)."""
    return oracle_action(obs.goal, obs.axtree_txt or "")


def simple_action(goal: str, axtree: str) -> str | None:
    """click-test(-2), click-button, focus-text, enter-text, enter-password."""
    nodes = [n for n in parse_axtree(axtree) if n.bid]
    quoted = re.findall(r'"([^"]*)"', goal)
    boxes = [n for n in nodes if n.role == "textbox"]
    buttons = [n for n in nodes if n.role == "button"]
    if goal.startswith("Enter") and quoted and boxes:  # enter-text, enter-password: fill each box, submit
        for box in boxes:  # a password box shows its value masked, one bullet per character
            if (box.value or "") not in (quoted[0], "\u2022" * len(quoted[0])):
                return f"fill({box.bid!r}, {quoted[0]!r})"
        submit = [b for b in buttons if b.name.lower() == "submit"]
        return f"click({submit[0].bid!r})" if submit else None
    if goal.startswith("Focus") and boxes:
        return f"click({boxes[0].bid!r})"
    named = re.search(r"button (\w+)\.", goal)  # click-test-2: "Click button ONE."
    target = quoted[0] if quoted else named[1] if named else None
    matches = [b for b in buttons if target is None or b.name == target]
    return f"click({matches[0].bid!r})" if matches else None


_BOOK_GOAL = re.compile(
    r"Book the (?P<pick>shortest|cheapest) one-way flight from: (?P<origin>.+) to: (?P<dest>.+) "
    r"on (?P<month>\d\d)/(?P<day>\d\d)/(?P<year>\d{4})\.$"
)
_MONTHS = list(calendar.month_name)[1:]
_DURATION = re.compile(r"(\d+)h (\d+)m")
_PRICE = re.compile(r"Book flight for \$(\d+)")


def _airport_action(nodes: list[AXNode], box: AXNode, wanted: str) -> str | None:
    """Type the city or code, then pick the autocomplete entry: Search accepts only a full entry.

    The list shows about two entries; one further down may not be clickable, so the oracle types that
    entry in full first, which leaves it alone at the top.
    """
    if box.value and box.value.endswith(")") and wanted in box.value:
        return None
    entries = [(n.bid, subtree_text(nodes, i)) for i, n in enumerate(nodes) if n.role == "listitem" and n.bid]
    for rank, (bid, text) in enumerate(entries):
        if text.startswith(wanted) or f"({wanted})" in text:
            return f"click({bid!r})" if rank == 0 else f"fill({box.bid!r}, {text!r})"
    if box.value == wanted:  # typed, the list is not open: focus the box again to reopen it
        return f"click({box.bid!r})"
    return f"fill({box.bid!r}, {wanted!r})"


def _date_action(nodes: list[AXNode], box: AXNode, month: int, day: int, year: int) -> str | None:
    """The date box is read-only: open the date picker, page to the month, click the day."""
    if box.value == f"{month:02d}/{day:02d}/{year}":
        return None
    shown = [i for i, n in enumerate(nodes) if n.role == "StaticText" and n.name in _MONTHS]
    if not shown:
        return f"click({box.bid!r})"
    at = shown[0]
    shown_year = int(next(n.name for n in nodes[at:] if n.role == "StaticText" and n.name.isdigit()))
    offset = (year - shown_year) * 12 + month - 1 - _MONTHS.index(nodes[at].name)
    if offset:
        label = "Next" if offset > 0 else "Prev"
        links = [n for n in nodes if n.role == "link" and n.name == label and n.bid]
        return f"click({links[0].bid!r})" if links else None
    days = [n for n in nodes[at:] if n.role == "link" and n.name == str(day) and n.bid]
    return f"click({days[0].bid!r})" if days else None


def book_flight_action(goal: str, axtree: str) -> str | None:
    """book-flight: origin, destination, date, Search, then book the cheapest or shortest flight listed."""
    m = _BOOK_GOAL.match(goal)
    if m is None:
        return None
    nodes = parse_axtree(axtree)
    books = [(i, n) for i, n in enumerate(nodes) if n.role == "button" and _PRICE.match(n.name) and n.bid]
    if books:
        return _pick_flight(nodes, books, m["pick"])
    boxes = {n.name: n for n in nodes if n.role == "textbox" and n.bid}
    if not {"From:", "To:", ""} <= boxes.keys():
        return None
    for box, wanted in (("From:", m["origin"]), ("To:", m["dest"])):
        if (action := _airport_action(nodes, boxes[box], wanted)) is not None:
            return action
    date = _date_action(nodes, boxes[""], int(m["month"]), int(m["day"]), int(m["year"]))
    if date is not None:
        return date
    search = [n for n in nodes if n.role == "button" and n.name == "Search" and n.bid]
    return f"click({search[0].bid!r})" if search else None


def _pick_flight(nodes: list[AXNode], books: list[tuple[int, AXNode]], pick: str) -> str | None:
    """Each flight card lists its duration before its Book button; choose by price or duration."""
    flights = []
    start = 0
    for i, button in books:
        card = " ".join(n.name for n in nodes[start:i] if n.role == "StaticText")
        durations = _DURATION.findall(card)
        price = int(button.name.rsplit("$", 1)[1])
        minutes = int(durations[-1][0]) * 60 + int(durations[-1][1]) if durations else None
        flights.append((price if pick == "cheapest" else minutes, button.bid))
        start = i + 1
    known = [f for f in flights if f[0] is not None]
    return f"click({min(known)[1]!r})" if known else None
