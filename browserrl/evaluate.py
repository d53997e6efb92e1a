"""Held-out evaluation: the same episodes and metrics as training, on seeds training never sees."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from transformers import TrainerCallback

from browserrl.env.pool import EnvFailure, EnvPool
from browserrl.generation import HFGenerator, SamplingParams
from browserrl.metrics import episode_metrics, episode_record, jsonable
from browserrl.modeling import load_checkpoint, load_policy
from browserrl.rollout import ChatFormat, Episode, RolloutEngine

log = logging.getLogger(__name__)


def heldout_seeds(cfg: DictConfig) -> list[int]:
    return list(range(cfg.eval.first_seed, cfg.eval.first_seed + cfg.eval.num_seeds))


def evaluate(
    engine: RolloutEngine, task: str, seeds: list[int], greedy: bool
) -> tuple[dict[str, float], list[Episode]]:
    batch = engine.play([(task, s) for s in seeds], greedy=greedy)
    return episode_metrics(batch.episodes), batch.episodes


def heldout_report(engine: RolloutEngine, cfg: DictConfig, prefix: str) -> dict[str, float]:
    """`{prefix}/success_rate`, ... sampled at the training temperature; `{prefix}/greedy_*` if enabled."""
    seeds = heldout_seeds(cfg)
    decodings = "sampled and greedy" if cfg.eval.greedy else "sampled"
    log.info("held-out eval (%s): %d %s episodes of %s", prefix, len(seeds), decodings, cfg.task.name)
    sampled, _ = evaluate(engine, cfg.task.name, seeds, greedy=False)
    report = {f"{prefix}/{k}": v for k, v in sampled.items()}
    if cfg.eval.greedy:
        greedy, _ = evaluate(engine, cfg.task.name, seeds, greedy=True)
        report |= {f"{prefix}/greedy_{k}": v for k, v in greedy.items()}
    return report


class PeriodicEval(TrainerCallback):
    """Held-out eval every `eval.every_steps` optimizer steps (0: never), on the live policy.

    The numbers go into the trainer's metric buffer, so they land as `eval/*` on that step's log line
    (metrics.jsonl, W&B) next to the training metrics, and the analysis can draw held-out curves.
    """

    def __init__(self, engine: RolloutEngine, cfg: DictConfig, metrics: dict[str, dict[str, list[float]]]):
        self.engine, self.cfg, self.metrics = engine, cfg, metrics
        self.every = int(cfg.eval.get("every_steps") or 0)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - HF callback signature
        if self.every and state.global_step % self.every == 0:
            for key, value in heldout_report(self.engine, self.cfg, "eval").items():
                self.metrics["train"][key].append(value)


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

    def reset(self, slots: Sequence[int], tasks: Sequence[str], seeds: Sequence[int]) -> list[Any]:
        results = self.pool.reset(slots, tasks, seeds)
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
    header = ["model", "decoding", *EVAL_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_cell(k, row.get(k)) for k in EVAL_COLUMNS]
        lines.append("| " + " | ".join([row["model"], row["decoding"], *cells]) + " |")
    return "\n".join(lines) + "\n"


def _cell(key: str, value: Any) -> str:
    if value is None:  # e.g. steps_to_success when nothing was solved
        return "-"
    return str(int(value)) if key in ("episodes", "env_errors") else f"{value:.3f}"


@contextmanager
def _env_url(cfg: DictConfig) -> Iterator[str]:
    """A local env server for this evaluation, or the configured remote url."""
    if cfg.env.mode == "remote":
        yield cfg.env.url
        return
    from browserrl.env.launcher import LocalEnvServer

    with LocalEnvServer(task=cfg.task.name, max_sessions=cfg.env.sessions + 2) as server:
        yield server.url


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
    sampling = SamplingParams(t.temperature, t.top_p, t.get("top_k") or 0, cfg.task.max_action_tokens)
    models = {"base": lambda: load_policy(cfg.model)[0]} if baseline else {}
    models["checkpoint"] = lambda: policy
    seeds = heldout_seeds(cfg)
    rows = []
    options = {"observation_delay": cfg.task.get("observation_delay", 0.0), "screenshot": screenshots}
    with _env_url(cfg) as url:
        pool = EnvPool(lambda: url, cfg.env.sessions, cfg.env.message_timeout_s, reset_options=options)
        recorder = ScreenshotRecorder(pool) if screenshots else None
        try:
            for model_name, load in models.items():
                generator = HFGenerator(load(), tokenizer.pad_token_id, chat.eot_id, sampling)
                engine = RolloutEngine(generator, recorder or pool, chat, cfg.task, t.max_completion_length)
                for decoding, runs in (("greedy", seeds), ("sampled", seeds * samples)):
                    metrics, episodes = evaluate(engine, cfg.task.name, runs, greedy=decoding == "greedy")
                    frames = recorder.take() if recorder else [[] for _ in episodes]
                    write_traces(f"{model_name}-{decoding}", episodes, frames, out_dir, gif)
                    mean_steps = sum(e.steps for e in episodes) / len(episodes)
                    rows.append(
                        {"model": model_name, "decoding": decoding, **metrics, "mean_steps": mean_steps}
                    )
        finally:
            pool.close()
    rows = [jsonable(row) for row in rows]
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "success_table.md").write_text(
        f"Held-out evaluation of {checkpoint} on {cfg.task.name}, seeds {seeds[0]}..{seeds[-1]} "
        f"({samples} sampled episode(s) per seed at temperature {t.temperature}).\n\n" + success_table(rows)
    )
    return rows
