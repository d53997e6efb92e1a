"""Wire types of the BrowserGym environment, field-compatible with OpenEnv's public ``browsergym_env``.

A client written for OpenEnv's BrowserGym server reads these observations, and this project's client
reads theirs: same field names, and ``metadata`` travels inside the observation dict (openenv's
serializer would otherwise drop it, and their client looks for it there).
"""

from __future__ import annotations

from typing import Any

from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

#: Upper bound of the per-episode ``observation_delay`` a client may ask for at reset, in seconds.
MAX_OBSERVATION_DELAY = 2.0
#: Upper bound of the per-episode ``max_steps`` a client may ask for at reset.
MAX_EPISODE_STEPS = 100


class BrowserGymAction(Action):
    """One BrowserGym action string, e.g. ``click('13')``.

    ``metadata`` may carry ``{"screenshot": true}`` to get a PNG screenshot with this step's observation.
    """

    action_str: str = Field(..., description="BrowserGym action call, e.g. click('13') or fill('7', 'Paris')")


class BrowserGymObservation(Observation):
    """What the policy sees after a reset or a step.

    ``metadata`` holds ``raw_reward`` (MiniWoB's raw reward, > 0 means solved), ``step``, ``truncated``,
    ``task_name``, ``seed``, ``episode_id`` and ``timing`` (seconds spent in the action and the observation).
    """

    text: str = Field(default="", description="Text view of the page (the accessibility tree)")
    url: str = Field(default="", description="URL of the active page")
    screenshot: str | list[list[list[int]]] | None = Field(
        default=None,
        description="Base64 PNG when requested (OpenEnv's server sends a [h][w][rgb] int array instead)",
    )
    goal: str = Field(default="", description="Task instruction of the episode")
    axtree_txt: str = Field(default="", description="Accessibility tree as text, elements tagged [bid]")
    pruned_html: str = Field(default="", description="Pruned HTML (empty unless the server enables it)")
    error: str = Field(default="", description="Why the last action failed or was refused")
    last_action_error: bool = Field(
        default=False, description="Whether the last action failed or was refused"
    )

    @model_serializer(mode="wrap")
    def _keep_metadata(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        """Serialize normally, but keep metadata even when openenv's serializer excludes it."""
        data = handler(self)
        data.setdefault("metadata", self.metadata)
        return data


class BrowserGymState(State):
    """Episode state (``GET /state``, WebSocket ``state``): OpenEnv's field names plus extras."""

    benchmark: str = Field(default="miniwob", description="Benchmark of the task")
    task_name: str = Field(default="", description="MiniWoB task, e.g. click-test")
    task_id: str | None = Field(default=None, description="Unused for MiniWoB; kept for compatibility")
    goal: str = Field(default="", description="Task instruction")
    current_url: str = Field(default="", description="URL of the active page")
    max_steps: int | None = Field(default=None, description="Steps after which the episode is truncated")
    cum_reward: float = Field(default=0.0, description="Sum of rewards in this episode")
    seed: int | None = Field(default=None, description="MiniWoB seed of this episode")
    done: bool = Field(default=False, description="Whether the episode is over")
    truncated: bool = Field(default=False, description="Whether it ended by reaching max_steps")
