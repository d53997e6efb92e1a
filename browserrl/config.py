"""Check a composed config in seconds, before any model or browser starts, naming the key and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from trl import GRPOConfig

from browserrl import rewards
from browserrl.env.launcher import EnvSetupError, check_env_url, miniwob_base_url, preflight
from browserrl.env.models import MAX_OBSERVATION_DELAY
from browserrl.modeling import lora_config
from browserrl.oracle import ORACLE_TASKS


class ConfigError(ValueError):
    """A bad setting: `key` is the dotted config key, the message says what to do."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def miniwob_task(name: str) -> str:
    """`click-test` or `miniwob.click-test` -> `click-test`, if the MiniWoB++ bundle has that page."""
    short = name.removeprefix("miniwob.")
    try:
        base = miniwob_base_url()
    except EnvSetupError as exc:
        raise ConfigError("task.name", str(exc)) from exc
    if not base.startswith("file://"):
        return short  # pages served over http: the env server will say if the task is unknown
    pages = Path(base.removeprefix("file://"))
    if not (pages / f"{short}.html").exists():
        family = short.split("-")[0]
        close = sorted(p.stem for p in pages.glob(f"{family}-*.html"))
        hint = f" (similar: {', '.join(close[:8])})" if close else ""
        raise ConfigError("task.name", f"no MiniWoB++ task named {name!r}{hint}")
    return short


def check_trainer(cfg: DictConfig) -> GRPOConfig:
    """Build GRPOConfig from `cfg.trainer`, turning an unknown field into an error that names it."""
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(set(cfg.trainer) - fields)
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]}", "not a trl.GRPOConfig field")
    try:
        return GRPOConfig(
            **OmegaConf.to_container(cfg.trainer, resolve=True), output_dir="unused", report_to=[]
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError("trainer", str(exc)) from exc


def check_lora(cfg: DictConfig) -> None:
    if cfg.tuning.name != "lora":
        return
    r, alpha, dropout = cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout
    if not isinstance(r, int) or r <= 0:
        raise ConfigError("lora.r", f"must be a positive integer, got {r!r}")
    if alpha <= 0:
        raise ConfigError("lora.alpha", f"must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ConfigError("lora.dropout", f"must be in [0, 1), got {dropout!r}")
    try:
        lora_config(cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError("lora", str(exc)) from exc


def check_delay(key: str, seconds: float) -> None:
    """An observation delay the env server accepts at reset (it refuses others)."""
    if not 0 <= seconds <= MAX_OBSERVATION_DELAY:
        raise ConfigError(key, f"must be in [0, {MAX_OBSERVATION_DELAY}] seconds")


def check_sft(cfg: DictConfig) -> None:
    if not cfg.sft.enabled:
        return
    unknown = [task for task in cfg.sft.tasks if task not in ORACLE_TASKS]
    if unknown:
        oracles = ", ".join(ORACLE_TASKS)
        raise ConfigError("sft.tasks", f"no scripted oracle for {unknown}; there is one for {oracles}")
    check_delay("sft.observation_delay", cfg.sft.observation_delay)


def check_env(cfg: DictConfig) -> None:
    if cfg.env.mode == "local":
        try:
            preflight()
        except EnvSetupError as exc:
            raise ConfigError("env.mode", f"{exc}; or use a running server: env=remote env.url=...") from exc
    elif cfg.env.mode == "remote":
        try:
            check_env_url(cfg.env.url, timeout=5)
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
            raise ConfigError(
                "env.url", f"nothing answers at {cfg.env.url} ({exc}); start a server (make serve-env)"
            ) from exc
    else:
        raise ConfigError("env.mode", f"must be local or remote, got {cfg.env.mode!r}")


def validate(cfg: DictConfig) -> GRPOConfig:
    """All checks that need no model; returns the GRPOConfig they built."""
    OmegaConf.resolve(cfg)  # a missing mandatory value (???) fails here, with its key
    miniwob_task(cfg.task.name)
    if cfg.task.max_steps < 1:
        raise ConfigError("task.max_steps", "must be >= 1")
    check_delay("task.observation_delay", cfg.task.observation_delay)
    check_lora(cfg)
    check_sft(cfg)
    try:
        rewards.select(dict(cfg.rewards))
    except ValueError as exc:
        raise ConfigError("rewards", str(exc)) from exc
    trainer = check_trainer(cfg)
    if cfg.env.sessions < 1:
        raise ConfigError("env.sessions", "must be >= 1")
    if cfg.model.source in ("hub", "path") and not cfg.model.get("name_or_path"):
        raise ConfigError("model.name_or_path", f"model.source={cfg.model.source} needs a hub id or a folder")
    if cfg.model.source == "path" and not Path(cfg.model.name_or_path, "config.json").exists():
        raise ConfigError("model.name_or_path", f"no model folder (config.json) at {cfg.model.name_or_path}")
    if cfg.model.source == "packaged":
        from browserrl.modeling import packaged_gguf_dir

        try:
            packaged_gguf_dir()
        except RuntimeError as exc:
            raise ConfigError("model", str(exc)) from exc
    check_env(cfg)
    return trainer
