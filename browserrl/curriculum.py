"""Which (task, seed) instance a GRPO step plays next: uniformly over the suite's tasks, or weighted by how
much each task's next group is likely to teach.

A group of episodes of one instance teaches only when its rewards differ. A task whose recent success rate
is p gives such a group most often near p = 1/2 and almost never at p = 0 or 1 (without an expert in the
group), so `learning` weighs each task by p(1 - p) from a moving window of its latest training episodes,
with a floor so that a solved or a hopeless task is still visited and can be seen to change. `teaching`
weighs it by the chance that its next group of G episodes has a spread, 1 - p^G - (1 - p)^G, and with the
expert in the group (browserrl.groups) by 1 - p^G: there a group the policy fails entirely teaches too, so
a task the policy cannot solve yet is drawn as often as a half-solved one, where `learning` gives it the
floor and the expert rarely gets to show it (measured at 4 demonstrations per task: docs/benchmarks.md,
"A third seed at 16 steps, and which tasks the expert's groups reached"). A task not yet played counts as
p = 1/2. `uniform` draws every task equally often.

The sampler owns the seeds too: each draw takes a fresh training seed in [0, train_seeds) from its own
random stream, so a run's instances depend on its seed alone, and resuming from a checkpoint continues the
stream (`state_dict` / `load_state_dict`, saved with each checkpoint by `SamplerCheckpoint`).
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

MODES = ("uniform", "learning", "teaching")


class TaskSampler:
    def __init__(
        self,
        tasks: Sequence[str],
        train_seeds: int,
        mode: str = "uniform",
        window: int = 32,
        floor: float = 0.02,
        seed: int = 0,
        group_size: int = 8,
        expert: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"task sampling must be one of {MODES}, got {mode!r}")
        self.tasks, self.train_seeds, self.mode, self.floor = list(tasks), train_seeds, mode, floor
        self.group_size, self.expert = group_size, expert
        self.recent: dict[str, deque[float]] = {t: deque(maxlen=window) for t in self.tasks}
        self.rng = random.Random(seed)

    def success(self, task: str) -> float:
        """The task's success rate over its window of training episodes (1/2 before any)."""
        outcomes = self.recent[task]
        return sum(outcomes) / len(outcomes) if outcomes else 0.5

    def weights(self) -> dict[str, float]:
        """Each task's share of the next draws (they sum to 1)."""
        if self.mode == "uniform":
            raw = dict.fromkeys(self.tasks, 1.0)
        else:
            value = self.teaches if self.mode == "teaching" else lambda p: p * (1 - p)
            raw = {t: max(value(self.success(t)), self.floor) for t in self.tasks}
        total = sum(raw.values())
        return {t: w / total for t, w in raw.items()}

    def teaches(self, p: float) -> float:
        """The chance that a group of the task's episodes has a spread in reward, its episodes succeeding
        independently with chance p: not all successes and, without the expert, not all failures."""
        all_failed = 0.0 if self.expert else (1 - p) ** self.group_size
        return 1 - p**self.group_size - all_failed

    def draw(self, n: int) -> list[tuple[str, int]]:
        """n instances: tasks by `weights`, each with a fresh training seed."""
        weights = self.weights()
        tasks = self.rng.choices(list(weights), list(weights.values()), k=n)
        return [(task, self.rng.randrange(self.train_seeds)) for task in tasks]

    def record(self, task: str, successes: Iterable[bool]) -> None:
        """The policy's training episodes of `task` (not an expert's: they say nothing of the policy)."""
        self.recent[task].extend(float(s) for s in successes)

    def state_dict(self) -> dict[str, Any]:
        return {
            "recent": {t: list(d) for t, d in self.recent.items()},
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for task, outcomes in state["recent"].items():
            if task in self.recent:
                self.recent[task].extend(outcomes)
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def state_file(checkpoint: str | Path, rank: int) -> Path:
    """Each process draws its own instances: one state per rank in a checkpoint."""
    return Path(checkpoint) / f"task_sampler_{rank}.json"


class SamplerCheckpoint(TrainerCallback):
    """Saves the sampler's state into each trainer checkpoint: a resumed run draws as the run would have."""

    def __init__(self, sampler: TaskSampler, rank: int = 0):
        self.sampler, self.rank = sampler, rank

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 - HF callback signature
        path = state_file(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.sampler.state_dict()) + "\n")

    def resume(self, checkpoint: str | Path | None) -> None:
        """The sampler as it was saved with `checkpoint` (a checkpoint saved before it existed: as is)."""
        path = state_file(checkpoint, self.rank) if checkpoint else None
        if path is not None and path.exists():
            self.sampler.load_state_dict(json.loads(path.read_text()))
