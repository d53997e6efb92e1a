"""Scripted oracles: the next correct action from the goal and the AX tree, nothing else.

They play MiniWoB tasks for the SFT warm-up's demonstrations (browserrl.sft), as the expert in a GRPO group
the policy failed (browserrl.groups), and show what a solved episode costs in steps and tokens
(benchmarks/bench_book_flight.py). Stateless on purpose: everything an oracle decides
from is in the observation the policy sees, so a demonstration never relies on hidden information.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from typing import Any

from browserrl.prompts import AXNode, parse_axtree, target_turn
from browserrl.settings import TaskSettings

#: An oracle: (goal, AX tree) -> the next action, or None when it does not know the page.
Oracle = Callable[[str, str], str | None]


def subtree_text(nodes: list[AXNode], index: int) -> str:
    """The StaticText under nodes[index], joined: a list item's or a flight card's visible text."""
    parts = []
    for node in nodes[index + 1 :]:
        if node.depth <= nodes[index].depth:
            break
        if node.role == "StaticText" and node.name:
            parts.append(node.name)
    return " ".join(parts)


def oracle_action(task: str, goal: str, axtree: str) -> str | None:
    """The task's oracle's next action (ORACLES), or None when the task has none or the page is not one
    its oracle knows. By task, not by the goal's wording: login-user's goal starts like enter-text's."""
    oracle = ORACLES.get(task)
    return oracle(goal, axtree) if oracle is not None else None


def act(obs: Any) -> str | None:
    """The oracle as a script of the last observation (browserrl.rollout.scripted_policy)."""
    return oracle_action(obs.metadata.get("task_name", ""), obs.goal, obs.axtree_txt or "")


def demonstration_turn(tasks: Mapping[str, TaskSettings]) -> Callable[[Any], str | None]:
    """The oracle's turn, written as the task's prompt teaches the model to write it (prompts.target_turn):
    played by browserrl.build.demonstrator, its episodes are demonstrations in the policy's own format."""

    def turn(obs: Any) -> str | None:
        action = act(obs)
        return action and target_turn(action, obs.axtree_txt or "", tasks[obs.metadata["task_name"]])

    return turn


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


# ----------------------------------------------------------------------------- shared helpers


def _actionable(axtree: str) -> list[AXNode]:
    return [n for n in parse_axtree(axtree) if n.bid]


def _click(node: AXNode) -> str:
    return f"click({node.bid!r})"


def _fill(node: AXNode, text: str) -> str:
    return f"fill({node.bid!r}, {text!r})"


def _checked(node: AXNode) -> bool:
    return "checked='true'" in node.rest


def _selected(node: AXNode) -> bool:
    return "selected=True" in node.rest


def _button(nodes: list[AXNode], *names: str) -> AXNode | None:
    """The first button whose name is one of `names`, compared case-insensitively (Submit, submit, Login)."""
    wanted = {n.lower() for n in names}
    return next((n for n in nodes if n.role == "button" and n.name.lower() in wanted), None)


def _submit(nodes: list[AXNode]) -> str | None:
    button = _button(nodes, "submit")
    return _click(button) if button is not None else None


def _labelled_boxes(axtree: str) -> list[tuple[str, AXNode]]:
    """(label, textbox) pairs: the box's own name, else the text or row header just before it.

    login-user's and multi-layouts' labels are not tied to their boxes (the AX tree names the box ''), so
    the nearest preceding StaticText or rowheader is what a reader of the page would take as its label.
    """
    pairs, label = [], ""
    for node in parse_axtree(axtree):
        if node.role in ("StaticText", "rowheader") and node.name.strip():
            label = node.name.strip().rstrip(":").strip()
        elif node.role == "textbox" and node.bid:
            pairs.append((node.name.strip().rstrip(":") or label, node))
    return pairs


def _typed(box: AXNode, text: str) -> bool:
    """The box holds `text`; a password box shows its value masked, one bullet per character."""
    return (box.value or "") in (text, "\u2022" * len(text))


def _fill_then_submit(nodes: list[AXNode], box: AXNode | None, text: str) -> str | None:
    if box is None:
        return None
    return _submit(nodes) if _typed(box, text) else _fill(box, text)


