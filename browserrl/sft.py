"""Optional SFT warm-up: a scripted oracle plays MiniWoB tasks, SFTTrainer imitates it, GRPO follows.

A small model rarely emits a valid action for a new task, so GRPO sees no reward to compare. A few hundred
oracle episodes (browserrl.oracle) fix the format and the grounding first. The oracle plays through the
rollout engine (`scripted_policy`), so a demonstration is an RL `Episode`: the same messages, tokens and
end-of-turn token; its `env_mask` becomes SFT's completion_mask (loss on the model turns only), and the
warm-started policy is scored by GRPO in the format it was taught.

The checkpoint is a full model folder (a LoRA adapter is merged in), loadable with
`model.source=path model.name_or_path=<dir>`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTConfig, SFTTrainer

from browserrl import build
from browserrl.compat import compact_lm_head
from browserrl.config import bf16_autocast, task_configs
from browserrl.modeling import SFT_DIR, load_policy, lora_config
from browserrl.pool import EnvPool
from browserrl.rollout import ChatFormat, Episode, RolloutEngine

log = logging.getLogger(__name__)

#: What the warm-up writes beside its checkpoint (`final/`): demonstrations, tokens, time, loss.
SFT_SUMMARY = "sft_summary.json"


def collect_demonstrations(engine: RolloutEngine, instances: Sequence[tuple[str, int]]) -> list[Episode]:
    """The oracle's episodes on (task, seed) instances; only the solved ones are kept."""
    episodes = engine.play(instances).episodes
    failed = [(e.task, e.seed, e.env_error) for e in episodes if not e.success]
    if failed:
        log.warning("the oracle did not solve %d of %d episodes: %s", len(failed), len(episodes), failed[:5])
    return [e for e in episodes if e.success]


def demonstration_instances(sft_cfg: DictConfig) -> list[tuple[str, int]]:
    """(task, seed) pairs, tasks interleaved so that every batch mixes them; a task listed in
    `episodes_by_task` gets that many episodes instead of `episodes_per_task`."""
    counts = {task: sft_cfg.episodes_by_task.get(task, sft_cfg.episodes_per_task) for task in sft_cfg.tasks}
    first = sft_cfg.first_seed
    seeds = range(first, first + max(counts.values()))
    return [(task, seed) for seed in seeds for task in sft_cfg.tasks if seed < first + counts[task]]


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    demos: Sequence[Episode],
    cfg: DictConfig,
    out_dir: Path,
) -> Path:
    """SFTTrainer on the token sequences (loss on the model turns); a full-model folder at out_dir/final."""
    dataset = Dataset.from_dict(
        {
            "input_ids": [d.prompt_ids + d.completion_ids for d in demos],
            "completion_mask": [[0] * len(d.prompt_ids) + d.env_mask for d in demos],
        }
    )
    fields: dict[str, Any] = {"use_cpu": cfg.trainer.use_cpu, "bf16": bf16_autocast(cfg), "seed": cfg.seed}
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
    with compact_lm_head():  # the loss is on the model's turns: only their positions go through the LM head
        result = trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(policy, "merge_and_unload"):  # LoRA: GRPO starts from the merged weights (and its own LoRA)
        policy = policy.merge_and_unload()
    final = out_dir / "final"
    if trainer.accelerator.is_main_process:  # several processes: one writes, the others wait for it
        policy.save_pretrained(final)
        tokenizer.save_pretrained(final)
    trainer.accelerator.wait_for_everyone()
    tokens = sum(len(row) for row in dataset["input_ids"]) * args.num_train_epochs
    summary = {
        "demonstrations": len(demos),
        "tokens": tokens,  # what the forward/backward passes processed
        "train_s": result.metrics["train_runtime"],
        "tokens_per_s": tokens / result.metrics["train_runtime"],
        "train_loss": result.metrics["train_loss"],
    }
    (out_dir / SFT_SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("sft: %s", {k: round(v, 3) for k, v in summary.items()})
    return final


def warm_up(cfg: DictConfig, pool: EnvPool, out_dir: Path) -> Path:
    """Demonstrations played on `pool` (within GRPO's episode token budget), SFT of cfg.model, the checkpoint
    folder."""
    model, tokenizer = load_policy(cfg.model, trains_weights=True)  # the merge, too, in fp32
    chat = ChatFormat(tokenizer, cfg.model.eot_token)
    engine = build.demonstrator(pool, chat, cfg, task_configs(cfg, list(cfg.sft.tasks)))
    demos = collect_demonstrations(engine, demonstration_instances(cfg.sft))
    pool.release()  # idle sessions would take CPU from SFT; GRPO reopens them
    if not demos:
        raise RuntimeError(f"the oracle solved none of {list(cfg.sft.tasks)}: nothing to imitate")
    log.info("sft: %d successful oracle episodes", len(demos))
    return train_sft(model, tokenizer, demos, cfg, out_dir)


def resumed_sft(checkpoint: str | None, out_dir: Path) -> Path | None:
    """The SFT checkpoint that a run resumed from a GRPO checkpoint goes on from: the one whose weights that
    checkpoint's training started from (RUN/checkpoints/checkpoint-N -> RUN/sft), copied to `out_dir` when
    the run resumes in another folder. A new warm-up would cost its minutes and, on another machine class
    (where `infra.precision=auto` picks another arithmetic), give other weights under an adapter trained on
    the first. None without a checkpoint, or when its run kept no SFT folder: the warm-up then runs.
    config.check_resume has refused settings that would have made another SFT checkpoint."""
    if not checkpoint:
        return None
    source = Path(checkpoint).parent.parent / SFT_DIR
    if not _holds_sft(source):
        log.warning("sft: no SFT checkpoint in %s: the warm-up runs again", source)
        return None
    if source.resolve() != out_dir.resolve():
        if not _holds_sft(out_dir):
            copy = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
            try:
                copy.rename(out_dir)  # several processes copy at once: the first one's stays
            except OSError:
                shutil.rmtree(copy)
                if not _holds_sft(out_dir):
                    raise
        if (out_dir / SFT_SUMMARY).read_text() != (source / SFT_SUMMARY).read_text():
            other = f"{out_dir} holds another SFT checkpoint than {source}"
            raise RuntimeError(f"{other}: resume in a new run folder")
    log.info("sft: going on from %s, the warm-up %s was trained from", source, checkpoint)
    return out_dir / "final"


def _holds_sft(folder: Path) -> bool:
    return (folder / "final").is_dir() and (folder / SFT_SUMMARY).exists()
