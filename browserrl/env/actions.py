"""BrowserGym action strings: extraction from model text, validation, the allowed subsets.

Actions are Python-looking calls such as ``click('13')`` or ``fill('7', "Paris")``. They are parsed
with :mod:`ast` and only accepted when they are a single call of an allowed BrowserGym action whose
arguments are plain literals that fit the action's signature. Nothing here ever evaluates model text:
the environment calls BrowserGym's own action function with the parsed literal arguments.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from browsergym.core.action import functions as _bg

#: Default action subset for MiniWoB++: element (bid) actions, keyboard input and ``noop``. No action here
#: can leave the task page, open a tab or touch the host's files.
DEFAULT_ALLOWED: frozenset[str] = frozenset(
    {
        "noop",
        "click",
        "dblclick",
        "fill",
        "clear",
        "select_option",
        "hover",
        "focus",
        "press",
        "scroll",
        "drag_and_drop",
        "keyboard_press",
        "keyboard_type",
    }
)
#: Coordinate-based mouse/keyboard actions (BrowserGym's ``coord`` subset); harmless, off by default
#: because the text observation carries no coordinates.
COORD_ACTIONS: frozenset[str] = frozenset(
    {
        "scroll_at",
        "mouse_move",
        "mouse_up",
        "mouse_down",
        "mouse_click",
        "mouse_dblclick",
        "mouse_drag_and_drop",
        "keyboard_down",
        "keyboard_up",
        "keyboard_insert_text",
    }
)
#: Navigation and tab actions. ``goto`` can open ``file:///`` pages of the env host and return their
#: text, so these are only ever enabled by the *server's* configuration, never by a client.
NAV_ACTIONS: frozenset[str] = frozenset({"goto", "go_back", "go_forward"})
TAB_ACTIONS: frozenset[str] = frozenset({"new_tab", "tab_close", "tab_focus"})
#: Named groups accepted wherever a list of allowed actions is configured.
ACTION_GROUPS: dict[str, frozenset[str]] = {
    "default": DEFAULT_ALLOWED,
    "coord": COORD_ACTIONS,
    "nav": NAV_ACTIONS,
    "tab": TAB_ACTIONS,
}
#: Every action this project can execute. BrowserGym's ``upload_file`` (reads host files) and the chat
#: actions (no chat window here) are deliberately absent and can not be enabled.
ALL_ACTIONS: frozenset[str] = DEFAULT_ALLOWED | COORD_ACTIONS | NAV_ACTIONS | TAB_ACTIONS

#: Longest action string accepted; longer ones are refused before parsing.
MAX_ACTION_LEN = 1000
#: Upper bound for ``noop(wait_ms)`` so one action cannot park a session's browser.
MAX_NOOP_MS = 5000.0
#: Bound for any number (coordinates, scroll deltas): finite and within a sane page range.
MAX_ABS_NUMBER = 100_000.0

ACTION_FUNCTIONS: dict[str, Callable[..., Any]] = {name: getattr(_bg, name) for name in sorted(ALL_ACTIONS)}
_SIGNATURES = {name: inspect.signature(fn) for name, fn in ACTION_FUNCTIONS.items()}


class ActionError(ValueError):
    """An action string that is refused; the message is meant for the policy's next prompt."""


@dataclass(frozen=True)
class ParsedAction:
    """A validated action: the BrowserGym function name and its literal arguments."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def resolve_allowed(names: typing.Iterable[str]) -> frozenset[str]:
    """Expand group names (``default``, ``coord``, ``nav``, ``tab``) and check every action is known."""
    out: set[str] = set()
    for name in names:
        if name in ACTION_GROUPS:
            out |= ACTION_GROUPS[name]
        elif name in ALL_ACTIONS:
            out.add(name)
        else:
            raise ValueError(
                f"unknown action or group {name!r}; known: {sorted(ALL_ACTIONS | set(ACTION_GROUPS))}"
            )
    return frozenset(out | {"noop"})


def _literal(node: ast.AST) -> Any:
    """Literal value of an argument node; only str/number/bool/None constants and lists of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(elt) for elt in node.elts]
    raise ActionError("arguments must be plain literals (strings, numbers, True/False/None or lists of them)")