# ----------------------------------------------------------------------------- one-click tasks

_ORDINAL = re.compile(r"(\d+)(?:st|nd|rd|th)\b")


def focus_text_2_action(goal: str, axtree: str) -> str | None:
    """focus-text-2: "Focus into the 2nd input textbox." -> click the 2nd textbox of the page."""
    m = _ORDINAL.search(goal)
    boxes = [n for n in _actionable(axtree) if n.role == "textbox"]
    return _click(boxes[int(m[1]) - 1]) if m and 0 < int(m[1]) <= len(boxes) else None


def click_dialog_2_action(goal: str, axtree: str) -> str | None:
    """click-dialog-2: the dialog's buttons; its "x" is the title bar's close button, named 'Close'."""
    m = re.search(r'labeled "([^"]*)"', goal)
    if m is None:
        return None
    name = "Close" if m[1] == "x" else m[1]
    button = next((n for n in _actionable(axtree) if n.role == "button" and n.name == name), None)
    return _click(button) if button is not None else None


def click_dialog_action(goal: str, axtree: str) -> str | None:
    """click-dialog: the "x" is the title bar's close button, named 'Close' (the same bid on every seed)."""
    button = _button(_actionable(axtree), "close")
    return _click(button) if button is not None else None


#: click-widget's widget types -> AX roles. "text" (an <input>) and "textarea" are both `textbox`: the AX
#: tree does not tell them apart, so on such pages the oracle can only take the first textbox.
_WIDGET_ROLES = {"button": "button", "checkbox": "checkbox", "radio": "radio", "text": "textbox"}


def click_widget_action(goal: str, axtree: str) -> str | None:
    """click-widget: click the first element of the named widget type."""
    m = re.search(r'Click on a "(\w+)" widget', goal)
    role = _WIDGET_ROLES.get(m[1], "textbox") if m else None
    target = next((n for n in _actionable(axtree) if n.role == role), None)
    return _click(target) if target is not None else None


def click_tab_action(goal: str, axtree: str) -> str | None:
    """click-tab: "Click on Tab #2." -> the tab's link (the tab itself does not count, its <a> does)."""
    m = re.search(r"Tab #(\d+)", goal)
    link = next((n for n in _actionable(axtree) if m and n.role == "link" and n.name == m[0]), None)
    return _click(link) if link is not None else None


# ----------------------------------------------------------------------------- select, then submit


def click_option_action(goal: str, axtree: str) -> str | None:
    """click-option: check the named radio button, then Submit."""
    m = re.match(r"Select (.*) and click Submit\.", goal)
    nodes = _actionable(axtree)
    radio = next((n for n in nodes if m and n.role == "radio" and n.name == m[1]), None)
    if radio is None:
        return None
    return _submit(nodes) if _checked(radio) else _click(radio)


def click_checkboxes_action(goal: str, axtree: str) -> str | None:
    """click-checkboxes(-large, -transfer): make exactly the named boxes checked, then Submit.

    "Select nothing" (click-checkboxes-transfer) means no box checked. Names are compared exactly: the
    task's words are random strings that differ in case only.
    """
    m = re.match(r"Select (.*) and click Submit\.", goal)
    if m is None:
        return None
    wanted = set() if m[1] == "nothing" else set(m[1].split(", "))
    nodes = _actionable(axtree)
    boxes = [n for n in nodes if n.role == "checkbox"]
    if not wanted <= {b.name for b in boxes}:
        return None
    for box in boxes:
        if _checked(box) != (box.name in wanted):
            return _click(box)
    return _submit(nodes)


def choose_list_action(goal: str, axtree: str) -> str | None:
    """choose-list: select_option on the <select> takes the option's text; then Submit."""
    m = re.match(r"Select (.*) from the list and click Submit\.", goal)
    nodes = _actionable(axtree)
    combo = next((n for n in nodes if n.role == "combobox"), None)
    if m is None or combo is None:
        return None
    if combo.value == m[1]:
        return _submit(nodes)
    return f"select_option({combo.bid!r}, {m[1]!r})"


