"""MiniWoB++ task names: BrowserGym's task classes, and the one normaliser every caller uses.

Importing BrowserGym's MiniWoB registry takes under a second and starts no browser, so config checks use
the same list the server plays from.
"""

from __future__ import annotations

import difflib
import functools

from browsergym.miniwob.base import AbstractMiniwobTask


@functools.cache
def miniwob_tasks() -> dict[str, type[AbstractMiniwobTask]]:
    """BrowserGym's MiniWoB++ task classes by name (``click-test``, ``book-flight``, ...)."""
    from browsergym.miniwob import ALL_MINIWOB_TASKS

    return {cls.subdomain: cls for cls in ALL_MINIWOB_TASKS}


def canonical_task(name: str) -> str:
    """``click-test``, ``miniwob.click-test`` and ``browsergym/miniwob.click-test`` -> ``click-test``.

    Raises ValueError naming similar tasks when there is no such task.
    """
    short = str(name).strip().removeprefix("browsergym/").removeprefix("miniwob.")
    if short not in miniwob_tasks():
        close = difflib.get_close_matches(short, list(miniwob_tasks()), n=5, cutoff=0.6)
        hint = f" (similar: {', '.join(close)})" if close else " (e.g. click-test, click-button, book-flight)"
        raise ValueError(f"no MiniWoB++ task named {name!r}{hint}")
    return short
