"""The composed config: each task's settings, and the checks that run in seconds, before any model or browser
starts, each failure naming its key and the fix: `validate` judges the settings, `preflight` what they need
of this machine (model files, Chromium, env servers)."""

from __future__ import annotations

import functools
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException
from trl import GRPOConfig, SFTConfig

from browserrl import rewards
from browserrl.curriculum import MODES
from browserrl.env.actions import fits_type, resolve_allowed
from browserrl.env.launcher import EnvSetupError, check_env_url
from browserrl.env.launcher import preflight as chromium_preflight
from browserrl.env.models import MAX_OBSERVATION_DELAY
from browserrl.env.tasks import canonical_task
from browserrl.modeling import SFT_DIR, bf16_faster, lora_config, max_positions
from browserrl.oracle import ORACLE_TASKS
from browserrl.settings import TaskSettings, server_urls


class ConfigError(ValueError):
    """A bad setting: `key` is the dotted config key, the message says what to do."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def merged_task(cfg: DictConfig, name: str) -> DictConfig:
    """One task's config section: `task`'s, with the task's own entry on top (a suite's episode caps, a
    conf/task file pulled in by a suite's defaults list), under that task's name. The entry is the suite's
    (`tasks`), else the transfer suite's (`transfer.tasks`), whose tasks are only evaluated."""
    entries = {**((cfg.get("transfer") or {}).get("tasks") or {}), **cfg.get("tasks", {})}
    if name == cfg.task.name and name not in entries:
        return cfg.task
    try:
        return OmegaConf.merge(cfg.task, entries.get(name, {}), {"name": name})
    except ConfigKeyError as exc:  # a setting no task has, in a suite's entry
        scope = "tasks" if name in cfg.get("tasks", {}) else "transfer.tasks"
        key = f"{scope}.{name}.{str(exc.full_key).removeprefix('task.')}"
        raise ConfigError(key, "not a task setting (conf/task/click-test.yaml lists them)") from None


def task_configs(cfg: DictConfig, names: list[str] | None = None) -> dict[str, TaskSettings]:
    """Settings by task name for `names` (default: the suite's tasks), as the rollout engine reads them."""
    return {name: TaskSettings.from_config(merged_task(cfg, name)) for name in names or cfg.suite.tasks}


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")


#: Task settings renamed since runs were saved: old name -> new name (a saved config.yaml is upgraded).
RENAMED_TASK_KEYS = {"max_steps": "max_env_steps"}


def task_entries(cfg: DictConfig) -> Iterator[tuple[str, DictConfig]]:
    """Every place task settings are written, unmerged, by key: `task`, `tasks.*`, `transfer.tasks.*`."""
    if cfg.get("task") is not None:
        yield "task", cfg.task
    for scope in ("tasks", "transfer.tasks"):
        for name, entry in (OmegaConf.select(cfg, scope) or {}).items():
            yield f"{scope}.{name}", entry


def upgrade_saved(cfg: DictConfig) -> DictConfig:
    """A run's saved config.yaml with today's names: a checkpoint trained before a rename still evaluates."""
    with open_dict(cfg):
        for _, task in task_entries(cfg):
            for old, new in RENAMED_TASK_KEYS.items():
                if old in task and new not in task:
                    task[new] = task.pop(old)
    return cfg


def check_names(key: str, task: DictConfig) -> None:
    """A task setting under a name it no longer has (before it is merged: merging would fail on it).
    max_steps: trainer.max_steps, beside it, counts optimizer steps."""
    for old, new in RENAMED_TASK_KEYS.items():
        if old in task:
            raise ConfigError(f"{key}.{old}", f"renamed: {key}.{new} (env steps per episode)")


def check_task(key: str, task: DictConfig) -> None:
    try:
        canonical_task(task.name)
    except ValueError as exc:
        raise ConfigError(f"{key}.name", str(exc)) from exc
    _positive_int(f"{key}.max_env_steps", task.max_env_steps)
    _positive_int(f"{key}.max_action_tokens", task.max_action_tokens)
    check_delay(f"{key}.observation_delay", task.observation_delay)
    if task.get("allowed_actions"):
        try:
            resolve_allowed(task.allowed_actions)
        except ValueError as exc:
            raise ConfigError(f"{key}.allowed_actions", str(exc)) from exc
    try:
        TaskSettings.from_config(task)
    except TypeError as exc:  # a setting no task has (its message names it)
        raise ConfigError(key, str(exc)) from exc


