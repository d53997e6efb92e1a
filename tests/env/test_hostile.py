"""Hostile action strings sent to a running server: every one is an error observation, nothing breaks."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from browserrl.env import BrowserGymAction, BrowserGymEnv, LocalEnvServer, check_env_url
from browserrl.env.actions import validate_action
from tests.env.conftest import run, solve_click_test

pytestmark = pytest.mark.browser


def hostile_strings(canary: Path, marker: Path) -> list[str]:
    """At least 500 strings: injection, file access, huge, unicode, quoting, several actions, fuzz."""
    c, m = str(canary), str(marker)
    base = [
        f"goto('file://{c}')",
        "goto('file:///etc/passwd')",
        'goto("file:///etc/shadow")',
        "goto('view-source:file:///etc/passwd')",
        "goto('chrome://version')",
        "goto('http://169.254.169.254/latest/meta-data/')",
        "go_back()",
        "go_forward()",
        "new_tab()",
        "tab_focus(0)",
        "tab_close()",
        f"upload_file('13', '{c}')",
        f"mouse_upload_file(1, 1, '{c}')",
        "send_msg_to_user('hi')",
        "report_infeasible('no')",
        f"__import__('os').system('touch {m}')",
        f"exec(\"open('{m}', 'w').write('x')\")",
        f"eval(\"__import__('os').system('touch {m}')\")",
        f"open('{c}').read()",
        f"click(open('{c}').read())",
        f"fill('13', open('{c}').read())",
        f"click('13'); __import__('os').system('touch {m}')",
        f"click('13')\n__import__('os').system('touch {m}')",
        f"click('13') or __import__('os').system('touch {m}')",
        f"click(__import__('os').system('touch {m}'))",
        f"click([x for x in open('{c}')])",
        f"click(f\"{{open('{c}').read()}}\")",
        "click(page.goto('file:///etc/passwd'))",
        "page.goto('file:///etc/passwd')",
        "page.evaluate('document.location = \"file:///etc/passwd\"')",
        "click.__globals__['page'].goto('file:///etc/passwd')",
        "click('13').__class__.__bases__[0].__subclasses__()",
        "().__class__.__base__.__subclasses__()",
        "globals()",
        "locals()",
        "breakpoint()",
        "lambda: click('13')",
        "[click('13') for _ in range(10**9)]",
        "noop(10**12)",
        "noop(1e308)",
        "noop(-1)",
        "noop(float('nan'))",
        "scroll(1e309, 0)",
        "scroll(10**400, 0)",
        "click(*['13'])",
        "click(**{'bid': '13'})",
        "click(bid='13', bid='14')",
        "click('13', button='middle', modifiers=['Alt', 'Hyper'])",
        "click('13', unknown=1)",
        "click()",
        "click",
        "click(",
        "click('13'",
        "click('13'))",
        "click('13', 'left', ['Shift'], 'extra')",
        "fill('13')",
        "CLICK('13')",
        "Click('13')",
        "click ('13') # comment",
        "# click('13')",
        "'''click('13')'''",
        "\"click('13')\"",
        "`click('13')`",
        "```python\nclick('13')\n```",
        "click('13')\x00",
        "\x00",
        "\x1b[31mclick('13')",
        "click('\\x00')",
        "click('\\\\')",
        "click('\\'')",
        'click("\'")',
        "click('\"')",
        "click(''')",
        "click('''13''')",
        'click("""13""")',
        "click('9999' '9')",
        "click(b'13')",
        "click(r'13')",
        "click(u'13')",
        "click(13j)",
        "click(None)",
        "click(True)",
        "click(...)",
        "click({'a': 1})",
        "click({1, 2})",
        "click(('13',))",
        "click('13' if True else '14')",
        "click(x:='13')",
        "await click('13')",
        "yield click('13')",
        "async def f(): pass",
        "import os",
        "from os import system",
        "del page",
        "page = None",
        "raise SystemExit",
        "exit()",
        "quit()",
        "help()",
        "input()",
        "print(open('/etc/passwd').read())",
        "__builtins__",
        "__import__",
        "click('13'); click('14')",
        "click('13')\nclick('14')",
        "click('13'), click('14')",
        "[click('13'), click('14')]",
        "click('13') and fill('14', 'x')",
        "(" * 1000 + ")" * 1000,
        "[" * 100 + "]" * 100,
        "click(" + "(" * 150 + "'13'" + ")" * 150 + ")",
        "-" * 999 + "1",
        "1" * 1000,
    ]
    huge = [
        "x" * 1001,
        "click('" + "1" * 5000 + "')",
        "fill('13', '" + "A" * 100_000 + "')",
        "goto('file:///" + "a/" * 50_000 + "')",
        "é" * 1_000_000,
        "click('13')" + " " * 2000,
    ]
    unicode = [
        "click('١٣')",
        "click('13\u202e')",
        "click('\u200b13')",
        "click('１３')",
        "ｃｌｉｃｋ('13')",
        "click('😀')",
        "keyboard_type('\ud800')",
        "fill('99999', '\udfff')",
        "click('\U0010ffff')",
        "click('e\u0301')",
        "click('" + "\u0301" * 500 + "')",
        "click\u00a0('13')",
        "click('13')\u2028click('14')",
        "fill('99999', 'Ω≈ç√∫˜µ≤≥÷')",
        "fill('99999', '田中さんにあげて下さい')",
        "fill('99999', '<script>alert(1)</script>')",
        "fill('99999', '\"; DROP TABLE users; --')",
        "fill('99999', '${jndi:ldap://x/a}')",
        "fill('99999', '{{7*7}}')",
        "fill('99999', '../../../../etc/passwd')",
        "press('99999', 'Control+Alt+Delete')",
        "press('99999', 'NotAKey')",
        "select_option('99999', ['a'] * 50)",
        "keyboard_press('NotAKey')",
        "drag_and_drop('99999', '99998')",
    ]
    rng = random.Random(0)
    pieces = [
        "click",
        "fill",
        "goto",
        "noop",
        "(",
        ")",
        "'",
        '"',
        "\\",
        ",",
        "13",
        "file:///etc/passwd",
        ";",
        "\n",
        "__import__",
        "os",
        ".",
        "system",
        "[",
        "]",
        "=",
        "*",
        "é",
        "😀",
        " ",
        "\x00",
        "#",
        "lambda",
        ":",
    ]
    fuzz = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(400)]
    fuzz = [f for f in fuzz if validate_action(f) is not None]  # a fuzz string may happen to be valid
    # Well-formed calls must not hit a real element (bid 13 is click-test's button): aim them at no element.
    base = [re.sub(r"(['\"])13(['\"])", r"\g<1>99999\2", b) for b in base]
    out = base + huge + unicode + fuzz
    assert len(out) >= 500
    return out


def test_hostile_strings_get_error_observations(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    secret = "CANARY-5f0c2b7e-not-for-the-policy"
    canary.write_text(secret)
    marker = tmp_path / "pwned"
    strings = hostile_strings(canary, marker)

    async def go(url: str) -> list[tuple[str, str]]:
        failures = []
        async with BrowserGymEnv(base_url=url, message_timeout_s=30) as env:
            await env.reset(seed=0, task_name="click-test")
            for action in strings:
                result = await env.step(BrowserGymAction(action_str=action))
                obs = result.observation
                seen = " ".join([obs.text, obs.axtree_txt, obs.pruned_html, obs.error, obs.url])
                if not obs.last_action_error or not obs.error or result.reward != 0 or secret in seen:
                    failures.append((action[:80], f"error={obs.error!r} reward={result.reward}"))
                if "click-test.html" not in obs.url:
                    failures.append((action[:80], f"left the task page: {obs.url}"))
                if result.done:
                    await env.reset(seed=0, task_name="click-test")
            solved = await solve_click_test(env, seed=1)
            assert solved.reward == 1.0, "the session no longer works after the hostile strings"
        return failures

    with LocalEnvServer(task="click-test", max_sessions=1, idle_timeout_s=None, max_steps=100_000) as server:
        failures = run(go(server.url))
        check_env_url(server.url, timeout=5)
        assert server.is_alive()
    assert not failures, failures[:10]
    assert not marker.exists()
