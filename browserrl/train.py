"""One GRPO run from a composed config: env server, policy, held-out eval, GRPOTrainer, checkpoint, summary.

Read top to bottom, `run` is the recipe. The run dir (Hydra's output dir) receives config.yaml, metrics.jsonl
(one JSON object per logging step), checkpoints/, final/ (adapter or model + tokenizer + config) and
summary.json (held-out success before and after training, wall time).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from transformers import PrinterCallback, set_seed

from browserrl import rewards
from browserrl.analysis import peak_memory_mb, reset_peak_memory
from browserrl.config import task_configs, validate
from browserrl.evaluate import PeriodicEval, heldout_report
from browserrl.generation import HFGenerator, SamplingParams, VLLMGenerator
from browserrl.grpo import GRPOTrainer
from browserrl.metrics import JsonlLogger, ProgressBar, jsonable
from browserrl.modeling import count_parameters, load_policy, lora_config
from browserrl.pool import env_pool
from browserrl.rollout import (
    ChatFormat,
    RolloutEngine,
    instance_prompt,
    model_policy,
    parse_instance,
    trainer_output,
)
from browserrl.sft import start_from, warm_up

log = logging.getLogger(__name__)
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL: we know


def start_wandb(cfg: DictConfig, run_dir: Path) -> Any:
    """Our W&B run (HF's callback reuses it): offline unless a key is available; sweeps share a group."""
    if cfg.logger.name != "wandb":
        return None
    import wandb
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
    mode = cfg.logger.mode or ("online" if has_key else "offline")
    os.environ["WANDB_MODE"] = mode
    group = None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        group = Path(HydraConfig.get().sweep.dir).name
    return wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=cfg.run_name,
        group=group,
        dir=str(run_dir),
        mode=mode,
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def make_rollout_func(
    engine: RolloutEngine, sampling: SamplingParams, hf_generator: Callable[[Any], HFGenerator]
) -> Callable[[list[str], GRPOTrainer], dict]:
    """TRL calls this with the prompts of one generation batch, each repeated num_generations times in a
    row: one episode per prompt, so a group's episodes play the same (task, seed) page."""

    def rollout_func(prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        if trainer.args.use_vllm:
            generator = VLLMGenerator.from_trainer(trainer, engine.chat.eot_id, sampling)
        else:
            generator = hf_generator(trainer.accelerator.unwrap_model(trainer.model))
        engine.policy = model_policy(generator)
        return trainer_output(engine.play([parse_instance(p) for p in prompts]))

    return rollout_func


def training_instances(cfg: DictConfig) -> list[str]:
    """The dataset: (task, seed) instances, the suite's tasks taking turns over seeds [0, train_seeds)."""
    tasks = list(cfg.suite.tasks)
    return [instance_prompt(tasks[seed % len(tasks)], seed) for seed in range(cfg.train_seeds)]


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    started = time.time()
    reset_peak_memory()  # a multirun's runs share this process: each run reports its own peak
    report_to = ["wandb"] if cfg.logger.name == "wandb" else []
    args = validate(cfg, run_dir / "checkpoints", report_to)  # seconds, naming the key, before any model
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    set_seed(cfg.seed)  # the base eval samples before the trainer seeds anything

    with ExitStack() as stack:
        pool = stack.enter_context(env_pool(cfg))
        if cfg.sft.enabled:  # scripted-oracle SFT warm-up; GRPO then starts from its checkpoint
            start_from(cfg, warm_up(cfg, pool, run_dir / "sft", args.max_completion_length))
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        model, tokenizer = load_policy(cfg.model)
        chat = ChatFormat(tokenizer, cfg.model.eot_token)
        sampling = SamplingParams(args.temperature, args.top_p, args.top_k or 0)

        def hf_generator(policy: Any) -> HFGenerator:
            """transformers generate on `policy`: the base model now, the trained one (maybe PEFT) later."""
            return HFGenerator(
                policy, tokenizer.pad_token_id, chat.eot_id, sampling, args.bf16, cfg.infra.reuse_kv_cache
            )

        policy = model_policy(hf_generator(model))
        engine = RolloutEngine(policy, pool, chat, task_configs(cfg), args.max_completion_length)
        wandb_run = start_wandb(cfg, run_dir)
        if wandb_run is not None:
            stack.callback(wandb_run.finish)

        summary: dict[str, float] = {}
        if cfg.eval.before:
            summary |= heldout_report(engine, cfg, "base", cache=True)  # the same for every run of a sweep

        reward_funcs, _ = rewards.select(dict(cfg.rewards))  # their weights are in args
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": training_instances(cfg)}),
            processing_class=tokenizer,
            peft_config=lora_config(cfg),
            rollout_func=make_rollout_func(engine, sampling, hf_generator),
        )
        trainer.remove_callback(PrinterCallback)  # the progress bar and metrics.jsonl replace its raw dicts
        trainer.add_callback(JsonlLogger(run_dir / "metrics.jsonl"))
        trainer.add_callback(ProgressBar())
        trainer.add_callback(PeriodicEval(engine, cfg, trainer))  # eval/* every eval.every_steps
        summary |= count_parameters(trainer.model)
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

        final = run_dir / "final"
        trainer.save_model(str(final))  # LoRA: the adapter; full: the model (with the tokenizer either way)
        tokenizer.save_pretrained(final)
        OmegaConf.save(cfg, final / "config.yaml", resolve=True)

        if cfg.eval.after:
            engine.policy = model_policy(hf_generator(trainer.accelerator.unwrap_model(trainer.model)))
            summary |= heldout_report(engine, cfg, "eval")
        summary |= peak_memory_mb()
        summary["wall_time_s"] = time.time() - started
        (run_dir / "summary.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
        if wandb_run is not None:
            wandb_run.summary.update(summary)
        log.info(
            "summary written to %s: %s",
            run_dir / "summary.json",
            {k: round(v, 3) for k, v in summary.items() if k.endswith("/success_rate") and k.count("/") == 1},
        )
        return summary
