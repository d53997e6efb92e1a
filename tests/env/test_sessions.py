"""Session limits and lifetimes: one browser per session, none outlives its session or the server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from browserrl.env import BrowserGymAction, BrowserGymEnv, EnvServerRefused, LocalEnvServer, check_env_url
from browserrl.env.launcher import _free_port
from browserrl.pool import EnvFailure, EnvPool
from tests.env.conftest import alive, browser_count, chromium_pids, run, solve_click_test, wait_until

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[2]


def test_one_browser_per_session_and_none_after_close() -> None:
    with LocalEnvServer(task="click-test", max_sessions=3, idle_timeout_s=None) as server:

        async def go() -> set[int]:
            envs = [BrowserGymEnv(base_url=server.url) for _ in range(3)]
            for env in envs:
                await env.connect()
            results = await asyncio.gather(*(solve_click_test(env, seed=i) for i, env in enumerate(envs)))
            assert [r.reward for r in results] == [1.0, 1.0, 1.0], [r.observation.error for r in results]
            assert browser_count(server.pid) == 3
            pids = chromium_pids(server.pid)
            # sessions are isolated: a reset in one does not touch the page of another
            await envs[0].reset(seed=9, task_name="click-button")
            assert (await envs[1].state()).task_name == "click-test"
            for env in envs:
                await env.close()
            return pids

        pids = run(go())
        assert wait_until(lambda: not alive(pids), timeout=20), (
            f"closed sessions left chromium: {alive(pids)}"
        )
        assert browser_count(server.pid) == 0


def test_idle_session_is_closed_with_its_browser() -> None:
    with LocalEnvServer(task="click-test", max_sessions=1, idle_timeout_s=1.0) as server:

        async def go() -> None:
            async with BrowserGymEnv(base_url=server.url) as env:
                await env.reset(seed=0)
                pids = chromium_pids(server.pid)
                assert pids
                # openenv's reaper looks every max(timeout / 4, 5) s
                assert await asyncio.to_thread(wait_until, lambda: not alive(pids), 15), "idle browser kept"
                with pytest.raises(EnvServerRefused, match="closed"):
                    await env.step(BrowserGymAction(action_str="noop(0)"))
            async with BrowserGymEnv(base_url=server.url) as env:  # the slot is free again
                assert (await solve_click_test(env, seed=1)).reward == 1.0

        run(go())


def test_pool_reopens_a_session_closed_for_idleness() -> None:
    """Training keeps its sessions across an SFT warm-up longer than the idle timeout: the first reset after
    it must start an episode, not come back as an env error."""
    with LocalEnvServer(task="click-test", max_sessions=1, idle_timeout_s=1.0) as server:
        pool = EnvPool(lambda _: [server.url], size=1)
        try:
            assert not isinstance(pool.reset([0], ["click-test"], [0])[0], EnvFailure)
            pids = chromium_pids(server.pid)
            assert wait_until(lambda: not alive(pids), timeout=15), "the idle session was not closed"
            [result] = pool.reset([0], ["click-test"], [1])
            assert not isinstance(result, EnvFailure), result
            assert result.observation.goal
        finally:
            pool.close()


def test_pool_resizes_and_releases_its_sessions() -> None:
    """Evaluation plays on its own session count (`resize`), an SFT warm-up closes its sessions while it
    trains (`release`): each closes its browsers, and the pool plays on afterwards."""
    with LocalEnvServer(task="click-test", max_sessions=3, idle_timeout_s=None) as server:
        pool = EnvPool(lambda _: [server.url], size=1)
        try:
            pool.resize(3)
            results = pool.reset([0, 1, 2], ["click-test"] * 3, [0, 1, 2])
            assert not any(isinstance(r, EnvFailure) for r in results), results
            assert browser_count(server.pid) == 3
            pool.resize(1)
            assert wait_until(lambda: browser_count(server.pid) == 1, timeout=20)
            pool.release()
            assert wait_until(lambda: browser_count(server.pid) == 0, timeout=20)
            [result] = pool.reset([0], ["click-test"], [3])
            assert not isinstance(result, EnvFailure), result
        finally:
            pool.close()


def test_sigterm_shuts_down_cleanly_with_browsers() -> None:
    port = _free_port("127.0.0.1")
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "serve_env.py"),
        "--task",
        "click-test",
        "--port",
        str(port),
        "--max-sessions",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _answers(url), timeout=60)

        async def go() -> set[int]:
            env = BrowserGymEnv(base_url=url)
            assert (await solve_click_test(env, seed=0)).reward == 1.0
            pids = chromium_pids(proc.pid)
            proc.send_signal(signal.SIGTERM)  # while the session is still open
            await asyncio.to_thread(proc.wait, 30)
            return pids

        pids = run(go())
        assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
        assert pids and wait_until(lambda: not alive(pids), timeout=10), (
            f"chromium outlived the server: {alive(pids)}"
        )
    finally:
        proc.kill()


def _answers(url: str) -> bool:
    try:
        check_env_url(url, timeout=1)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_routes_spread_sessions_over_servers_and_ranks() -> None:
    from browserrl.pool import routes

    urls = ["a", "b", "c", "d"]
    assert [routes(urls)(s)[0] for s in range(6)] == ["a", "b", "c", "d", "a", "b"]
    assert routes(urls)(1) == ["b", "c", "d", "a"]  # every server is a fallback
    rank1 = routes(urls, rank=1, world=2)  # its own share: b and d, then the others
    assert [rank1(s)[0] for s in range(4)] == ["b", "d", "b", "d"] and rank1(0) == ["b", "d", "a", "c"]
    few = [routes(["a", "b"], rank=r, world=4)(0)[0] for r in range(4)]  # fewer servers than ranks
    assert few == ["a", "b", "a", "b"]


def test_pool_spreads_over_two_servers_and_survives_one_dying() -> None:
    """Sessions alternate between the servers; when one dies its episodes in flight are env errors, and the
    next resets open their sessions on the other: the run goes on at full width."""
    from browserrl.pool import routes

    with (
        LocalEnvServer(task="click-test", max_sessions=4, idle_timeout_s=None) as a,
        LocalEnvServer(task="click-test", max_sessions=4, idle_timeout_s=None) as b,
    ):
        pool = EnvPool(routes([a.url, b.url]), size=4)
        try:
            results = pool.reset(range(4), ["click-test"] * 4, range(4))
            assert not any(isinstance(r, EnvFailure) for r in results), results
            assert browser_count(a.pid) == browser_count(b.pid) == 2
            b.stop()
            steps = pool.step(range(4), ["noop()"] * 4)
            assert [isinstance(r, EnvFailure) for r in steps] == [False, True, False, True]
            results = pool.reset(range(4), ["click-test"] * 4, range(4, 8))
            assert not any(isinstance(r, EnvFailure) for r in results), results
            assert wait_until(lambda: browser_count(a.pid) == 4, timeout=20)
        finally:
            pool.close()
