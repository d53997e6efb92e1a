"""Optional SFT warm-up: a scripted oracle plays MiniWoB tasks, SFTTrainer imitates it, GRPO follows.

A small model rarely emits a valid action for a new task, so GRPO sees no reward to compare. A few hundred
oracle episodes (browserrl.oracle) fix the format and the grounding first. Each demonstration is built as
browserrl.rollout builds an RL episode (same messages, same token-by-token concatenation, the same end-of-turn
token), and trained with the loss on the model turns only (the env_mask of RL becomes SFT's completion_mask),
so the warm-started policy is scored by GRPO in the format it was taught.

The checkpoint is a full model folder (a LoRA adapter is merged in), loadable with
`model.source=path model.name_or_path=<dir>`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from browserrl.env.pool import EnvFailure, EnvPool
from browserrl.modeling import load_policy, lora_config
from browserrl.oracle import oracle_action
from browserrl.prompts import initial_messages, observation_text
from browserrl.rollout import ChatFormat

log = logging.getLogger(__name__)


@dataclass
class Demonstration:
    """One oracle episode as one token sequence; `completion_mask` is 1 on the policy's tokens."""

    task: str
    seed: int
    input_ids: list[int] = field(default_factory=list)
    completion_mask: list[int] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    success: bool = False


def collect_demonstrations(
    pool: EnvPool, chat: ChatFormat, task_cfg: DictConfig, instances: Sequence[tuple[str, int]]
) -> list[Demonstration]:
    """Play the oracle on (task, seed) instances, pool.size at a time; keep the successful episodes only."""
    kept = []
    for start in range(0, len(instances), pool.size):
        chunk = instances[start : start + pool.size]
        demos = [Demonstration(task, seed) for task, seed in chunk]
        messages: list[list[dict[str, str]]] = [[] for _ in demos]
        results = pool.reset(range(len(demos)), [d.task for d in demos], [d.seed for d in demos])
        live = []
        for i, result in enumerate(results):
            if isinstance(result, EnvFailure):
                log.warning("demonstration %s/%s: %s", demos[i].task, demos[i].seed, result.message)
                continue
            messages[i] = initial_messages(result.observation, task_cfg)
            demos[i].input_ids = chat.prompt_ids(messages[i])
            demos[i].completion_mask = [0] * len(demos[i].input_ids)
            live.append((i, result.observation))
        for _ in range(task_cfg.max_steps):
            acting = [(i, oracle_action(obs.goal, obs.axtree_txt or "")) for i, obs in live]
            acting = [(i, action) for i, action in acting if action is not None]
            if not acting:
                break
            for i, action in acting:
                turn = chat.encode(action) + [chat.eot_id]
                demos[i].input_ids += turn
                demos[i].completion_mask += [1] * len(turn)
                demos[i].actions.append(action)
                messages[i].append({"role": "assistant", "content": action})
            results = pool.step([i for i, _ in acting], [a for _, a in acting])
            live = []
            for (i, _), result in zip(acting, results):
                if isinstance(result, EnvFailure):
                    continue
                if result.done:
                    demos[i].success = (result.reward or 0.0) > 0
                    continue
                user_text = observation_text(result.observation, task_cfg)
                env_ids = chat.continuation_ids(messages[i], user_text)
                demos[i].input_ids += env_ids
                demos[i].completion_mask += [0] * len(env_ids)
                messages[i].append({"role": "user", "content": user_text})
                live.append((i, result.observation))
        kept += [d for d in demos if d.success]
    return kept


def demonstration_instances(sft_cfg: DictConfig) -> list[tuple[str, int]]:
    """(task, seed) pairs, tasks interleaved so that every batch mixes them."""
    seeds = range(sft_cfg.first_seed, sft_cfg.first_seed + sft_cfg.episodes_per_task)
    return [(task, seed) for seed in seeds for task in sft_cfg.tasks]


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    demos: Sequence[Demonstration],
    cfg: DictConfig,
    out_dir: Path,
) -> Path:
    """SFTTrainer on the token sequences (loss on the model turns); a full-model folder at out_dir/final."""
    dataset = Dataset.from_dict(
        {"input_ids": [d.input_ids for d in demos], "completion_mask": [d.completion_mask for d in demos]}
    )
    fields: dict[str, Any] = {"use_cpu": cfg.trainer.use_cpu, "bf16": cfg.trainer.bf16, "seed": cfg.seed}
    fields |= OmegaConf.to_container(cfg.sft.trainer, resolve=True)
    args = SFTConfig(
        **fields,
        output_dir=str(out_dir / "checkpoints"),
        completion_only_loss=True,
        max_length=None,  # no cut: it would drop the final action (book-flight episodes reach ~3.8k tokens)
        report_to=[],
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
    )
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(policy, "merge_and_unload"):  # LoRA: GRPO starts from the merged weights (and its own LoRA)
        policy = policy.merge_and_unload()
    final = out_dir / "final"
    policy.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (out_dir / "sft_summary.txt").write_text(
        f"demonstrations: {len(demos)}\ntrain_loss: {trainer.state.log_history[-1].get('train_loss')}\n"
    )
    return final


def warm_up(cfg: DictConfig, env_url: str, out_dir: Path) -> Path:
    """Demonstrations from the env server at env_url, SFT of cfg.model, the checkpoint folder."""
    model, tokenizer = load_policy(cfg.model)
    chat = ChatFormat(tokenizer, cfg.model.eot_token)
    options = {"observation_delay": cfg.sft.observation_delay}
    pool = EnvPool(lambda: env_url, cfg.env.sessions, cfg.env.message_timeout_s, reset_options=options)
    try:
        demos = collect_demonstrations(pool, chat, cfg.task, demonstration_instances(cfg.sft))
    finally:
        pool.close()
    if not demos:
        raise RuntimeError(f"the oracle solved none of {list(cfg.sft.tasks)}: nothing to imitate")
    log.info("sft: %d successful oracle episodes", len(demos))
    return train_sft(model, tokenizer, demos, cfg, out_dir)


def start_from(cfg: DictConfig, checkpoint: Path) -> None:
    """Point cfg.model at the warm-started checkpoint (what `model.source=path` does on the command line)."""
    with open_dict(cfg):
        cfg.model.source = "path"
        cfg.model.name_or_path = str(checkpoint)