def fits_type(value: Any, annotation: Any) -> bool:
    """Whether a plain value (str, number, bool, None, list, dict) fits a type annotation: classes, Literal,
    unions, list[...] and dict[...]. An int fits float, a bool fits neither. Action arguments are checked
    against BrowserGym's signatures with it, config values against the dataclass fields they fill."""
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(fits_type(value, arg) for arg in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return isinstance(value, list) and all(fits_type(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(annotation) or (str, typing.Any)
        return isinstance(value, dict) and all(fits_type(v, item) for v in value.values())
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _check_numbers(name: str, values: typing.Iterable[Any]) -> None:
    for value in values:
        if isinstance(value, list):
            _check_numbers(name, value)
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (not math.isfinite(value) or abs(value) > MAX_ABS_NUMBER)
        ):
            raise ActionError(f"{name}: number {value!r} is out of range")


def parse_action(
    action_str: str, allowed: frozenset[str] = DEFAULT_ALLOWED, max_len: int = MAX_ACTION_LEN
) -> ParsedAction:
    """Parse one action string into a :class:`ParsedAction`, or raise :class:`ActionError` saying why not."""
    if not isinstance(action_str, str):
        raise ActionError(f"action must be a string, got {type(action_str).__name__}")
    if len(action_str) > max_len:
        raise ActionError(f"action is {len(action_str)} characters long; the limit is {max_len}")
    text = action_str.strip()
    if not text:
        raise ActionError("empty action; expected one call such as click('13')")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ActionError("expected exactly one action call such as click('13')") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ActionError("expected exactly one action call such as click('13')")
    name = call.func.id
    if ast.get_source_segment(text, call.func) != name:  # Python folds e.g. fullwidth letters into ASCII
        raise ActionError("action names must be written in plain ASCII, e.g. click('13')")
    if name not in ALL_ACTIONS:
        raise ActionError(f"unknown action {name!r}; allowed: {', '.join(sorted(allowed))}")
    if name not in allowed:
        raise ActionError(f"action {name!r} is not allowed here; allowed: {', '.join(sorted(allowed))}")
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise ActionError("*args and **kwargs are not accepted")
    args = tuple(_literal(a) for a in call.args)
    kwargs = {k.arg: _literal(k.value) for k in call.keywords if k.arg is not None}
    signature = _SIGNATURES[name]
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise ActionError(f"{name}{signature}: {e}") from None
    for param, value in bound.arguments.items():
        annotation = signature.parameters[param].annotation
        if not fits_type(value, annotation):
            expected = getattr(annotation, "__name__", str(annotation))
            raise ActionError(f"{name}: argument {param!r} must be {expected}, got {value!r}"[:300])
    _check_numbers(name, bound.arguments.values())
    if name == "noop" and not 0 <= float(bound.arguments.get("wait_ms", 0)) <= MAX_NOOP_MS:
        raise ActionError(f"noop: wait_ms must be between 0 and {MAX_NOOP_MS:.0f}")
    return ParsedAction(name=name, args=args, kwargs=kwargs)


def validate_action(
    action_str: str, allowed: frozenset[str] = DEFAULT_ALLOWED, max_len: int = MAX_ACTION_LEN
) -> str | None:
    """Return why ``action_str`` is refused, or None when it is one valid allowed action."""
    try:
        parse_action(action_str, allowed, max_len)
    except ActionError as e:
        return str(e)
    return None


_CALL_START = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\(")


def _call_end(text: str, open_paren: int) -> int | None:
    """Index just past the parenthesis closing ``text[open_paren]``, skipping string literals."""
    depth, i, quote = 0, open_paren, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def extract_action(
    completion: str, allowed: frozenset[str] = ALL_ACTIONS, max_len: int = MAX_ACTION_LEN
) -> str | None:
    """First well-formed action call in a model completion (prose, code fences, several lines allowed).

    Returns the call exactly as written (e.g. ``click('13')``), or None when there is none. Calls of
    names outside ``allowed`` or with malformed arguments are skipped.
    """
    for match in _CALL_START.finditer(completion):
        if match.group(1) not in allowed:
            continue
        end = _call_end(completion, match.end() - 1)
        if end is None:
            continue
        candidate = completion[match.start() : end]
        if validate_action(candidate, allowed, max_len) is None:
            return candidate
    return None
