"""MiniWoB++ in a real headless Chromium, as an OpenEnv ``Environment``: one browser per session.

Why not ``gym.make("browsergym/miniwob.*")``: BrowserGym relaunches Chromium (and a chat window) at every
reset, waits 0.5 s before every observation, takes a screenshot, a DOM snapshot and the AX tree each call,
and runs Playwright with a 100 ms ``slow_mo``. Here the browser lives as long as the session, a reset
navigates the session's page to a new task instance, and an observation extracts only the AX tree (plus
pruned HTML and a PNG screenshot when asked). What decides the episode is still BrowserGym's: its MiniWoB
task classes set the page up and validate it, its bid marking and AX-tree flattening make the text, and
its action functions act on the page.

All Playwright calls of one environment run on one private thread: Playwright's sync API is bound to the
thread that started it, and openenv may call ``close()`` from another thread (HTTP endpoints, reaper).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from browsergym.core.action.highlevel import HighLevelActionSet
from browsergym.core.constants import BROWSERGYM_ID_ATTRIBUTE
from browsergym.core.observation import MarkingError, extract_dom_snapshot, extract_merged_axtree
from browsergym.miniwob.base import AbstractMiniwobTask
from browsergym.utils.obs import flatten_axtree_to_str, flatten_dom_to_str, prune_html
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import EnvironmentMetadata
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from browserrl.env.actions import ACTION_FUNCTIONS, DEFAULT_ALLOWED, MAX_ACTION_LEN, ActionError, parse_action
from browserrl.env.compat import driver_process, mark_elements, unmark_elements
from browserrl.env.launcher import EnvSetupError, find_chromium, miniwob_base_url
from browserrl.env.models import (
    MAX_EPISODE_STEPS,
    MAX_OBSERVATION_DELAY,
    BrowserGymAction,
    BrowserGymObservation,
    BrowserGymState,
)
from browserrl.env.tasks import canonical_task, miniwob_tasks

log = logging.getLogger(__name__)

#: Chromium flags: nothing reaches out to the network (closed networks, reproducible pages); the
#: scrollbar flag and --hide-scrollbars removal match BrowserGym's own launch, so pages lay out the same.
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--disable-features=OverlayScrollbars,ExtendedOverlayScrollbars",
)
#: How long a task page may take to load (MiniWoB's task.timeout, 5 s, still bounds every action).
NAVIGATION_TIMEOUT_MS = 30_000
_TRANSIENT_MARKERS = (
    "Frame was detached",
    "Frame with the given frameId is not found",
    "Execution context was destroyed",
    "Frame has been detached",
    "Cannot mark a child frame without a bid",
    "Cannot read properties of undefined",
)


#: Every environment not yet closed, so a server can close them all at shutdown.
_LIVE: weakref.WeakSet[MiniWoBEnvironment] = weakref.WeakSet()


def close_all() -> None:
    """Close every live environment of this process (server shutdown)."""
    for env in list(_LIVE):
        env.close()


@dataclass(frozen=True)
class EnvConfig:
    """Server-side settings of all sessions. Clients pick the task, seed and screenshots, nothing else."""

    task: str = "click-test"
    #: Steps after which an unfinished episode ends with ``truncated`` (``done`` true, reward 0).
    max_steps: int = 20
    #: Seconds to wait after an action before validating and observing (BrowserGym waits 0.5 s). The
    #: default 0 is checked against 0.5 by ``benchmarks/bench_env.py --delay-check``: same rewards on simple
    #: tasks. Pages with debounced widgets (book-flight's autocomplete) need more: clients ask for it per
    #: episode with ``reset(observation_delay=...)``.
    pre_observation_delay: float = 0.0
    #: Attach a PNG screenshot to every observation (clients can also ask per reset or per step).
    screenshot: bool = False
    #: Fill ``pruned_html`` (costs a DOM snapshot per observation).
    pruned_html: bool = False
    allowed_actions: frozenset[str] = DEFAULT_ALLOWED
    max_action_len: int = MAX_ACTION_LEN
    #: New browser context and page per episode instead of re-navigating the session's page (slower; the
    #: MiniWoB pages keep no cookies or storage, so reuse gives the same pages).
    fresh_context: bool = False
    chromium: str | None = None
    miniwob_url: str | None = None
    #: Limits live browsers across all sessions and HTTP calls of a server (None: no limit).
    browser_slots: threading.BoundedSemaphore | None = field(default=None, compare=False)


@functools.cache
def _action_code(allowed: frozenset[str]) -> Any:
    """BrowserGym's own source of the allowed action functions, compiled once per allowed set."""
    action_set = HighLevelActionSet(
        subsets=["custom"],
        custom_actions=[ACTION_FUNCTIONS[n] for n in sorted(allowed)],
        multiaction=False,
        demo_mode="off",
    )
    return compile(action_set.python_includes, "<browsergym-actions>", "exec")