def check_delay(key: str, seconds: Any) -> None:
    """An observation delay the env server accepts at reset (it refuses others)."""
    if not fits_type(seconds, float) or not 0 <= seconds <= MAX_OBSERVATION_DELAY:
        raise ConfigError(
            key, f"must be a number of seconds in [0, {MAX_OBSERVATION_DELAY}], got {seconds!r}"
        )


def check_tasks(cfg: DictConfig) -> None:
    """The run's task, every suite and transfer task and every per-task entry: known to MiniWoB++, sane
    settings."""
    for key, entry in task_entries(cfg):
        check_names(key, entry)
    check_task("task", cfg.task)
    if not cfg.suite.tasks:
        raise ConfigError("suite.tasks", "lists no task")
    transfer = list(cfg.transfer.suite.tasks) if cfg.get("transfer") else []
    for key, names in (("suite.tasks", cfg.suite.tasks), ("transfer.suite.tasks", transfer)):
        for name in names:
            try:
                canonical_task(name)
            except ValueError as exc:
                raise ConfigError(key, str(exc)) from exc
    for name in (cfg.transfer.get("tasks") or {}) if transfer else {}:
        check_task(f"transfer.tasks.{name}", merged_task(cfg, name))
    for name, task in cfg.get("tasks", {}).items():
        if task.get("name", name) != name:
            raise ConfigError(f"tasks.{name}.name", f"must be {name!r} (the key), got {task.name!r}")
        check_task(f"tasks.{name}", merged_task(cfg, name))


