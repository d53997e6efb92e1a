"""The env server: MiniWoB++ sessions behind openenv's HTTP + WebSocket app.

``python -m browserrl.env.server --task click-test --port 8000 --max-sessions 8`` (or
``scripts/serve_env.py``) serves until SIGINT/SIGTERM, then closes every browser before exiting.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi import FastAPI
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.types import ConcurrencyConfig

from browserrl.env.actions import DEFAULT_ALLOWED, MAX_ACTION_LEN, resolve_allowed
from browserrl.env.launcher import EnvSetupError, preflight

if TYPE_CHECKING:
    from browserrl.env.environment import EnvConfig

log = logging.getLogger("browserrl.env.server")


def build_app(config: EnvConfig, max_sessions: int = 8, idle_timeout_s: float | None = None) -> FastAPI:
    """The openenv app: at most ``max_sessions`` WebSocket sessions, each with its own browser.

    Sessions idle longer than ``idle_timeout_s`` are closed (openenv checks every max(timeout/4, 5) s).
    """
    from browserrl.env.environment import MiniWoBEnvironment, close_all
    from browserrl.env.models import BrowserGymAction, BrowserGymObservation

    app = create_app(
        functools.partial(MiniWoBEnvironment, config),
        BrowserGymAction,
        BrowserGymObservation,
        env_name="browserrl-miniwob",
        concurrency_config=ConcurrencyConfig(
            max_concurrent_envs=max_sessions, session_timeout=idle_timeout_s
        ),
    )
    app.router.on_shutdown.append(close_all)
    return app


def _watch_parent(parent_pid: int) -> None:
    """Shut down (gracefully, via SIGTERM to ourselves) once the launching process is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            log.warning("parent process %d is gone; shutting down", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="click-test", help="default MiniWoB task (a reset may pick another)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions (= browsers)")
    p.add_argument(
        "--idle-timeout", type=float, default=900.0, help="close sessions idle this long (s); 0: never"
    )
    p.add_argument("--max-steps", type=int, default=20, help="steps before an episode is truncated")
    p.add_argument(
        "--pre-observation-delay", type=float, default=0.0, help="seconds between action and check"
    )
    p.add_argument("--screenshot", action="store_true", help="PNG screenshot in every observation")
    p.add_argument("--pruned-html", action="store_true", help="fill pruned_html (one DOM snapshot per obs)")
    p.add_argument(
        "--allow-actions", default="", help="extra actions or groups (coord, nav, tab), comma separated"
    )
    p.add_argument("--max-action-len", type=int, default=MAX_ACTION_LEN)
    p.add_argument("--fresh-context", action="store_true", help="new browser context per episode (slower)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone (launcher)")
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        chromium, miniwob_url = preflight()
        from browserrl.env.environment import EnvConfig, close_all
        from browserrl.env.tasks import canonical_task

        extra = [a.strip() for a in args.allow_actions.split(",") if a.strip()]
        config = EnvConfig(
            task=canonical_task(args.task),
            max_steps=args.max_steps,
            pre_observation_delay=args.pre_observation_delay,
            screenshot=args.screenshot,
            pruned_html=args.pruned_html,
            allowed_actions=DEFAULT_ALLOWED | resolve_allowed(extra),
            max_action_len=args.max_action_len,
            fresh_context=args.fresh_context,
            chromium=chromium,
            miniwob_url=miniwob_url,
            browser_slots=threading.BoundedSemaphore(args.max_sessions),
        )
    except (EnvSetupError, ValueError) as e:
        print(f"browserrl env server: {e}", file=sys.stderr)
        return 2
    import uvicorn

    app = build_app(config, args.max_sessions, args.idle_timeout or None)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    log.warning(
        "serving %s on http://%s:%d (max %d sessions)", config.task, args.host, args.port, args.max_sessions
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: make that a clean exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_cleanly)
    try:
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=10
        )
    finally:
        close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