def click_scroll_list_action(goal: str, axtree: str) -> str | None:
    """click-scroll-list: select the one or two named options of the multi-select list, then Submit.

    The goal joins the names with ", ", so the names are read as listed options whose texts make up the
    goal's list (longest first), not as the pieces of a split: an option text may hold a comma.
    """
    m = re.match(r"Select (.*) from the scroll list and click Submit\.", goal)
    nodes = _actionable(axtree)
    listbox = next((n for n in nodes if n.role == "listbox"), None)
    if m is None or listbox is None:
        return None
    options = [n for n in nodes if n.role == "option"]
    wanted = _split_names(m[1], [o.name for o in options])
    if not wanted:
        return None
    if {o.name for o in options if _selected(o)} == set(wanted):
        return _submit(nodes)
    return f"select_option({listbox.bid!r}, {wanted[0] if len(wanted) == 1 else wanted!r})"


def _split_names(text: str, names: list[str]) -> list[str]:
    """`text` as ", "-joined names from `names` (longest match first), or [] when it is not one."""
    out: list[str] = []
    rest = text
    while rest:
        name = max((n for n in names if rest == n or rest.startswith(n + ", ")), key=len, default=None)
        if name is None:
            return []
        out.append(name)
        rest = rest[len(name) + 2 :]
    return out


# ----------------------------------------------------------------------------- type, then submit


def enter_text_2_action(goal: str, axtree: str) -> str | None:
    """enter-text-2: type the quoted text in the case the goal asks for, then Submit."""
    m = re.match(r'Type "(.*)" in all (lower|upper) case letters', goal)
    nodes = _actionable(axtree)
    box = next((n for n in nodes if n.role == "textbox"), None)
    if m is None:
        return None
    return _fill_then_submit(nodes, box, m[1].lower() if m[2] == "lower" else m[1].upper())


def login_user_action(goal: str, axtree: str) -> str | None:
    """login-user(-popup): fill the boxes labelled Username and Password, then the form's button.

    login-user-popup may open a "session is about to time out" popup when a box gets focus (the form
    behind it is disabled, and the typed text is lost): Cancel closes it, then the form is filled again.
    """
    m = re.search(r'username "(.*)" and the password "(.*)"', goal)
    if m is None:
        return None
    nodes = _actionable(axtree)
    if any("disabled=True" in n.rest for n in nodes if n.role == "textbox"):
        cancel = _button(nodes, "cancel")
        return _click(cancel) if cancel is not None else None
    boxes = dict(_labelled_boxes(axtree))
    user, password = boxes.get("Username"), boxes.get("Password")
    if user is None or password is None:
        return None
    if not _typed(user, m[1]):
        return _fill(user, m[1])
    if not _typed(password, m[2]):
        return _fill(password, m[2])
    after = [n for n in nodes[nodes.index(password) + 1 :] if n.role == "button"]
    return _click(after[0]) if after else None


def read_table_action(goal: str, axtree: str) -> str | None:
    """read-table: the value cell next to the named label cell goes into the text field, then Submit."""
    m = re.match(r"Enter the value of (.*) into the text field", goal)
    nodes = _actionable(axtree)
    cells = [n for n in nodes if n.role == "cell"]
    value = next((b.name for a, b in zip(cells, cells[1:]) if m and a.name == m[1]), None)
    box = next((n for n in nodes if n.role == "textbox"), None)
    return _fill_then_submit(nodes, box, value) if value is not None else None


def use_spinner_action(goal: str, axtree: str) -> str | None:
    """use-spinner: the spinner is a text input underneath: fill the number, then Submit."""
    m = re.match(r"Select (-?\d+) with the spinner", goal)
    nodes = _actionable(axtree)
    spin = next((n for n in nodes if n.role == "spinbutton"), None)
    if m is None or spin is None:
        return None
    if f"valuetext='{m[1]}'" in spin.rest:
        return _submit(nodes)
    return _fill(spin, m[1])


