"""Fixtures for the env tests: a shared local server, process helpers, small async helpers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from browserrl.env import BrowserGymAction, BrowserGymEnv, LocalEnvServer


def find_bid(axtree: str, role: str, name: str | None = None) -> str:
    """Bid of the first ``[bid] role 'name'`` line of an AX tree."""
    label = re.escape(name) if name is not None else "[^']*"
    match = re.search(rf"\[(\w+)\] {role} '{label}'", axtree)
    assert match, f"no {role} {name!r} in:\n{axtree}"
    return match.group(1)


def chromium_pids(server_pid: int) -> set[int]:
    """Chromium processes started (through Playwright's driver) by the server process."""
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    out = set()
    for proc in children:
        try:
            if "chrom" in proc.name():
                out.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def browser_count(server_pid: int) -> int:
    """Chromium *browser* processes (one per live session): those not started by another Chromium."""
    count = 0
    for pid in chromium_pids(server_pid):
        try:
            if "chrom" not in psutil.Process(pid).parent().name():
                count += 1
        except (psutil.NoSuchProcess, AttributeError):
            continue
    return count


def alive(pids: set[int]) -> set[int]:
    """The pids among ``pids`` still running (zombies count as gone)."""
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def solve_click_test(env: BrowserGymEnv, seed: int) -> Any:
    """Reset click-test and click the button whose bid is read from the AX tree.

    A click that did not end the episode (once in CI, with three Chromiums starting beside another test worker
    on 2 cores; Playwright's action timeout is MiniWoB's 5 s) is tried once more; a second miss is returned
    as it came, any error in ``observation.error``.
    """
    result = await env.reset(seed=seed, task_name="click-test")
    bid = find_bid(result.observation.axtree_txt, "button", "Click Me!")
    click = BrowserGymAction(action_str=f"click('{bid}')")
    result = await env.step(click)
    if not result.done:
        result = await env.step(click)
    return result


@pytest.fixture(scope="session")
def server() -> Iterator[LocalEnvServer]:
    """One server for the read-only protocol tests: 4 sessions, episodes truncated after 5 steps."""
    with LocalEnvServer(task="click-test", max_sessions=4, idle_timeout_s=None, max_steps=5) as srv:
        yield srv
