"""A task's settings as the layers below the build read them: typed, frozen, made once from the validated
config (browserrl.config.task_configs). The rollout engine, the prompts and the oracle take these, not a
DictConfig: they cannot write into the run's config, and a misspelt setting fails where it is made, not
deep in an episode.
"""

from __future__ import annotations

import dataclasses
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
