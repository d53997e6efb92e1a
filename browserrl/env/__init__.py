"""MiniWoB++ (BrowserGym) environment served over OpenEnv: wire types, client, local launcher.

The server side (:mod:`browserrl.env.environment`, :mod:`browserrl.env.server`) imports Playwright and
BrowserGym; importing this package does not.
"""

from browserrl.env.client import BrowserGymEnv, EnvServerRefused
from browserrl.env.launcher import (
    EnvServerError,
    EnvSetupError,
    LocalEnvServer,
    check_env_url,
    find_chromium,
    miniwob_base_url,
    preflight,
)
from browserrl.env.models import BrowserGymAction, BrowserGymObservation, BrowserGymState

__all__ = [
    "BrowserGymAction",
    "BrowserGymEnv",
    "BrowserGymObservation",
    "BrowserGymState",
    "EnvServerError",
    "EnvServerRefused",
    "EnvSetupError",
    "LocalEnvServer",
    "check_env_url",
    "find_chromium",
    "miniwob_base_url",
    "preflight",
]
