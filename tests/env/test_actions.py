"""Action parsing and validation (no browser): what the server accepts and what the rollout extracts."""

from __future__ import annotations

import pytest

from browserrl.env.actions import (
    ALL_ACTIONS,
    DEFAULT_ALLOWED,
    MAX_ACTION_LEN,
    NAV_ACTIONS,
    extract_action,
    parse_action,
    resolve_allowed,
    validate_action,
)


@pytest.mark.parametrize(
    "action",
    [
        "click('13')",
        'fill("7", "Paris")',
        "fill('7', 'it\\'s \"quoted\"')",
        "click('a12', button='right', modifiers=['Shift'])",
        "select_option('4', ['a', 'b'])",
        "scroll(0, -200.5)",
        "press('3', 'Enter')",
        "keyboard_type('héllo wörld ✓')",
        "noop()",
        "noop(500)",
        "  dblclick('2')  ",
    ],
)
def test_valid_actions(action: str) -> None:
    assert validate_action(action) is None


@pytest.mark.parametrize(
    ("action", "why"),
    [
        ("goto('file:///etc/passwd')", "not allowed"),
        ("go_back()", "not allowed"),
        ("new_tab()", "not allowed"),
        ("upload_file('1', '/etc/passwd')", "unknown action"),
        ("send_msg_to_user('hi')", "unknown action"),
        ("__import__('os').system('id')", "exactly one action"),
        ("exec('print(1)')", "unknown action"),
        ("click('1'); click('2')", "exactly one action"),
        ("click('1')\nclick('2')", "exactly one action"),
        ("click(13)", "must be str"),
        ("click(page)", "literals"),
        ("click('1' + '2')", "literals"),
        ("click(f'{1}')", "literals"),
        ("click(*['1'])", "*args"),
        ("click(**{'bid': '1'})", "*args"),
        ("click()", "missing"),
        ("click('1', '2', '3', '4')", "too many"),
        ("click('1', button='back')", "must be"),
        ("noop(1e9)", "out of range"),
        ("noop(-5)", "between"),
        ("scroll(float('inf'), 0)", "literals"),
        ("scroll(1e400, 0)", "out of range"),
        ("page.click('1')", "exactly one action"),
        ("\uff43\uff4c\uff49\uff43\uff4b('1')", "plain ASCII"),
        ("lambda: click('1')", "exactly one action"),
        ("", "empty"),
        ("x" * (MAX_ACTION_LEN + 1), "limit"),
        ("click('\x00')\x00", "exactly one action"),
        ("(" * 300 + ")" * 300, "exactly one action"),
    ],
)
def test_refused_actions(action: str, why: str) -> None:
    error = validate_action(action)
    assert error is not None and why in error, error


def test_parse_action_returns_literal_arguments() -> None:
    parsed = parse_action("fill('7', \"Paris\", enable_autocomplete_menu=True)")
    assert (parsed.name, parsed.args, parsed.kwargs) == (
        "fill",
        ("7", "Paris"),
        {"enable_autocomplete_menu": True},
    )


def test_allowed_set_is_configurable() -> None:
    assert validate_action("goto('http://localhost/')", allowed=DEFAULT_ALLOWED | NAV_ACTIONS) is None
    assert "not allowed" in (validate_action("fill('1', 'x')", allowed=frozenset({"click"})) or "")
    assert resolve_allowed(["nav", "mouse_click"]) == NAV_ACTIONS | {"mouse_click", "noop"}
    with pytest.raises(ValueError, match="unknown action"):
        resolve_allowed(["upload_file"])
    assert "upload_file" not in ALL_ACTIONS


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("click('13')", "click('13')"),
        ('I should press the button.\n```python\nclick("13")\n```', 'click("13")'),
        ("Action: fill('5', \"a (b) c\") then click('6')", "fill('5', \"a (b) c\")"),
        ("page.click('1') is wrong, use click('4')", "click('4')"),
        ("click(13) ... click('13')", "click('13')"),
        ("foo('1') click('2')", "click('2')"),
        ("I give up", None),
        ("click('13'", None),
        ("", None),
    ],
)
def test_extract_action(completion: str, expected: str | None) -> None:
    assert extract_action(completion) == expected


def test_extract_action_respects_allowed() -> None:
    assert extract_action("goto('file:///etc/passwd') click('3')", allowed=DEFAULT_ALLOWED) == "click('3')"
    assert extract_action("goto('http://x/')") == "goto('http://x/')"  # well formed; the server decides
