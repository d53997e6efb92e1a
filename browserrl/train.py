"""One GRPO run from a composed config: env server, policy, held-out eval, GRPOTrainer, checkpoint, summary.

Read top to bottom, `run` is the recipe. The run dir (Hydra's output dir) receives config.yaml, metrics.jsonl
(one JSON object per logging step), checkpoints/, final/ (adapter or model + tokenizer + config) and
summary.json (held-out success before and after training, wall time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from transformers import PrinterCallback, TrainerCallback, set_seed

from browserrl import build, rewards
from browserrl.config import check_resume, preflight, task_configs, validate
from browserrl.curriculum import SamplerCheckpoint, TaskSampler
from browserrl.evaluate import PeriodicEval, heldout_report
from browserrl.generation import VLLMGenerator
from browserrl.groups import GroupCollector
from browserrl.grpo import GRPOTrainer, StopWhenIdle, sum_over_processes
from browserrl.memory import peak_memory_mb, reset_peak_memory
from browserrl.metrics import JsonlLogger, ProgressBar, jsonable
from browserrl.modeling import (
    SFT_DIR,
    count_parameters,
    load_policy,
    lora_config,
    policy_device,
    warm_started,
)
from browserrl.rollout import ChatFormat, RolloutEngine, model_policy, trainer_output
from browserrl.sft import SFT_SUMMARY, resumed_sft, warm_up

log = logging.getLogger(__name__)
GROUP_SLOT = "a group of one (task, seed) instance, drawn by the task sampler"
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
    group = cfg.logger.get("group")  # a sweep's point in a process of its own (browserrl.sweep) is told it
    if group is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
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


def make_rollout_func(collector: GroupCollector, cfg: DictConfig) -> Callable[[list[str], GRPOTrainer], dict]:
    """TRL calls this with one generation batch of prompts, `num_generations` per group: the collector plays
    that many groups on the current policy, each of one (task, seed) instance its task sampler draws, and
    hands over groups that teach (browserrl.groups); the prompts themselves carry nothing."""

    chat = collector.engine.chat

    def rollout_func(prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        wait_for_weights(trainer)
        if trainer.args.use_vllm:
            generator = VLLMGenerator.from_trainer(trainer, chat.eot_id, build.sampling(cfg))
        else:
            generator = build.hf_generator(trainer.accelerator.unwrap_model(trainer.model), chat, cfg)
        collector.engine.policy = model_policy(generator)
        step = collector.collect(len(prompts) // trainer.num_generations)
        trainer.note_dropped(step.tokens_dropped)
        return trainer_output(step.batch(), step.metrics())

    return rollout_func


def wait_for_weights(trainer: GRPOTrainer) -> None:
    """vLLM server mode, several processes: TRL's rank 0 has just pushed the new weights (sync_weights,
    before rollout_func) while the other ranks went on; vLLM does not pause generation for an update, so
    they would sample from old or half-written weights. TRL's own generate orders them with a gather after
    the sync; this rollout bypasses it, so the ranks meet here."""
    args = trainer.args
    if args.use_vllm and args.vllm_mode == "server" and trainer.accelerator.num_processes > 1:
        trainer.accelerator.wait_for_everyone()


def group_slots(cfg: DictConfig) -> Dataset:
    """TRL's dataset: rows only count a step's groups. Each group's (task, seed) is drawn by the task
    sampler when the step plays (browserrl.curriculum), from training seeds [0, train_seeds)."""
    return Dataset.from_dict({"prompt": [GROUP_SLOT] * cfg.train_seeds})


def evaluate(
    engine: RolloutEngine, cfg: DictConfig, prefix: str, run_dir: Path, cache: bool = False
) -> dict[str, Any]:
    """Held-out success of the engine's policy on the suite (`PREFIX/*`) and, when the run names one, on
    the transfer suite's unseen tasks (`transfer/PREFIX/*`); each episode's outcome in run_dir/heldout/."""
    report = heldout_report(engine, cfg, prefix, cache, out_dir=run_dir)
    if cfg.get("transfer"):
        transfer = list(cfg.transfer.suite.tasks)
        report |= heldout_report(engine, cfg, f"transfer/{prefix}", cache, transfer, run_dir)
    return report


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    started = time.time()
    reset_peak_memory()  # a multirun's runs share this process: each run reports its own peak
    report_to = ["wandb"] if cfg.logger.name == "wandb" else []
    validate(cfg)  # the settings, in seconds, naming the key
    check_resume(cfg)  # a resumed run: the settings its checkpoint's weights were trained from
    preflight(cfg)  # this machine: model files, Chromium or the env servers
    args = build.grpo_config(cfg, run_dir / "checkpoints", report_to)
    # Several processes (accelerate launch, torchrun): each plays and trains on its own groups; the first
    # alone plays the held-out evaluations and writes the run's records (config, metrics, W&B, summary).
    rank = int(os.environ.get("RANK", 0))
    main = rank == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    set_seed(cfg.seed)  # the base eval samples before the trainer seeds anything
    summary: dict[str, float] = {"precision/bf16": args.bf16}  # infra.precision, decided on this machine
    clock = Clock(summary)

    with ExitStack() as stack:
        pool = stack.enter_context(build.env_pool(cfg))
        demonstrations = 0
        if cfg.sft.enabled:  # scripted-oracle SFT warm-up; GRPO then starts from its checkpoint
            sft_final = resumed_sft(args.resume_from_checkpoint, run_dir / SFT_DIR)  # its time: in the record
            if sft_final is None:
                with clock("time/sft_s"):
                    sft_final = warm_up(cfg, pool, run_dir / SFT_DIR)
            demonstrations = json.loads((sft_final.parent / SFT_SUMMARY).read_text())["demonstrations"]
            cfg = warm_started(cfg, run_dir)  # from here on, `model` is the SFT checkpoint
        model, tokenizer = load_policy(cfg.model, trains_weights=cfg.tuning.name == "full")
        model.to(policy_device(args.use_cpu))
        chat = ChatFormat(tokenizer, cfg.model.eot_token)
        tasks = task_configs(
            cfg, [*cfg.suite.tasks, *(cfg.transfer.suite.tasks if cfg.get("transfer") else [])]
        )
        engine = build.rollout_engine(
            model_policy(build.hf_generator(model, chat, cfg)), pool, chat, cfg, tasks, guided=cfg.grpo.guided
        )
        wandb_run = start_wandb(cfg, run_dir) if main else None
        if wandb_run is not None:
            stack.callback(wandb_run.finish)

        start = "sft" if cfg.sft.enabled else "base"  # the policy GRPO starts from
        if cfg.eval.before and main:
            with clock("time/eval_s"):  # the base model's is the same for every run of a sweep: cached
                summary |= evaluate(engine, cfg, start, run_dir, cache=not cfg.sft.enabled)

        reward_funcs, _ = rewards.select(dict(cfg.rewards))  # their weights are in args
        g = cfg.grpo
        sampler = TaskSampler(
            cfg.suite.tasks,
            cfg.train_seeds,
            g.task_sampling,
            g.sampling_window,
            g.sampling_floor,
            cfg.seed + rank,  # each process draws its own instances
            group_size=args.num_generations,
            expert=g.expert,
        )
        expert = build.demonstrator(pool, chat, cfg, tasks) if g.expert else None
        collector = GroupCollector(
            engine, sampler, rewards.scorer(dict(cfg.rewards)), args.num_generations, g.dynamic_sampling,
            g.max_draws_per_group, expert, g.guided,
        )  # fmt: skip
        trainer = build.grpo_trainer(
            cfg,
            args,
            model,
            reward_funcs=reward_funcs,
            train_dataset=group_slots(cfg),
            processing_class=tokenizer,
            peft_config=lora_config(cfg),
            rollout_func=make_rollout_func(collector, cfg),
            expert_sft_weight=g.expert_sft_weight,
        )
        trainer.remove_callback(PrinterCallback)  # the progress bar and metrics.jsonl replace its raw dicts
        if main:  # a step's line holds every process's episodes (TRL gathers them): one writer
            trainer.add_callback(JsonlLogger(run_dir / "metrics.jsonl"))
            trainer.add_callback(ProgressBar())
            trainer.add_callback(PeriodicEval(engine, cfg, trainer))  # eval/* every eval.every_steps
        checkpoint = SamplerCheckpoint(sampler, rank)
        checkpoint.resume(args.resume_from_checkpoint)
        trainer.add_callback(checkpoint)
        record = RecordCheckpoint(summary, trainer, collector, rank, run_dir / "heldout")
        whole_run = record.resume(args.resume_from_checkpoint)  # False: resumed from an older checkpoint
        trainer.add_callback(record)
        stop = StopWhenIdle(trainer, g.stop_after_idle_steps)
        trainer.add_callback(stop)
        summary |= count_parameters(trainer.model)
        with clock("time/grpo_s"):
            trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        totals = [trainer.trained_total, collector.expert_total]
        trained, expert_episodes = sum_over_processes(trainer.accelerator, totals)
        summary |= {
            "grpo/steps": trainer.state.global_step,
            "grpo/stopped_idle_at": stop.stopped_at,
            "tokens/trained": trained,
            "demonstrations/sft": demonstrations,
            "demonstrations/expert": expert_episodes,
            "demonstrations": demonstrations + expert_episodes,
        }

        final = run_dir / "final"
        trainer.save_model(str(final))  # LoRA: the adapter; full: the model (the first process writes)
        if not main:
            return summary
        tokenizer.save_pretrained(final)
        OmegaConf.save(cfg, final / "config.yaml", resolve=True)

        started_evaluated = any(k.startswith(f"{start}/") for k in summary)  # here or before the checkpoint
        if cfg.eval.after and trained == 0 and started_evaluated and whole_run:
            log.warning(
                "GRPO trained no token: the final policy is the %s policy; eval/* repeats %s/*", start, start
            )
            summary |= repeat_start(summary, run_dir, start)
        elif cfg.eval.after:
            trained_policy = trainer.accelerator.unwrap_model(trainer.model)
            engine.policy = model_policy(build.hf_generator(trained_policy, chat, cfg))
            with clock("time/eval_s"):
                summary |= evaluate(engine, cfg, "eval", run_dir)
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


def repeat_start(summary: dict[str, Any], run_dir: Path, start: str) -> dict[str, Any]:
    """The start policy's held-out results as eval/* (and its episode outcomes as eval-*), for a run whose
    GRPO trained no token: its final policy is the one it started from."""
    renamed = {}
    for key, value in summary.items():
        for head in (f"{start}/", f"transfer/{start}/"):
            if key.startswith(head):
                renamed[head.replace(start, "eval", 1) + key[len(head) :]] = value
    for path in (run_dir / "heldout").glob(f"*{start}-*.json"):
        shutil.copy(path, path.with_name(path.name.replace(f"{start}-", "eval-", 1)))
    return renamed


class RecordCheckpoint(TrainerCallback):
    """Each trainer checkpoint holds the run's record so far: this process's trained tokens and expert
    episodes, GRPO's seconds, and on the first process the summary (the start's evaluations, SFT) and the
    held-out episodes behind it. A run resumed from it, in its own folder or another, reports the whole run
    (demonstrations, cost, the SFT-only arm and its pairs), not its own steps only."""

    def __init__(
        self,
        summary: dict[str, Any],
        trainer: GRPOTrainer,
        collector: GroupCollector,
        rank: int,
        heldout: Path,
    ):
        self.summary, self.trainer, self.collector = summary, trainer, collector
        self.rank, self.heldout = rank, heldout
        self.processes = trainer.accelerator.num_processes
        self.started = time.time()

    def path(self, checkpoint: str | Path) -> Path:
        return Path(checkpoint) / f"run_record_{self.rank}.json"

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - HF callback signature
        self.started = time.time()

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 - HF callback signature
        record = {
            "processes": self.processes,
            "tokens/trained": self.trainer.trained_total,
            "demonstrations/expert": self.collector.expert_total,
            "time/grpo_s": self.summary.get("time/grpo_s", 0.0) + time.time() - self.started,
            "summary": self.summary if self.rank == 0 else {},
        }
        path = self.path(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(jsonable(record)) + "\n")
        if self.rank == 0 and self.heldout.is_dir():  # a few kB: the outcomes a comparison pairs
            shutil.copytree(self.heldout, path.parent / "heldout", dirs_exist_ok=True)

    def resume(self, checkpoint: str | None) -> bool:
        """Counts, summary and held-out outcomes as saved with `checkpoint`; what this run measured anew (its
        own SFT, a start evaluated again) wins. False when the checkpoint holds no record (saved before
        records were)."""
        if not checkpoint:
            return True
        path = self.path(checkpoint)
        if not path.exists():
            log.warning("%s holds no run record: the summary counts this run's steps only", checkpoint)
            return False
        record = json.loads(path.read_text())
        if record["processes"] != self.processes:
            raise ValueError(
                f"{checkpoint} was saved by {record['processes']} processes, this run has {self.processes}: "
                "resume with as many (each keeps its own task sampler and counts)"
            )
        self.trainer.trained_total = record["tokens/trained"]
        self.collector.expert_total = record["demonstrations/expert"]
        for key, value in record["summary"].items():
            self.summary.setdefault(key, value)
        self.summary["time/grpo_s"] = record["time/grpo_s"]  # the clock around train() adds this run's
        saved = Path(checkpoint) / "heldout"
        if self.rank == 0 and saved.is_dir():
            self.heldout.mkdir(parents=True, exist_ok=True)
            for file in saved.iterdir():
                if not (self.heldout / file.name).exists():
                    shutil.copy(file, self.heldout / file.name)
        return True


class Clock:
    """Adds the seconds a block takes to `summary[key]` (a run's phases: SFT, GRPO, evaluation)."""

    def __init__(self, summary: dict[str, float]):
        self.summary = summary

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        started = time.time()
        try:
            yield
        finally:
            self.summary[key] = self.summary.get(key, 0.0) + time.time() - started
