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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from datasets import Dataset
from omegaconf import DictConfig, OmegaConf
from transformers import PrinterCallback, set_seed
from trl import GRPOConfig, GRPOTrainer

from browserrl import rewards
from browserrl.analysis import peak_memory_mb, reset_peak_memory
from browserrl.config import miniwob_task, validate
from browserrl.env.pool import EnvPool
from browserrl.evaluate import PeriodicEval, heldout_report
from browserrl.generation import HFGenerator, SamplingParams, VLLMGenerator
from browserrl.metrics import JsonlLogger, ProgressBar, StepTimer, batch_metrics, jsonable
from browserrl.modeling import count_parameters, load_policy, lora_config
from browserrl.rollout import ChatFormat, RolloutEngine, instance_prompt, parse_instance, trainer_output
from browserrl.sft import start_from, warm_up

log = logging.getLogger(__name__)
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL: we know


@contextmanager
def env_server(cfg: DictConfig) -> Iterator[tuple[Callable[[], str], Callable[[], None] | None]]:
    """(current url, heal) for the configured env: a local server started for this run, or a remote url."""
    if cfg.env.mode == "remote":
        yield (lambda: cfg.env.url), None
        return
    from browserrl.env.launcher import LocalEnvServer

    with LocalEnvServer(
        task=cfg.task.name,
        max_sessions=cfg.env.sessions + 2,  # headroom: a dropped session may linger until the server notices
        idle_timeout_s=cfg.env.idle_timeout_s,
        start_timeout_s=cfg.env.start_timeout_s,
        max_steps=cfg.task.max_steps,  # the server truncates where the rollout stops
    ) as server:

        def heal() -> None:
            if not server.is_alive():
                log.warning("env server died; restarting it (failed episodes count as env_errors)")
                server.restart()

        yield (lambda: server.url), heal


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
    """TRL calls this with the prompts of one generation batch (each repeated num_generations times)."""

    def rollout_func(prompts: list[str], trainer: GRPOTrainer) -> dict[str, list[Any]]:
        if trainer.args.use_vllm:
            engine.generator = VLLMGenerator.from_trainer(trainer, engine.chat.eot_id, sampling)
        else:
            engine.generator = hf_generator(trainer.accelerator.unwrap_model(trainer.model))
        batch = engine.play([parse_instance(p) for p in prompts])
        mode = "train" if trainer.model.training else "eval"
        for key, value in batch_metrics(batch).items():
            trainer._metrics[mode][key].append(value)  # TRL averages these into its next log line
        return trainer_output(batch, engine.task.max_steps)

    return rollout_func


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    started = time.time()
    reset_peak_memory()  # a multirun's runs share this process: each run reports its own peak
    validated = validate(cfg)  # fails in seconds, naming the key, before any model or browser starts
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    task = miniwob_task(cfg.task.name)
    set_seed(cfg.seed)  # the base eval samples before the trainer seeds anything

    with ExitStack() as stack:
        url, heal = stack.enter_context(env_server(cfg))
        if cfg.sft.enabled:  # scripted-oracle SFT warm-up; GRPO then starts from its checkpoint
            start_from(cfg, warm_up(cfg, url(), run_dir / "sft"))
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        model, tokenizer = load_policy(cfg.model)
        chat = ChatFormat(tokenizer, cfg.model.eot_token)
        sampling = SamplingParams(
            validated.temperature, validated.top_p, validated.top_k or 0, cfg.task.max_action_tokens
        )
        pool = EnvPool(
            url,
            cfg.env.sessions,
            cfg.env.message_timeout_s,
            on_failure=heal,
            reset_options={"observation_delay": cfg.task.observation_delay},
        )
        stack.callback(pool.close)

        def hf_generator(policy: Any) -> HFGenerator:
            """transformers generate on `policy`: the base model now, the trained one (maybe PEFT) later."""
            return HFGenerator(policy, tokenizer.pad_token_id, chat.eot_id, sampling)

        engine = RolloutEngine(hf_generator(model), pool, chat, cfg.task, validated.max_completion_length)
        wandb_run = start_wandb(cfg, run_dir)
        if wandb_run is not None:
            stack.callback(wandb_run.finish)

        summary: dict[str, float] = {}
        if cfg.eval.before:
            summary |= heldout_report(engine, cfg, "base")
            log.info(
                "base: success %.3f (greedy %s)",
                summary["base/success_rate"],
                summary.get("base/greedy_success_rate", "-"),
            )

        trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
        args = GRPOConfig(
            **trainer_args,
            output_dir=str(run_dir / "checkpoints"),
            run_name=cfg.run_name,
            report_to=["wandb"] if wandb_run is not None else [],
        )
        funcs, weights = rewards.select(dict(cfg.rewards))
        args.reward_weights = weights
        dataset = Dataset.from_dict({"prompt": [instance_prompt(task, s) for s in range(cfg.train_seeds)]})
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg),
            rollout_func=make_rollout_func(engine, sampling, hf_generator),
        )
        trainer.remove_callback(PrinterCallback)  # the progress bar and metrics.jsonl replace its raw dicts
        trainer.add_callback(JsonlLogger(run_dir / "metrics.jsonl"))
        trainer.add_callback(StepTimer(trainer._metrics))
        trainer.add_callback(ProgressBar())
        trainer.add_callback(PeriodicEval(engine, cfg, trainer._metrics))  # eval/* every eval.every_steps
        summary |= count_parameters(trainer.model)
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)

        final = run_dir / "final"
        trainer.save_model(str(final))  # LoRA: the adapter; full: the model (with the tokenizer either way)
        tokenizer.save_pretrained(final)
        OmegaConf.save(cfg, final / "config.yaml", resolve=True)

        if cfg.eval.after:
            engine.generator = hf_generator(trainer.accelerator.unwrap_model(trainer.model))
            summary |= heldout_report(engine, cfg, "eval")
        summary |= peak_memory_mb()
        summary["wall_time_s"] = time.time() - started
        (run_dir / "summary.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
        if wandb_run is not None:
            wandb_run.summary.update(summary)
        log.info(
            "summary written to %s: %s",
            run_dir / "summary.json",
            {k: round(v, 3) for k, v in summary.items() if k.endswith("success_rate")},
        )
        return summary
