"""Recorded episodes: JSON traces (what the policy did, what the page answered, the model's replies) and,
when the env sends screenshots, a PNG per step and a captioned GIF per episode."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from browserrl.metrics import episode_record
from browserrl.pool import EnvFailure, EnvPool
from browserrl.rollout import Episode


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


def record_trace(episode: Episode, frames: list[str | list]) -> dict[str, Any]:
    """An episode as JSON: its record (browserrl.metrics.episode_record), each step with the model's reply
    it came from (the last assistant turns: the earlier ones are the prompt's worked example), and the
    screenshots the env sent, if any, under `frames` until `write_traces` saves them."""
    record = episode_record(episode)
    replies = [m["content"] for m in episode.messages if m["role"] == "assistant"]
    steps = [dict(step) for step in record["trace"]]
    for step, reply in zip(steps, replies[len(replies) - len(steps) :]):
        step["reply"] = reply
    return {**record, "trace": steps, "frames": frames}


def captions(trace: dict[str, Any]) -> list[str]:
    """One line per frame of an episode: the goal after reset, then each action and what it got."""
    lines = [f"goal: {trace['goal']}"]
    for i, step in enumerate(trace["trace"], 1):
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


def write_traces(name: str, traces: list[dict[str, Any]], out_dir: Path, gif: bool) -> None:
    """traces/NAME.json; the frames of each trace that has any become PNGs (and a GIF), referenced by path."""
    written = []
    for i, recorded in enumerate(traces):
        trace = {k: v for k, v in recorded.items() if k != "frames"}
        frames = recorded.get("frames") or []
        if frames:
            folder = out_dir / "screenshots" / name / f"{i:03d}-{trace['task']}-seed{trace['seed']}"
            paths = save_frames(frames, folder, captions(trace) if gif else None)
            trace["screenshots"] = [str(p.relative_to(out_dir)) for p in paths]
        written.append(trace)
    (out_dir / "traces").mkdir(parents=True, exist_ok=True)
    (out_dir / "traces" / f"{name}.json").write_text(json.dumps(written, indent=1) + "\n")
