"""The env's uses of other libraries' private APIs, in one place, each with the versions it was checked
against. tests/test_compat.py fails when an installed version leaves its range or a name used here moves;
then re-read the library's source and update the range. (The env folder ships alone, so the trainer side
keeps its own in browserrl/compat.py.)

- browsergym's `_pre_extract` / `_post_extract`: BrowserGym marks every element with its bid before it reads
  the AX tree, and unmarks after. Its public `extract_*` helpers need the marks; its env does this inside
  `step`, which the server does not use (one Playwright page per session, no gym env).
- Playwright's driver process (`driver_process`): a session whose browser hangs is ended by killing the
  driver; Chromium exits when its control pipe closes. Playwright has no public handle on the driver.
- openenv's EnvClient `_send` / `_receive`: browserrl.env.client overrides `_send_and_receive` so a server's
  error reply raises with its error code (openenv's raises a bare RuntimeError).
"""

from __future__ import annotations

import asyncio.subprocess
from typing import Any

from browsergym.core.observation import _post_extract, _pre_extract

#: package -> (the version this was read against, the range it is taken to hold for).
TESTED = {
    "browsergym-core": ("0.14.3", ">=0.14,<0.15"),  # pyproject pins browsergym-miniwob <0.15
    "playwright": ("1.44.0", ">=1.44,<1.45"),  # browsergym-core 0.14 pins playwright==1.44
    "openenv-core": ("0.3.0", ">=0.3,<0.4"),
}

#: openenv.core.EnvClient's private coroutines browserrl.env.client uses or overrides.
OPENENV_CLIENT_METHODS = ("_send", "_receive", "_send_and_receive")

__all__ = [
    "OPENENV_CLIENT_METHODS",
    "TESTED",
    "driver_process",
    "mark_elements",
    "unmark_elements",
]


def mark_elements(page: Any, lenient: bool) -> None:
    """Give every element its bid attribute (what the AX tree and actions name); `lenient`: skip frames
    that cannot be marked rather than raise (BrowserGym's last retry)."""
    _pre_extract(page, tags_to_mark="standard_html", lenient=lenient)


def unmark_elements(page: Any) -> None:
    _post_extract(page)


def driver_process(playwright: Any) -> asyncio.subprocess.Process | None:
    """The Playwright driver's process (asyncio's, with `kill()`) behind a started `sync_playwright()`, or
    None if it cannot be found."""
    connection = getattr(getattr(playwright, "_impl_obj", None), "_connection", None)
    return getattr(getattr(connection, "_transport", None), "_proc", None)
