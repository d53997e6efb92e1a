"""A validated config turned into a run's parts, in one place: TRL's GRPOConfig and GRPOTrainer, the
sampler's settings, the transformers generator, the rollout engines (the policy's, the scripted oracle's), the
env sessions.
Training, the SFT warm-up, evaluation and the benchmark scripts build through these functions, so the token
budget, the model's positions, the sampling settings and the precision reach every rollout the same way
(tests/test_build.py checks that nothing else constructs them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from trl import GRPOConfig

from browserrl import compat, oracle, rewards
from browserrl import pool as pools
from browserrl.config import ConfigError, bf16_autocast, check_groups, task_configs
from browserrl.generation import HFGenerator, SamplingParams
from browserrl.grpo import GRPOTrainer
from browserrl.modeling import max_positions
from browserrl.pool import EnvPool
from browserrl.rollout import ChatFormat, Policy, RolloutEngine, scripted_policy
from browserrl.settings import EnvSettings, TaskSettings


def grpo_config(
    cfg: DictConfig, output_dir: str | Path = "unused", report_to: Sequence[str] = ()
) -> GRPOConfig:
    """`GRPOConfig(**cfg.trainer)` of a validated config (browserrl.config.validate), with the run's name,
    output dir and reward weights; what only the built object tells (whole groups per process) is checked."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    _, weights = rewards.select(dict(cfg.rewards))
    try:
        args = GRPOConfig(
            **trainer,
            bf16=bf16_autocast(cfg),
            output_dir=str(output_dir),
            run_name=cfg.run_name,
            report_to=list(report_to),
            reward_weights=weights,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError("trainer", str(exc).splitlines()[0]) from exc
    check_groups(cfg, args)
    return args


def grpo_trainer(cfg: DictConfig, args: GRPOConfig, model: Any, **kwargs: Any) -> GRPOTrainer:
    """browserrl.grpo.GRPOTrainer(model=model, args=args, **kwargs). A colocated vLLM engine is built in the
    dtype the trainer scores tokens in (bf16 under infra.precision's autocast, else the weights' dtype), with
    `infra.vllm_engine`'s extra `vllm.LLM` arguments; on the CPU it takes the weights by reload
    (browserrl.compat says why for both)."""
    colocate = args.use_vllm and args.vllm_mode == "colocate"
    options = {}
    if colocate:
        options = {"dtype": "bfloat16" if args.bf16 else str(model.dtype).removeprefix("torch.")}
        options |= OmegaConf.to_container(cfg.infra.get("vllm_engine") or {}, resolve=True)
    with compat.vllm_engine_options(**options) if colocate else contextlib.nullcontext():
        trainer = GRPOTrainer(model=model, args=args, **kwargs)
    if colocate and args.use_cpu:
        compat.sync_by_reload(trainer.vllm_generation)
    return trainer


def sampling(cfg: DictConfig) -> SamplingParams:
    """The trainer's sampling settings (temperature, top_p, top_k; GRPOConfig's defaults where unset)."""
    t = cfg.trainer
    return SamplingParams(t.get("temperature", 1.0), t.get("top_p", 1.0), t.get("top_k") or 0)


def hf_generator(model: Any, chat: ChatFormat, cfg: DictConfig) -> HFGenerator:
    """transformers generate on `model` (the base model, a checkpoint, the policy in training): the trainer's
    sampling and autocast (infra.precision), the infra's key/value reuse."""
    return HFGenerator(
        model,
        chat.tokenizer.pad_token_id,
        chat.eot_id,
        sampling(cfg),
        bf16_autocast(cfg),
        cfg.infra.reuse_kv_cache,
    )


def rollout_engine(
    policy: Policy,
    pool: EnvPool,
    chat: ChatFormat,
    cfg: DictConfig,
    tasks: Mapping[str, TaskSettings] | None = None,
    bounded: bool = True,
    guided: bool = False,
) -> RolloutEngine:
    """Episodes of `tasks` (default: the suite's) played by `policy`, each within the episode token budget
    (trainer.max_completion_length) and the model's positions; `bounded=False` lifts both (a benchmark
    that measures whole oracle episodes). `guided`: the scripted oracle plays the turns of a guided start
    (grpo.guided, browserrl.groups)."""
    tasks = tasks if tasks is not None else task_configs(cfg)
    budget = (cfg.trainer.max_completion_length, max_positions(cfg.model)) if bounded else (None, None)
    guide = oracle_policy(chat, tasks) if guided else None
    return RolloutEngine(policy, pool, chat, tasks, *budget, guide=guide)


def oracle_policy(chat: ChatFormat, tasks: Mapping[str, TaskSettings]) -> Policy:
    """The scripted oracle's turns in the policy's own format (oracle.demonstration_turn)."""
    return scripted_policy(oracle.demonstration_turn(tasks), chat)


def demonstrator(
    pool: EnvPool,
    chat: ChatFormat,
    cfg: DictConfig,
    tasks: Mapping[str, TaskSettings] | None = None,
    bounded: bool = True,
) -> RolloutEngine:
    """The rollout engine with the scripted oracle playing the turns in the policy's own format
    (oracle.demonstration_turn): SFT's demonstrations and GRPO's expert episodes."""
    tasks = tasks if tasks is not None else task_configs(cfg)
    return rollout_engine(oracle_policy(chat, tasks), pool, chat, cfg, tasks, bounded)


def env_pool(
    cfg: DictConfig, sessions: int | None = None, **reset_options: Any
) -> contextlib.AbstractContextManager[EnvPool]:
    """The run's env sessions (browserrl.pool.env_pool, a context) from its `env.*` settings: `sessions` of
    them (default env.sessions), each reset with `reset_options` (`screenshot=True`)."""
    return pools.env_pool(EnvSettings.from_config(cfg), sessions, **reset_options)
