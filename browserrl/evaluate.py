"""Held-out evaluation: the same episodes and metrics as training, on seeds training never sees."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from transformers import Trainer, TrainerCallback

from browserrl.analysis import markdown_table
from browserrl.config import task_configs
from browserrl.generation import HFGenerator, SamplingParams
from browserrl.metrics import episode_metrics, episode_record, jsonable
from browserrl.modeling import load_checkpoint, load_policy
from browserrl.pool import EnvFailure, EnvPool, env_pool
from browserrl.rollout import ChatFormat, Episode, RolloutEngine, model_policy

log = logging.getLogger(__name__)


def heldout_seeds(cfg: DictConfig) -> list[int]:
    return list(range(cfg.eval.first_seed, cfg.eval.first_seed + cfg.eval.num_seeds))


def evaluate(
    engine: RolloutEngine, tasks: Sequence[str], seeds: Sequence[int], greedy: bool
) -> tuple[dict[str, float], list[Episode]]:
    """Every task on every seed; the metrics pool all episodes (equal seeds per task: the suite mean) and
    carry each task's own under `TASK/`."""
    batch = engine.play([(task, s) for task in tasks for s in seeds], greedy=greedy)
    return episode_metrics(batch.episodes), batch.episodes


def heldout_report(engine: RolloutEngine, cfg: DictConfig, prefix: str) -> dict[str, float]:
    """`{prefix}/success_rate`, ... sampled at the training temperature; `{prefix}/greedy_*` if enabled."""
    seeds, tasks = heldout_seeds(cfg), list(cfg.suite.tasks)
    report = {}
    for decoding in ("sampled", "greedy") if cfg.eval.greedy else ("sampled",):
        metrics, _ = evaluate(engine, tasks, seeds, greedy=decoding == "greedy")
        tag = "" if decoding == "sampled" else "greedy_"
        report |= {f"{prefix}/{tag}{k}": v for k, v in metrics.items()}
        log.info(
            "held-out %s, %s: success %.3f over %d episodes (%s, %d seeds each)",
            prefix,
            decoding,
            metrics["success_rate"],
            len(tasks) * len(seeds),
            ", ".join(tasks),
            len(seeds),
        )
    return report


class PeriodicEval(TrainerCallback):
    """Held-out eval every `eval.every_steps` optimizer steps (0: never), on the live policy.

    It runs after that step's training log line and logs its own line at the same step through the HF
    Trainer's `log` (metrics.jsonl, W&B), so the analysis can draw held-out curves next to the training
    ones. `transformers.Trainer.log`, not GRPOTrainer's: TRL's would add the step's training metrics, which
    it clears only after this callback returns, to the eval line.
    """

    def __init__(self, engine: RolloutEngine, cfg: DictConfig, trainer: Any):
        self.engine, self.cfg, self.trainer = engine, cfg, trainer
        self.every = int(cfg.eval.get("every_steps") or 0)
        self.last_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - HF callback signature
        step = state.global_step
        if self.every and step % self.every == 0 and step != self.last_step and "reward" in (logs or {}):
            self.last_step = step  # the log below calls on_log again: that call returns here
            Trainer.log(self.trainer, heldout_report(self.engine, self.cfg, "eval"))


class ScreenshotRecorder:
    """Wraps an EnvPool for the rollout engine and keeps every observation's screenshot, per episode.

    The engine resets slots chunk by chunk in episode order, so the n-th reset starts the n-th episode.
    Screenshots come when the pool asks for them at reset (`reset_options={"screenshot": True}`), or when
    the server sends them anyway (one run with `--screenshot`, or OpenEnv's BrowserGym Space).
    """

    def __init__(self, pool: EnvPool):
        self.pool, self.size = pool, pool.size
        self.frames: list[list[str | list]] = []
        self._episode_of_slot: dict[int, int] = {}

    def reset(
        self,
        slots: Sequence[int],
        tasks: Sequence[str],
        seeds: Sequence[int],
        options: Sequence[dict[str, Any]] | None = None,
    ) -> list[Any]:
        results = self.pool.reset(slots, tasks, seeds, options)
        for slot, result in zip(slots, results):
            self._episode_of_slot[slot] = len(self.frames)
            self.frames.append([])
            self._keep(slot, result)
        return results

    def step(self, slots: Sequence[int], actions: Sequence[str]) -> list[Any]:
        results = self.pool.step(slots, actions)
        for slot, result in zip(slots, results):
            self._keep(slot, result)
        return results

    def _keep(self, slot: int, result: Any) -> None:
        shot = None if isinstance(result, EnvFailure) else result.observation.screenshot
        if shot is not None:
            self.frames[self._episode_of_slot[slot]].append(shot)

    def take(self) -> list[list[str | list]]:
        """The frames of the episodes played since the last call, in episode order."""
        frames, self.frames = self.frames, []
        return frames


def screenshot_image(shot: str | list) -> Image.Image:
    """A base64 PNG (this server) or a [h][w][rgb] int array (OpenEnv's BrowserGym server) as an image."""
    if isinstance(shot, str):
        return Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB")
    return Image.fromarray(np.asarray(shot, dtype=np.uint8))


def with_replies(record: dict[str, Any], episode: Episode) -> dict[str, Any]:
    """Each traced step also gets the model's reply it came from (the last turns of the chat; the earlier
    assistant turns are the prompt's worked example)."""
    replies = [m["content"] for m in episode.messages if m["role"] == "assistant"]
    steps = [dict(step) for step in record["trace"]]
    for step, reply in zip(steps, replies[len(replies) - len(steps) :]):
        step["reply"] = reply
    return {**record, "trace": steps}


