"""Preflight messages, health checks, and the local server's lifecycle (start, crash, restart, stop)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from browserrl.env import EnvServerError, EnvSetupError, LocalEnvServer, check_env_url, launcher, preflight
from tests.env.conftest import alive, chromium_pids, run, solve_click_test, wait_until

REPO = Path(__file__).resolve().parents[2]


def test_preflight_finds_chromium_and_miniwob() -> None:
    chromium, miniwob_url = preflight()
    assert os.access(chromium, os.X_OK)
    assert miniwob_url.startswith("file://") and miniwob_url.endswith("/miniwob/")


def test_missing_chromium_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(launcher.CHROMIUM_ENV, raising=False)
    monkeypatch.setattr(launcher, "_CHROMIUM_CANDIDATES", ())
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path))
    with pytest.raises(EnvSetupError, match=r"apt-get install chromium"):
        preflight()
    monkeypatch.setenv(launcher.CHROMIUM_ENV, str(tmp_path / "no-chrome"))
    with pytest.raises(EnvSetupError, match=launcher.CHROMIUM_ENV):
        preflight()


def test_missing_miniwob_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MINIWOB_URL", tmp_path.as_uri() + "/")
    with pytest.raises(EnvSetupError, match=r"pip install miniwob"):
        preflight()


def test_server_without_chromium_exits_with_one_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, BROWSERRL_CHROMIUM=str(tmp_path / "no-chrome"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "serve_env.py"), "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BROWSERRL_CHROMIUM" in lines[0] and "Traceback" not in proc.stderr


def test_check_env_url_fails_fast_on_nothing() -> None:
    start = time.monotonic()
    with pytest.raises(EnvServerError, match="no env server answers"):
        check_env_url("http://127.0.0.1:9", timeout=2)
    with pytest.raises(EnvServerError):
        check_env_url("ws://127.0.0.1:9", timeout=2)
    assert time.monotonic() - start < 5


def test_a_port_taken_before_the_server_binds_it_gets_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """The port is picked free, then bound by the server a moment later; another process (a second run's
    server) may take it in between: the server starts again on another port. A fixed port is not moved."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port])
        free_port = launcher._free_port
        monkeypatch.setattr(launcher, "_free_port", lambda host: next(picks, None) or free_port(host))
        with LocalEnvServer(task="click-test", max_sessions=1, idle_timeout_s=None) as server:
            assert server.port != port
            check_env_url(server.url)
        with pytest.raises(EnvServerError, match="address already in use"):
            LocalEnvServer(task="click-test", port=port, idle_timeout_s=None).start()


@pytest.mark.browser
def test_start_kill_restart_stop_leaves_no_chromium() -> None:
    server = LocalEnvServer(task="click-test", max_sessions=2, idle_timeout_s=None)
    with server:
        assert server.is_alive()
        check_env_url(server.url)

        async def solve() -> None:
            from browserrl.env import BrowserGymEnv

            async with BrowserGymEnv(base_url=server.url) as env:
                assert (await solve_click_test(env, seed=1)).reward == 1.0
                pids.update(chromium_pids(server.pid))  # while the session (and its browser) is alive
                os.kill(server.pid, signal.SIGKILL)  # a crash: no cleanup code runs in the server

        pids: set[int] = set()
        run(solve())  # closing the dead session's socket is best effort: no error
        assert pids, "no chromium process was seen under the server"
        assert wait_until(lambda: not server.is_alive(), timeout=10)
        assert wait_until(lambda: not alive(pids), timeout=15), (
            f"chromium outlived a killed server: {alive(pids)}"
        )
        old_url = server.url
        server.restart()
        assert server.is_alive()
        check_env_url(server.url)
        if server.url != old_url:
            with pytest.raises(EnvServerError):
                check_env_url(old_url, timeout=2)

        async def solve_again() -> None:
            from browserrl.env import BrowserGymEnv

            async with BrowserGymEnv(base_url=server.url) as env:
                assert (await solve_click_test(env, seed=2)).reward == 1.0
                pids.update(chromium_pids(server.pid))

        run(solve_again())
        server_pid = server.pid
    assert not server.is_alive() and server_pid is not None and not psutil.pid_exists(server_pid)
    assert wait_until(lambda: not alive(pids), timeout=15), f"chromium outlived stop(): {alive(pids)}"


@pytest.mark.browser
def test_server_stops_when_its_launcher_dies(tmp_path: Path) -> None:
    """The training process crashes hard (SIGKILL, no atexit): its server notices and shuts down."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from browserrl.env import LocalEnvServer
        server = LocalEnvServer(task="click-test", max_sessions=1).start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    launcher_proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(launcher_proc.stdout.readline())  # type: ignore[union-attr]
        assert psutil.pid_exists(server_pid)
        launcher_proc.kill()
        launcher_proc.wait(timeout=10)
        assert wait_until(lambda: not alive({server_pid}), timeout=20), "server outlived its launcher"
    finally:
        launcher_proc.kill()