@functools.cache
def _fields(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def check_fields(key: str, values: dict[str, Any], config_class: type) -> None:
    """Every key of a passed-through library config (trainer.*, sft.trainer.*) is a field of that class, of
    its type: a typo or a field a TRL release dropped fails here, before any model loads."""
    fields = _fields(config_class)
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"{key}.{name}", f"not a trl.{config_class.__name__} field")
        if not fits_type(value, fields[name]):
            expected = str(fields[name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise ConfigError(f"{key}.{name}", f"must be {expected}, got {value!r}")


def check_trainer(cfg: DictConfig) -> None:
    """Every trainer.* key is a GRPOConfig field of its type, and what the rollout reads is sane (the object
    itself is built by browserrl.build.grpo_config)."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_fields("trainer", trainer, GRPOConfig)
    check_generation(trainer)
    _positive_int("trainer.max_steps", trainer.get("max_steps"))  # training is counted in steps, not epochs
    _positive_int("trainer.max_completion_length", trainer.get("max_completion_length"))
    for key in ("temperature", "learning_rate"):
        if key in trainer and not trainer[key] > 0:
            raise ConfigError(f"trainer.{key}", f"must be > 0, got {trainer[key]!r}")


def check_precision(cfg: DictConfig) -> None:
    precision = cfg.infra.get("precision", "fp32")
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError("infra.precision", f"must be auto, bf16 or fp32, got {precision!r}")
    if "bf16" in cfg.trainer:
        raise ConfigError("trainer.bf16", "set by infra.precision (auto, bf16, fp32): use that instead")


def bf16_autocast(cfg: DictConfig) -> bool:
    """`infra.precision` (auto, bf16, fp32) as the trainer's autocast (GRPOConfig.bf16), which the sampler
    (HFGenerator) and the SFT warm-up follow. auto: bf16 where it is faster (modeling.bf16_faster, measured
    once per process). Read, never written into the config: a run records it (summary.json
    `precision/bf16`)."""
    precision = cfg.infra.get("precision", "fp32")
    return precision == "bf16" or (precision == "auto" and bf16_faster(bool(cfg.trainer.get("use_cpu"))))


def check_lora(cfg: DictConfig) -> None:
    if cfg.tuning.name != "lora":
        return
    _positive_int("lora.r", cfg.lora.r)
    if not fits_type(cfg.lora.lora_alpha, float) or cfg.lora.lora_alpha <= 0:
        raise ConfigError("lora.lora_alpha", f"must be > 0, got {cfg.lora.lora_alpha!r}")
    if not fits_type(cfg.lora.lora_dropout, float) or not 0 <= cfg.lora.lora_dropout < 1:
        raise ConfigError("lora.lora_dropout", f"must be in [0, 1), got {cfg.lora.lora_dropout!r}")
    try:
        lora_config(cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError("lora", str(exc)) from exc


def check_sft(cfg: DictConfig) -> None:
    if not cfg.sft.enabled:
        return
    unknown = [task for task in cfg.sft.tasks if task not in ORACLE_TASKS]
    if unknown:
        oracles = ", ".join(ORACLE_TASKS)
        raise ConfigError("sft.tasks", f"no scripted oracle for {unknown}; there is one for {oracles}")
    _positive_int("sft.episodes_per_task", cfg.sft.episodes_per_task)
    for task, episodes in cfg.sft.episodes_by_task.items():
        if task not in cfg.sft.tasks:
            raise ConfigError(f"sft.episodes_by_task.{task}", f"not one of sft.tasks {list(cfg.sft.tasks)}")
        _positive_int(f"sft.episodes_by_task.{task}", episodes)
    check_fields("sft.trainer", OmegaConf.to_container(cfg.sft.trainer, resolve=True), SFTConfig)


def check_grpo(cfg: DictConfig) -> None:
    """How a step draws its groups (browserrl.groups): sane numbers, an oracle for the expert."""
    g = cfg.grpo
    for key in ("dynamic_sampling", "expert", "guided"):
        if not isinstance(g[key], bool):
            raise ConfigError(f"grpo.{key}", f"must be true or false, got {g[key]!r}")
    if not fits_type(g.max_draws_per_group, float) or g.max_draws_per_group < 1:
        raise ConfigError("grpo.max_draws_per_group", f"must be a number >= 1, got {g.max_draws_per_group!r}")
    if g.task_sampling not in MODES:
        raise ConfigError("grpo.task_sampling", f"must be one of {', '.join(MODES)}, got {g.task_sampling!r}")
    _positive_int("grpo.sampling_window", g.sampling_window)
    if not fits_type(g.sampling_floor, float) or not 0 < g.sampling_floor <= 0.25:
        raise ConfigError("grpo.sampling_floor", f"must be in (0, 0.25], got {g.sampling_floor!r}")
    _positive_int("grpo.stop_after_idle_steps", g.stop_after_idle_steps, minimum=0)
    weight = g.expert_sft_weight
    if weight is not None:
        if not fits_type(weight, float) or weight <= 0:
            raise ConfigError("grpo.expert_sft_weight", f"must be null or a number > 0, got {weight!r}")
        if not g.expert:
            raise ConfigError("grpo.expert_sft_weight", "weighs the expert's episodes: set grpo.expert=true")
    if g.guided and not g.expert:
        raise ConfigError("grpo.guided", "replays the pages the expert showed: set grpo.expert=true")
    if g.expert:
        missing = [t for t in cfg.suite.tasks if t not in ORACLE_TASKS]
        if missing:
            raise ConfigError(
                "grpo.expert", f"no scripted oracle for {missing}; there is one for {ORACLE_TASKS}"
            )


#: Loss types under which grpo.expert_sft_weight is SFT on the expert's tokens (browserrl.grpo).
EXPERT_WEIGHT_LOSSES = ("dapo", "cispo")


def check_groups(cfg: DictConfig, args: GRPOConfig) -> None:
    """Whole groups on every process (the collector plays groups; TRL groups rewards by num_generations):
    the built GRPOConfig tells steps_per_generation. The expert's weight needs a loss it is exact for."""
    exact = args.loss_type in EXPERT_WEIGHT_LOSSES and args.importance_sampling_level == "token"
    if cfg.grpo.expert_sft_weight is not None and not exact:
        raise ConfigError(
            "grpo.expert_sft_weight",
            f"needs a token-level loss normalized by the step's tokens (trainer.loss_type one of "
            f"{', '.join(EXPERT_WEIGHT_LOSSES)}, importance_sampling_level token), got {args.loss_type} at "
            f"level {args.importance_sampling_level}",
        )
    per_process = args.per_device_train_batch_size * args.steps_per_generation
    if per_process % args.num_generations:
        raise ConfigError(
            "trainer.num_generations",
            f"a process plays whole groups: per_device_train_batch_size x steps_per_generation "
            f"({per_process}) must be a multiple of num_generations ({args.num_generations})",
        )


def check_env(cfg: DictConfig) -> None:
    _positive_int("env.sessions", cfg.env.sessions)
    _positive_int("eval.sessions", cfg.eval.sessions)  # after env.sessions: by default, the same value
    if not fits_type(cfg.env.message_timeout_s, float) or cfg.env.message_timeout_s <= 0:
        raise ConfigError("env.message_timeout_s", f"must be > 0 seconds, got {cfg.env.message_timeout_s!r}")
    if cfg.env.mode == "remote":
        urls = server_urls(cfg.env.url)
        if not urls or not all(isinstance(u, str) for u in urls):
            raise ConfigError("env.url", f"must be a server URL or a list of them, got {cfg.env.url!r}")
    elif cfg.env.mode != "local":
        raise ConfigError("env.mode", f"must be local or remote, got {cfg.env.mode!r}")


def check_model(cfg: DictConfig) -> None:
    source = cfg.model.source
    if source not in ("packaged", "tiny", "hub", "path"):
        raise ConfigError("model.source", f"must be packaged, tiny, hub or path, got {source!r}")
    if source in ("hub", "path") and not cfg.model.get("name_or_path"):
        raise ConfigError("model.name_or_path", f"model.source={source} needs a hub id or a folder")
    if source in ("packaged", "tiny") and cfg.model.get("name_or_path"):  # else silently not the model named
        raise ConfigError("model.name_or_path", f"model.source={source} ignores it: add model.source=path")


def check_context(cfg: DictConfig) -> None:
    """An episode's tokens fit the model's positions: the completion budget alone must leave room for a prompt
    (the rollout also ends an episode that would pass them), and vLLM's context must not exceed them."""
    positions = max_positions(cfg.model)
    if positions is None:
        return
    budget, vllm_length = cfg.trainer.max_completion_length, cfg.trainer.get("vllm_max_model_length")
    if budget >= positions:
        raise ConfigError(
            "trainer.max_completion_length",
            f"{budget} tokens leave no room for a prompt in {cfg.model.name}'s {positions} positions: lower "
            "it (the prompt takes 0.5k-1.5k tokens)",
        )
    if vllm_length is not None and vllm_length > positions:
        raise ConfigError(
            "trainer.vllm_max_model_length",
            f"{vllm_length} is more than {cfg.model.name}'s {positions} positions",
        )


def check_eval(cfg: DictConfig) -> None:
    _positive_int("eval.num_seeds", cfg.eval.num_seeds)
    _positive_int("eval.first_seed", cfg.eval.first_seed, minimum=0)
    _positive_int("eval.every_steps", cfg.eval.every_steps, minimum=0)
    if cfg.eval.first_seed < cfg.train_seeds:
        raise ConfigError("eval.first_seed", f"must be >= train_seeds ({cfg.train_seeds}): held-out seeds")


def resolve(cfg: DictConfig) -> None:
    """Resolve interpolations in place; a missing mandatory value (???) or a broken interpolation names
    its key."""
    try:
        OmegaConf.resolve(cfg)
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(exc.full_key, f"needs a value: add {exc.full_key}=...") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(key, f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def check_generation(trainer: dict[str, Any]) -> None:
    """GRPOConfig fields that TRL's own generation reads and this rollout does not (it generates through
    browserrl.generation with temperature, top_p and top_k alone): refused rather than ignored."""
    unused = {
        "min_p": trainer.get("min_p") is not None,
        "repetition_penalty": trainer.get("repetition_penalty", 1.0) != 1.0,
        "generation_kwargs": bool(trainer.get("generation_kwargs")),
    }
    for key, set_ in unused.items():
        if set_:
            why = "not used by the rollout, which samples with temperature, top_p and top_k only"
            raise ConfigError(f"trainer.{key}", why)
    if trainer.get("use_vllm") and trainer.get("vllm_enable_sleep_mode"):
        raise ConfigError(
            "trainer.vllm_enable_sleep_mode",
            "not supported: TRL wakes vLLM's KV cache inside its own generate, which the multi-turn rollout "
            "does not call",
        )


def validate(cfg: DictConfig, trains: bool = True) -> None:
    """Every check of the settings themselves, in seconds, before anything starts; then `preflight` looks at
    the machine and browserrl.build.grpo_config builds TRL's config. `trains=False` (an evaluation): what
    only training reads (LoRA, the SFT warm-up, GRPO's group drawing) is not checked, so a suite narrowed
    for an evaluation is not refused for the warm-up it will not run."""
    resolve(cfg)
    _positive_int("seed", cfg.seed, minimum=0)
    _positive_int("train_seeds", cfg.train_seeds)
    check_tasks(cfg)
    if trains:
        check_lora(cfg)
        check_sft(cfg)
    check_eval(cfg)
    check_precision(cfg)
    try:
        rewards.select(dict(cfg.rewards))
    except ValueError as exc:
        raise ConfigError("rewards", str(exc)) from exc
    check_trainer(cfg)
    if trains:
        check_grpo(cfg)
    check_model(cfg)
    check_context(cfg)
    check_env(cfg)


def preflight(cfg: DictConfig) -> None:
    """What a validated config needs of this machine, in seconds, before any model or browser starts: the
    model's files, Chromium for a local env server, an answer from each remote one."""
    model = cfg.model
    if model.source == "path" and not Path(model.name_or_path, "config.json").exists():
        raise ConfigError("model.name_or_path", f"no model folder (config.json) at {model.name_or_path}")
    if model.source == "packaged":
        from browserrl.modeling import packaged_gguf_dir

        try:
            packaged_gguf_dir()
        except RuntimeError as exc:
            raise ConfigError("model", str(exc)) from exc
    if cfg.env.mode == "local":
        try:
            chromium_preflight()
        except EnvSetupError as exc:
            raise ConfigError("env.mode", f"{exc}; or use a running server: env=remote env.url=...") from exc
        return
    for url in server_urls(cfg.env.url):  # all now: a dead one costs episodes later, a typo costs nothing now
        try:
            check_env_url(url, timeout=5)
        except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
            raise ConfigError(
                "env.url", f"nothing answers at {url} ({exc}); start a server (make serve-env)"
            ) from exc


#: What a resumed run's weights go on from: the model and its adapter, and with the SFT warm-up what made the
#: SFT checkpoint (the oracle plays each task with its settings; the seed orders the demonstrations).
WEIGHT_SETTINGS = ("model", "tuning", "lora")
SFT_SETTINGS = ("seed", *WEIGHT_SETTINGS, "task", "tasks", "sft")
#: Fields that name a run or shape its log, not its weights: tuning's tag, SFTConfig's logging and saving.
NOT_WEIGHTS = frozenset({"tag", "logging_steps", "disable_tqdm", "report_to", "save_strategy"})


def check_resume(cfg: DictConfig) -> None:
    """`trainer.resume_from_checkpoint` names a checkpoint folder, and the run resumes with the settings its
    weights were trained from: with the SFT warm-up it goes on from that run's SFT checkpoint
    (browserrl.sft.resumed_sft), so a change of what made it would hold for the record and not for the
    weights. Keys the saved config lacks (added to the repo since) are not compared."""
    checkpoint = (cfg.get("trainer") or {}).get("resume_from_checkpoint")
    if not checkpoint:
        return
    if not Path(checkpoint).is_dir():
        wanted = "a folder RUN/checkpoints/checkpoint-N"
        raise ConfigError("trainer.resume_from_checkpoint", f"no checkpoint folder at {checkpoint}: {wanted}")
    run = Path(checkpoint).parent.parent
    if not (run / "config.yaml").exists():
        return  # not a browserrl run folder: nothing to compare with
    saved = OmegaConf.load(run / "config.yaml")
    was, now = bool(OmegaConf.select(saved, "sft.enabled")), bool(OmegaConf.select(cfg, "sft.enabled"))
    sft_final = (run / SFT_DIR / "final").resolve()
    named = cfg.model.source == "path" and Path(cfg.model.name_or_path or "").resolve() == sft_final
    if was and not now and named:  # sft=none model.source=path model.name_or_path=RUN/sft/final
        return
    where = f"in the run of {checkpoint}"
    if was != now:
        raise ConfigError("sft.enabled", f"{was} {where}, {now} here: {RESUME_AS_RUN}")
    for section in SFT_SETTINGS if now else WEIGHT_SETTINGS:
        key = first_difference(_plain(saved, section), _plain(cfg, section), section)
        if key is not None:
            before, after = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
            raise ConfigError(key, f"{before!r} {where}, {after!r} here: {RESUME_AS_RUN}")


RESUME_AS_RUN = "the checkpoint's weights were trained from the former; resume with the run's settings"


def _plain(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def first_difference(saved: Any, current: Any, key: str) -> str | None:
    """The first dotted key under `key` where a saved setting and the current one differ (keys the saved one
    lacks and NOT_WEIGHTS fields skipped), None when none does."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in sorted(saved.keys() - NOT_WEIGHTS, key=str):
            found = first_difference(saved[name], current.get(name), f"{key}.{name}")
            if found is not None:
                return found
        return None
    return None if saved == current else key
