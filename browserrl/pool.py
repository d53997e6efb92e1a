"""Training-side sessions: a fixed number of WebSocket sessions kept open across rollouts, and `env_pool`,
which opens them from a run's EnvSettings (browserrl.build.env_pool is the one way a run, an evaluation,
the SFT warm-up or a script gets them from its config).

The rollout is synchronous (TRL calls it), the OpenEnv client is async. One background event loop owns the
clients, so the sessions (and the Chromium behind each) stay open between rollouts, and the env steps of all
live episodes of a turn run concurrently. A session opens at its first use; `resize` (held-out evaluation
plays on `eval.sessions`) and `release` (an SFT warm-up, once its demonstrations are played) close some.
A failed call never raises: it comes back as `EnvFailure`, the session is dropped and reopened on next use,
and `on_failure` may restart a local server.

Several servers (`env.url` a list; at GPU scale the env is more than half of a step): each session has its
servers in order of preference (`routes`), the first its home. A session opens on the first that answers, so
when a server dies its episodes in flight end as env errors and its sessions reopen on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from openenv.core.client_types import StepResult

from browserrl.env.client import BrowserGymEnv
from browserrl.env.models import BrowserGymAction
from browserrl.settings import EnvSettings

log = logging.getLogger(__name__)


#: Sessions that start their browser at once. On 2 cores, 24 first resets at once ran past the 60 s message
#: timeout and 16 took 42 s; in waves of 8, 24 took 60 s and 16 took 34 s, none failed.
MAX_LAUNCHES = 8


@dataclass
class EnvFailure:
    """A session that could not answer (server dead, timeout, protocol error)."""

    message: str


def routes(urls: Sequence[str], rank: int = 0, world: int = 1) -> Callable[[int], list[str]]:
    """The servers session `slot` of process `rank` (of `world`) tries, in order. With at least as many
    servers as processes, each process spreads its sessions over its own share (every world-th server from
    its rank) and falls back on the others; with fewer, every process spreads over all, offset by its rank."""
    urls = list(urls)
    own = urls[rank::world] if len(urls) >= world else urls
    rest = [u for u in urls if u not in own]
    shift = 0 if len(urls) >= world else rank

    def route(slot: int) -> list[str]:
        first = (slot + shift) % len(own)
        return own[first:] + own[:first] + rest

    return route


class EnvPool:
    def __init__(
        self,
        route: Callable[[int], Sequence[str]],
        size: int,
        message_timeout_s: float = 60.0,
        on_failure: Callable[[], None] | None = None,
        reset_options: dict[str, Any] | None = None,
    ):
        """`route(slot)`: the server URLs that session tries, in order, asked at each opening (a local
        server's changes when it restarts). `reset_options` go with every reset (screenshot:
        MiniWoBEnvironment.reset's options)."""
        self.route, self.size, self.timeout, self.on_failure = route, size, message_timeout_s, on_failure
        self.reset_options = dict(reset_options or {})
        self._clients: list[BrowserGymEnv | None] = [None] * size
        self._launches = asyncio.Semaphore(MAX_LAUNCHES)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="env-pool", daemon=True)
        self._thread.start()

    async def _client(self, slot: int) -> BrowserGymEnv:
        if self._clients[slot] is not None:
            return self._clients[slot]
        urls = list(self.route(slot))
        for i, url in enumerate(urls):
            client = BrowserGymEnv(base_url=url, message_timeout_s=self.timeout)
            try:
                await asyncio.wait_for(client.connect(), self.timeout)
            except Exception as exc:
                if i == len(urls) - 1:
                    raise
                log.warning("session %d: %s does not answer (%s); trying %s", slot, url, exc, urls[i + 1])
                continue
            self._clients[slot] = client
            return client
        raise ValueError("route gave no server")

    async def _call(self, slot: int, method: str, kwargs: dict[str, Any]) -> StepResult | EnvFailure:
        """One call on one session. A reset that fails on a session opened earlier is tried once more on a
        new one: the server closes a session idle for `env.idle_timeout_s` (an SFT warm-up longer than that
        leaves every session idle; the first GRPO step lost a batch of episodes to it), and a failed reset
        loses nothing."""
        reopen = method == "reset" and self._clients[slot] is not None
        try:  # a new session's first call starts its Chromium: at most MAX_LAUNCHES at once
            async with contextlib.nullcontext() if self._clients[slot] else self._launches:
                client = await self._client(slot)
                return await asyncio.wait_for(getattr(client, method)(**kwargs), self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure ends this episode, never the run
            await self._drop(slot)
            if reopen:
                log.info("session %d: %s: %s; reset on a new session", slot, type(exc).__name__, exc)
                return await self._call(slot, method, kwargs)
            return EnvFailure(f"{method} on session {slot}: {type(exc).__name__}: {exc}"[:500])

    async def _drop(self, slot: int) -> None:
        client, self._clients[slot] = self._clients[slot], None
        if client is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                await asyncio.wait_for(client.close(), 5)

    def _gather(self, calls: Sequence[tuple[int, str, dict[str, Any]]]) -> list[StepResult | EnvFailure]:
        async def run() -> list[StepResult | EnvFailure]:
            return list(await asyncio.gather(*(self._call(*c) for c in calls)))

        results = asyncio.run_coroutine_threadsafe(run(), self._loop).result()
        if self.on_failure is not None and any(isinstance(r, EnvFailure) for r in results):
            self.on_failure()
        return results

    def reset(
        self,
        slots: Sequence[int],
        tasks: Sequence[str],
        seeds: Sequence[int],
        options: Sequence[dict[str, Any]] | None = None,
    ) -> list[StepResult | EnvFailure]:
        """Start one episode per slot; `options` (one dict per slot) add to the pool's `reset_options`."""
        per_slot = options or [{}] * len(slots)
        calls = [
            (s, "reset", {"seed": seed, "task_name": t, **self.reset_options, **o})
            for s, t, seed, o in zip(slots, tasks, seeds, per_slot)
        ]
        return self._gather(calls)

    def step(self, slots: Sequence[int], actions: Sequence[str]) -> list[StepResult | EnvFailure]:
        calls = [(s, "step", {"action": BrowserGymAction(action_str=a)}) for s, a in zip(slots, actions)]
        return self._gather(calls)

    def resize(self, size: int) -> None:
        """Play on `size` sessions from now on: added ones open at their first use, those beyond close."""
        self._drop_all(range(size, self.size))
        self._clients = self._clients[:size] + [None] * (size - self.size)
        self.size = size

    def release(self) -> None:
        """Close every session; each reopens at its next use. Idle sessions still take CPU: 8 of them
        ~0.1 of a core (an SFT warm-up releases the sessions its demonstrations played on)."""
        self._drop_all(range(self.size))

    def _drop_all(self, slots: Sequence[int]) -> None:
        async def drop() -> None:
            await asyncio.gather(*(self._drop(i) for i in slots))

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout=30)

    def close(self) -> None:
        self._drop_all(range(self.size))
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


