"""Settings as the layers below the build read them: typed, frozen, made once from the validated config. The
rollout engine, the prompts and the oracle take a task's (`TaskSettings`, from browserrl.config.task_configs),
the env pool its sessions' (`EnvSettings`, from browserrl.build.env_pool), not a DictConfig: they cannot
write into the run's config, and a misspelt setting fails where it is made, not deep in an episode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class PromptSettings:
    """How a page becomes a user turn (browserrl.prompts); the defaults are conf/task/click-test.yaml's, so a
    run saved before an option existed reads as it played."""

    system: str | None = None  # None: browserrl.prompts.DEFAULT_SYSTEM_PROMPT
    worked_example: bool = True
    max_axtree_chars: int = 3000
    compact: bool = False
    bid_after_name: bool = False
    name_target: bool = False
    max_error_chars: int = 200


@dataclass(frozen=True)
class TaskSettings:
    """One task's episode: its cap in env steps, tokens per model turn, action set, observation delay and
    prompt."""

    name: str
    max_env_steps: int
    max_action_tokens: int
    allowed_actions: tuple[str, ...] | None = None  # None: the bid-based default subset (env/actions.py)
    observation_delay: float = 0.0
    prompt: PromptSettings = field(default_factory=PromptSettings)

    @classmethod
    def from_config(cls, task: DictConfig | dict[str, Any]) -> TaskSettings:
        """From a task's config section (conf/task/*.yaml, merged); TypeError names an unknown setting."""
        fields = OmegaConf.to_container(task, resolve=True) if isinstance(task, DictConfig) else dict(task)
        prompt = PromptSettings(**(fields.pop("prompt", None) or {}))
        allowed = fields.pop("allowed_actions", None)
        return cls(**fields, allowed_actions=tuple(allowed) if allowed else None, prompt=prompt)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (a cache key, a record)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EnvSettings:
    """Where a run's env sessions come from (conf/env/*.yaml): a local server started for the run, serving
    `task` by default with room for `capacity` sessions, or the running servers at `urls`."""

    mode: str  # local | remote
    urls: tuple[str, ...]
    sessions: int
    capacity: int
    task: str
    message_timeout_s: float
    idle_timeout_s: float = 900.0  # these two serve a local server only (conf/env/local.yaml sets them); the
    start_timeout_s: float = 90.0  # defaults are browserrl.env.launcher.LocalEnvServer's

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EnvSettings:
        """From a validated run config: `env.*`, and the task a local server opens on. Its capacity covers
        the larger of the training and the evaluation pools, plus 2 for a dropped session that lingers."""
        env = cfg.env
        return cls(
            mode=env.mode,
            urls=server_urls(env.get("url")),
            sessions=env.sessions,
            capacity=max(env.sessions, cfg.eval.sessions) + 2,
            task=cfg.task.name,
            message_timeout_s=env.message_timeout_s,
            **{k: env[k] for k in ("idle_timeout_s", "start_timeout_s") if k in env},
        )


def server_urls(url: str | Sequence[str] | None) -> tuple[str, ...]:
    """`env.url` as a tuple: one server URL, or several."""
    return (url,) if isinstance(url, str) else tuple(url or ())
