"""Typed async client of the env server (an openenv ``EnvClient``); also talks to OpenEnv's BrowserGym Space.

    async with BrowserGymEnv(base_url="http://127.0.0.1:8000") as env:
        r = await env.reset(seed=3, task_name="click-test")
        r = await env.step(BrowserGymAction(action_str="click('13')"))

``BrowserGymEnv(base_url=...).sync()`` gives the same methods without ``await``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from websockets.exceptions import ConnectionClosed

from browserrl.env.models import BrowserGymAction, BrowserGymObservation, BrowserGymState


class EnvServerRefused(RuntimeError):
    """The server answered a request with an error (``code``: e.g. CAPACITY_REACHED, EXECUTION_ERROR)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(f"env server error {code}: {message}")
        self.code = code


class BrowserGymEnv(EnvClient[BrowserGymAction, BrowserGymObservation, BrowserGymState]):
    """One WebSocket session = one browser on the server, kept across resets."""

    def _step_payload(self, action: BrowserGymAction) -> dict[str, Any]:
        return {"action_str": action.action_str, "metadata": action.metadata}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[BrowserGymObservation]:
        obs = dict(payload.get("observation") or {})
        known = BrowserGymObservation.model_fields
        fields = {k: v for k, v in obs.items() if k in known and k not in ("done", "reward")}
        observation = BrowserGymObservation(
            **fields, done=bool(payload.get("done", False)), reward=payload.get("reward")
        )
        return StepResult(
            observation=observation, reward=payload.get("reward"), done=bool(payload.get("done", False))
        )

    def _parse_state(self, payload: dict[str, Any]) -> BrowserGymState:
        return BrowserGymState.model_validate(payload)

    async def _send_and_receive(self, message: dict[str, Any]) -> dict[str, Any]:
        """As openenv's, but server errors raise :class:`EnvServerRefused` carrying the error code (openenv
        private methods, browserrl.env.compat.OPENENV_CLIENT_METHODS)."""
        # A refused session is closed before our message arrives; the server's reason is still queued.
        with contextlib.suppress(ConnectionClosed):
            await self._send(message)
        response = await self._receive()
        if response.get("type") == "error":
            data = response.get("data") or {}
            raise EnvServerRefused(
                str(data.get("message", "unknown error")), str(data.get("code", "UNKNOWN"))
            )
        return response