@contextlib.contextmanager
def env_pool(env: EnvSettings, sessions: int | None = None, **reset_options: Any) -> Iterator[EnvPool]:
    """`sessions` (default `env.sessions`) sessions on a local server started for this block (restarted if
    it dies, so a dead server costs episodes, not the run) or on running ones at `env.urls` (`env=remote`,
    spread over the processes of a multi-process run by RANK and WORLD_SIZE). A session opens at its first
    use.

    `reset_options` go with every reset (`screenshot=True`); per-task options come with each episode.
    """
    sessions = sessions or env.sessions
    with contextlib.ExitStack() as stack:
        if env.mode == "remote":
            rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
            route, heal = routes(env.urls, rank, world), None
        else:
            from browserrl.env.launcher import LocalEnvServer

            server = stack.enter_context(
                LocalEnvServer(
                    task=env.task,
                    max_sessions=max(env.capacity, sessions + 2),  # a pool larger than the run's
                    idle_timeout_s=env.idle_timeout_s,
                    start_timeout_s=env.start_timeout_s,
                )  # each episode's cap goes with its reset (the server truncates where the rollout stops)
            )

            def route(slot: int) -> list[str]:
                return [server.url]

            def heal() -> None:
                if not server.is_alive():
                    log.warning("env server died; restarting it (failed episodes count as env_errors)")
                    server.restart()

        pool = EnvPool(route, sessions, env.message_timeout_s, heal, reset_options)
        stack.callback(pool.close)
        yield pool