def captions(episode: Episode) -> list[str]:
    """One line per frame of an episode: the goal after reset, then each action and what it got."""
    lines = [f"goal: {episode.goal}"]
    for i, step in enumerate(episode.trace, 1):
        outcome = step.get("env_error") or step.get("error") or f"reward {step.get('reward')}"
        lines.append(f"{i}: {step['action'] or '(no action)'} -> {outcome}")
    return lines


def save_frames(frames: list[str | list], folder: Path, gif_captions: list[str] | None = None) -> list[Path]:
    """step_0.png (the page after reset), step_1.png, ...; with captions also episode.gif, each frame
    captioned (the caption also keeps Pillow from merging identical pages into one frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [screenshot_image(shot) for shot in frames]
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"step_{i}.png")
        image.save(paths[-1])
    if gif_captions is not None and images:
        captioned = []
        for image, caption in zip(images, gif_captions):
            frame = Image.new("RGB", (image.width, image.height + 24), "white")
            frame.paste(image, (0, 0))
            ImageDraw.Draw(frame).text((4, image.height + 6), caption[:90], fill="black")
            captioned.append(frame)
        captioned[0].save(
            folder / "episode.gif", save_all=True, append_images=captioned[1:], duration=1000, loop=0
        )
    return paths


EVAL_COLUMNS = (
    "episodes",
    "success@1",
    "success@2",
    "success@4",
    "success@max",
    "steps_to_success",
    "mean_steps",
    "invalid_action_rate",
    "env_errors",
)


def success_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per (model, decoding), the success@N columns, steps and invalid-action rate."""
    return markdown_table([{k: row.get(k) for k in ("model", "decoding", *EVAL_COLUMNS)} for row in rows])


def write_traces(
    name: str, episodes: list[Episode], frames: list[list[str | list]], out_dir: Path, gif: bool
) -> None:
    """traces/NAME.json, and the screenshots (and GIFs) of each episode when it has any."""
    traces = []
    for i, (episode, shots) in enumerate(zip(episodes, frames)):
        trace = with_replies(episode_record(episode), episode)
        if shots:
            folder = out_dir / "screenshots" / name / f"{i:03d}-seed{episode.seed}"
            paths = save_frames(shots, folder, captions(episode) if gif else None)
            trace["screenshots"] = [str(p.relative_to(out_dir)) for p in paths]
        traces.append(trace)
    (out_dir / "traces").mkdir(parents=True, exist_ok=True)
    (out_dir / "traces" / f"{name}.json").write_text(json.dumps(traces, indent=1) + "\n")


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    samples: int = 1,
    baseline: bool = True,
    screenshots: bool = False,
    gif: bool = False,
) -> list[dict[str, Any]]:
    """Greedy and sampled episodes of a checkpoint and of its base model (the baseline) on held-out seeds.

    Writes into `out_dir`: success_table.md and results.json (one row per model and decoding), and
    traces/MODEL-DECODING.json (goal, each action with its reward, error and the model's reply); with
    `screenshots`, a PNG per step (and with `gif` a captioned GIF per episode) under
    screenshots/MODEL-DECODING/NNN-seedS/, their paths relative to `out_dir` in the trace.
    `overrides` are dotted settings on the checkpoint's config (eval.num_seeds=64, env.mode=remote, ...).
    """
    out_dir = Path(out_dir)
    policy, tokenizer, cfg = load_checkpoint(checkpoint)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    screenshots = screenshots or gif
    chat = ChatFormat(tokenizer, cfg.model.eot_token)
    t = cfg.trainer
    sampling = SamplingParams(t.temperature, t.top_p, t.get("top_k") or 0)
    models = {"base": lambda: load_policy(cfg.model)[0]} if baseline else {}
    models["checkpoint"] = lambda: policy
    seeds, tasks = heldout_seeds(cfg), list(cfg.suite.tasks)
    rows = []
    with env_pool(cfg, screenshot=screenshots) as pool:
        recorder = ScreenshotRecorder(pool) if screenshots else None
        for model_name, load in models.items():
            generator = HFGenerator(
                load(), tokenizer.pad_token_id, chat.eot_id, sampling, t.bf16, cfg.infra.reuse_kv_cache
            )
            engine = RolloutEngine(
                model_policy(generator), recorder or pool, chat, task_configs(cfg), t.max_completion_length
            )
            for decoding, runs in (("greedy", seeds), ("sampled", seeds * samples)):
                metrics, episodes = evaluate(engine, tasks, runs, greedy=decoding == "greedy")
                frames = recorder.take() if recorder else [[] for _ in episodes]
                write_traces(f"{model_name}-{decoding}", episodes, frames, out_dir, gif)
                mean_steps = sum(e.steps for e in episodes) / len(episodes)
                rows.append({"model": model_name, "decoding": decoding, **metrics, "mean_steps": mean_steps})
    rows = [jsonable(row) for row in rows]
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "success_table.md").write_text(
        f"Held-out evaluation of {checkpoint} on {', '.join(tasks)}, seeds {seeds[0]}..{seeds[-1]} "
        f"({samples} sampled episode(s) per seed at temperature {t.temperature}).\n\n" + success_table(rows)
    )
    return rows