def enter_date_action(goal: str, axtree: str) -> str | None:
    """enter-date: an <input type=date>; Playwright fills it in ISO form (YYYY-MM-DD), whatever it shows."""
    m = re.match(r"Enter (\d\d)/(\d\d)/(\d{4}) as the date", goal)
    nodes = _actionable(axtree)
    box = next((n for n in nodes if n.role == "Date"), None)
    if m is None or box is None:
        return None
    iso = f"{m[3]}-{m[1]}-{m[2]}"
    return _submit(nodes) if box.value == iso else _fill(box, iso)


def enter_time_action(goal: str, axtree: str) -> str | None:
    """enter-time: an <input type=time>; Playwright fills it in 24-hour form (HH:MM)."""
    m = re.match(r"Enter (\d+):(\d\d) (AM|PM) as the time", goal)
    nodes = _actionable(axtree)
    box = next((n for n in nodes if n.role == "InputTime"), None)
    if m is None or box is None:
        return None
    hour = int(m[1]) % 12 + (12 if m[3] == "PM" else 0)
    value = f"{hour:02d}:{m[2]}"
    return _submit(nodes) if box.value == value else _fill(box, value)


_MOVIE_GOAL = re.compile(
    r"Search for (?P<Genre>.+) movies directed by (?P<Director>.+) from year (?P<Year>\d+)\."
)
#: multi-layouts' label words per field ("Released Date" is the year, "Director Name" the director).
_MOVIE_LABELS = {"Year": ("year", "date"), "Director": ("director",), "Genre": ("genre",)}


def multi_layouts_action(goal: str, axtree: str) -> str | None:
    """multi-layouts: fill Year, Director and Genre by their labels, then the form's button.

    Not every layout can be solved from the AX tree: two of the five submit through a <div> styled as a
    button, whose text shows without a bid, so no bid action can submit (the oracle answers None; one of
    them also writes each label after its box). multi-orderings always submits through such a <div>.
    """
    m = _MOVIE_GOAL.match(goal)
    if m is None:
        return None
    for label, box in _labelled_boxes(axtree):
        key = next((k for k, words in _MOVIE_LABELS.items() if any(w in label.lower() for w in words)), None)
        if key is not None and not _typed(box, m[key]):
            return _fill(box, m[key])
    buttons = [n for n in _actionable(axtree) if n.role == "button"]
    return _click(buttons[-1]) if buttons else None


# ----------------------------------------------------------------------------- the registry

#: Task -> its oracle. Tasks missing here have no oracle: click-link, click-tab-2(-hard) and
#: click-collapsible-2 click <span> links that the AX tree shows as StaticText without a bid, multi-orderings
#: submits through a <div> without one; click-color, click-shades, grid-coordinate, click-pie, tic-tac-toe
#: need what only the screenshot shows. multi-layouts is only partly solvable (multi_layouts_action).
ORACLES: dict[str, Oracle] = {
    "click-test": simple_action,
    "click-test-2": simple_action,
    "click-test-transfer": simple_action,
    "click-button": simple_action,
    "unicode-test": simple_action,
    "focus-text": simple_action,
    "focus-text-2": focus_text_2_action,
    "click-dialog": click_dialog_action,
    "click-dialog-2": click_dialog_2_action,
    "click-widget": click_widget_action,
    "click-tab": click_tab_action,
    "click-option": click_option_action,
    "click-checkboxes": click_checkboxes_action,
    "click-checkboxes-large": click_checkboxes_action,
    "click-checkboxes-transfer": click_checkboxes_action,
    "choose-list": choose_list_action,
    "click-scroll-list": click_scroll_list_action,
    "enter-text": simple_action,
    "enter-text-dynamic": simple_action,
    "enter-text-2": enter_text_2_action,
    "enter-password": simple_action,
    "login-user": login_user_action,
    "login-user-popup": login_user_action,
    "read-table": read_table_action,
    "use-spinner": use_spinner_action,
    "enter-date": enter_date_action,
    "enter-time": enter_time_action,
    "multi-layouts": multi_layouts_action,
    "book-flight": book_flight_action,
}

#: Tasks an oracle solves (the SFT warm-up checks its task list against this).
ORACLE_TASKS = tuple(ORACLES)