def _no_chat(_: str) -> None:
    raise ActionError("there is no chat in this environment")


def _short_error(exc: BaseException) -> str:
    """First line of an exception, bounded for the policy's prompt, plus the reason from Playwright's call
    log when it gives one (a read-only box: "element is not editable"; a covered one: "... intercepts
    pointer events")."""
    lines = [line.strip(" -") for line in str(exc).strip().splitlines()] or [""]
    reasons = [line for line in lines[1:] if line.startswith("element is") or "intercepts pointer" in line]
    reason = f" ({reasons[-1]})" if reasons else ""
    return f"{type(exc).__name__}: {lines[0]}{reason}"[:300]


class MiniWoBEnvironment(Environment[BrowserGymAction, BrowserGymObservation, BrowserGymState]):
    """One session: a Chromium that lives as long as the session, one MiniWoB episode at a time."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, config: EnvConfig | None = None) -> None:
        super().__init__()
        self.config = config or EnvConfig()
        canonical_task(self.config.task)
        self._lock = threading.Lock()
        self._worker: ThreadPoolExecutor | None = None
        self._closed = False
        self._has_slot = False
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None
        self._task: AbstractMiniwobTask | None = None
        self._actions: dict[str, Any] = {}
        self._screenshot = self.config.screenshot
        self._delay = self.config.pre_observation_delay
        self._last: BrowserGymObservation | None = None
        self._state = BrowserGymState(
            task_name=canonical_task(self.config.task), max_steps=self.config.max_steps
        )
        _LIVE.add(self)

    # ----------------------------------------------------------------- openenv API (any thread)

    def reset(
        self,
        seed: int | None = None,
        episode_id: str | None = None,
        task_name: str | None = None,
        screenshot: bool | None = None,
        observation_delay: float | None = None,
        max_steps: int | None = None,
        **_: Any,
    ) -> BrowserGymObservation:
        """Start an episode: ``task_name`` switches the session's task, the same seed gives the same page.

        ``screenshot``, ``observation_delay`` (seconds between an action and the observation, for pages
        whose widgets answer late, like book-flight's autocomplete) and ``max_steps`` (the episode's cap,
        when tasks of one run need different ones) hold for this episode only.
        """
        if observation_delay is not None and not 0 <= observation_delay <= MAX_OBSERVATION_DELAY:
            raise ValueError(f"observation_delay: {observation_delay} is not in [0, {MAX_OBSERVATION_DELAY}]")
        if max_steps is not None and not (isinstance(max_steps, int) and 1 <= max_steps <= MAX_EPISODE_STEPS):
            raise ValueError(f"max_steps: {max_steps!r} is not an integer in [1, {MAX_EPISODE_STEPS}]")
        return self._run(self._reset, seed, episode_id, task_name, screenshot, observation_delay, max_steps)

    def step(
        self, action: BrowserGymAction, timeout_s: float | None = None, **_: Any
    ) -> BrowserGymObservation:
        """Run one action; refusals and failures come back as error observations, never as exceptions."""
        return self._run(self._step, action)

    @property
    def state(self) -> BrowserGymState:
        return self._state

    def get_metadata(self) -> EnvironmentMetadata:
        return EnvironmentMetadata(
            name="browserrl-miniwob",
            description="MiniWoB++ (BrowserGym) in headless Chromium; actions are BrowserGym calls on bids",
            version="1.0",
        )

    def close(self) -> None:
        """Close the browser (on its own thread); safe from any thread, idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker, self._worker = self._worker, None
        _LIVE.discard(self)
        if worker is None:
            return
        try:
            worker.submit(self._teardown).result(timeout=20)
        except Exception as e:  # noqa: BLE001 - last resort below kills the driver, which ends the browser
            log.warning("browser teardown failed (%s); killing the Playwright driver", _short_error(e))
            self._kill_driver()
        worker.shutdown(wait=False)

    def _run(self, fn: Callable[..., BrowserGymObservation], *args: Any) -> BrowserGymObservation:
        with self._lock:
            if self._closed:
                raise RuntimeError(
                    "this env session was closed (idle timeout or server shutdown); open a new one"
                )
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="browser")
            worker = self._worker
        return worker.submit(fn, *args).result()

    # ----------------------------------------------------------------- browser thread only

    def _ensure_browser(self) -> Browser:
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        self._teardown()
        slots = self.config.browser_slots
        if slots is not None:
            if not slots.acquire(timeout=10):
                raise RuntimeError("env server at capacity: every browser slot is in use")
            self._has_slot = True
        chromium = self.config.chromium or find_chromium()
        self._pw = sync_playwright().start()
        self._pw.selectors.set_test_id_attribute(BROWSERGYM_ID_ATTRIBUTE)
        try:
            self._browser = self._pw.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=list(CHROMIUM_ARGS),
                ignore_default_args=["--hide-scrollbars"],
            )
        except PlaywrightError as e:
            self._teardown()
            raise EnvSetupError(
                f"Chromium at {chromium} failed to start ({_short_error(e)}); "
                "reinstall it with `apt-get install chromium`"
            ) from None
        self._actions = {
            "page": None,
            "send_message_to_user": _no_chat,
            "report_infeasible_instructions": _no_chat,
            "DEMO_MODE": False,
        }
        exec(_action_code(self.config.allowed_actions), self._actions)  # BrowserGym's code, never model text
        return self._browser

    def _fresh_page(self, task: AbstractMiniwobTask) -> Page:
        browser = self._ensure_browser()
        if self.config.fresh_context or self._context is None or self._page is None or self._page.is_closed():
            if self._context is not None:
                self._context.close()
            self._context = browser.new_context(
                viewport=task.viewport, locale=task.locale, timezone_id=task.timezone_id
            )
            self._context.set_default_timeout(task.timeout)
            # Loading the task's page gets longer than its actions: a local file, but 16+ sessions
            # launching Chromium at once on 2 cores took over 5 s to load it.
            self._context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
            self._page = self._context.new_page()
        else:
            for page in self._context.pages:  # tabs left by the previous episode (only if tabs are allowed)
                if page != self._page:
                    page.close()
            if self._page.viewport_size != task.viewport:
                self._page.set_viewport_size(task.viewport)
        return self._page

    def _reset(
        self,
        seed: int | None,
        episode_id: str | None,
        task_name: str | None,
        screenshot: bool | None,
        observation_delay: float | None,
        max_steps: int | None,
    ) -> BrowserGymObservation:
        t0 = time.perf_counter()
        name = canonical_task(task_name or self._state.task_name)
        seed = random.randrange(2**31) if seed is None else int(seed)
        base_url = self.config.miniwob_url or miniwob_base_url()
        task = miniwob_tasks()[name](seed=seed, base_url=base_url)
        page = self._fresh_page(task)
        self._task = None
        goal, _ = task.setup(page)
        self._task = task
        self._screenshot = self.config.screenshot if screenshot is None else bool(screenshot)
        self._delay = self.config.pre_observation_delay if observation_delay is None else observation_delay
        self._state = BrowserGymState(
            episode_id=episode_id or str(uuid4()),
            step_count=0,
            task_name=name,
            goal=str(goal),
            current_url=page.url,
            max_steps=max_steps or self.config.max_steps,
            seed=seed,
        )
        t1 = time.perf_counter()
        self._last = self._observation(reward=0.0, raw_reward=0.0, shot=self._screenshot, action_s=t1 - t0)
        return self._last

    def _step(self, action: BrowserGymAction) -> BrowserGymObservation:
        if self._task is None or self._page is None or self._last is None:
            return self._error("no episode is running: call reset() first", done=True)
        if self._state.done:
            return self._error("the episode is over: call reset() to start a new one", done=True)
        self._state.step_count += 1
        shot = self._screenshot or bool(action.metadata.get("screenshot"))
        t0 = time.perf_counter()
        try:
            parsed = parse_action(action.action_str, self.config.allowed_actions, self.config.max_action_len)
        except ActionError as e:
            return self._error(str(e), done=self._truncate(), shot=shot)
        error = ""
        self._actions["page"] = self._page
        try:
            self._actions[parsed.name](*parsed.args, **parsed.kwargs)
        except Exception as e:  # noqa: BLE001 - a failing action is reported to the policy, the episode goes on
            error = _short_error(e)
        self._page = self._actions["page"]  # tab actions may switch the active page
        try:
            if self._delay > 0:
                self._page.wait_for_timeout(self._delay * 1000)
            self._page.wait_for_load_state("domcontentloaded", timeout=3000)
            reward, done, _, info = self._task.validate(self._page, [])
        except PlaywrightError as e:
            self._state.done = True
            return self._error(f"the page broke: {_short_error(e)}", done=True)
        raw_reward = float(info.get("RAW_REWARD_GLOBAL") or 0.0)
        self._state.done = bool(done) or self._truncate()
        self._state.cum_reward += float(reward)
        t1 = time.perf_counter()
        self._last = self._observation(
            reward=float(reward), raw_reward=raw_reward, shot=shot, action_s=t1 - t0, error=error
        )
        return self._last

    def _truncate(self) -> bool:
        """Mark the episode truncated when this step reached max_steps (and it is not already over)."""
        if not self._state.done and self._state.step_count >= self._state.max_steps:
            self._state.done = self._state.truncated = True
        return self._state.done

    def _extract(self, page: Page) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """AX tree (and DOM snapshot if pruned HTML is on), retried like BrowserGym on transient errors."""
        tries = 3
        for attempt in range(tries):
            try:
                mark_elements(page, lenient=attempt == tries - 1)
                axtree = extract_merged_axtree(page)
                dom = extract_dom_snapshot(page) if self.config.pruned_html else None
                return axtree, dom
            except (PlaywrightError, MarkingError) as e:
                if attempt == tries - 1 or not any(m in str(e) for m in _TRANSIENT_MARKERS):
                    raise
                page.wait_for_timeout(100)
            finally:
                with contextlib.suppress(PlaywrightError):
                    unmark_elements(page)
        raise AssertionError("unreachable")

    def _observation(
        self, reward: float, raw_reward: float, shot: bool, action_s: float, error: str = ""
    ) -> BrowserGymObservation:
        assert self._page is not None
        t0 = time.perf_counter()
        axtree, dom = self._extract(self._page)
        axtree_txt = flatten_axtree_to_str(axtree)
        screenshot = base64.b64encode(self._page.screenshot(type="png")).decode("ascii") if shot else None
        self._state.current_url = self._page.url
        return BrowserGymObservation(
            text=axtree_txt,
            url=self._page.url,
            goal=self._state.goal,
            axtree_txt=axtree_txt,
            pruned_html=prune_html(flatten_dom_to_str(dom)) if dom is not None else "",
            screenshot=screenshot,
            error=error,
            last_action_error=bool(error),
            done=self._state.done,
            reward=reward,
            metadata=self._metadata(raw_reward, action_s, time.perf_counter() - t0),
        )

    def _metadata(self, raw_reward: float, action_s: float, observe_s: float) -> dict[str, Any]:
        return {
            "task_name": self._state.task_name,
            "seed": self._state.seed,
            "episode_id": self._state.episode_id,
            "step": self._state.step_count,
            "raw_reward": raw_reward,
            "truncated": self._state.truncated,
            "timing": {"action_s": round(action_s, 4), "observe_s": round(observe_s, 4)},
        }

    def _error(self, message: str, done: bool, shot: bool = False) -> BrowserGymObservation:
        """Error observation: the last page view (the page did not change), the error, reward 0."""
        last = self._last or BrowserGymObservation()
        screenshot = None
        if shot and self._page is not None and not self._page.is_closed():
            screenshot = base64.b64encode(self._page.screenshot(type="png")).decode("ascii")
        return last.model_copy(
            update={
                "error": message,
                "last_action_error": True,
                "reward": 0.0,
                "done": done,
                "screenshot": screenshot,
                "metadata": self._metadata(0.0, 0.0, 0.0),
            }
        )

    def _teardown(self) -> None:
        """Close context, browser and Playwright (each best effort) and give the browser slot back."""
        for close in (
            self._context.close if self._context else None,
            self._browser.close if self._browser else None,
            self._pw.stop if self._pw else None,
        ):
            if close is not None:
                try:
                    close()
                except Exception as e:  # noqa: BLE001 - a crashed browser cannot be closed politely
                    log.debug("teardown step failed: %s", _short_error(e))
        self._context = self._browser = self._pw = self._page = self._task = None  # type: ignore[assignment]
        if self._has_slot and self.config.browser_slots is not None:
            self.config.browser_slots.release()
            self._has_slot = False

    def _kill_driver(self) -> None:
        """Kill the Playwright driver process; Chromium exits when its control pipe closes."""
        proc = driver_process(self._pw)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
