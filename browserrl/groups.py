"""A GRPO step's groups: drawn until the step holds enough that teach, with an expert's episode in a group
the policy failed entirely.

GRPO's advantage is an episode's reward against its group's mean, so a group whose episodes all got the same
reward teaches nothing, yet TRL would still spend a forward and a backward on each of its episodes. After an
SFT warm-up most groups are all-success; from the base model, all are all-failure.

- Dynamic sampling (DAPO, arXiv 2503.14476): groups are drawn from the task sampler
  (browserrl.curriculum) and played until the step holds its number of groups with a spread in reward, or
  until it has drawn `max_draws_per_group` times that number. At the cap, the step is filled up with groups
  drawn without spread: their advantages are all zero and the trainer spends no forward/backward on them
  (browserrl.grpo), so such a step trains on fewer groups, or on none.
- Expert in the group (LUFFY, arXiv 2504.14945): in a group whose episodes all failed, the scripted oracle
  plays the same instance once and its episode replaces one of the policy's, so the group has a spread and
  the expert's turns get a positive advantage. Its tokens are the model's turns in the sequence (env_mask 1),
  scored by the current policy in the loss like the policy's own. Their sampler logprobs are NaN (no model
  sampled them), which TRL reads as "no importance correction" (ratio 1). On CPU (no vLLM) TRL takes the old
  logprobs as the current ones, detached, so the ratio is exactly 1, clipping never binds, and the
  gradient on an expert token is advantage x grad log pi(token): imitation weighted by the advantage,
  2-8% of a step's loss tokens (`expert/token_share`); the trainer's `expert_sft_weight` gives it an
  SFT loss of its own instead (browserrl.grpo). Each such episode is a demonstration and is counted as one
  (`expert_episodes`).
- Guided starts (`guided`; a reverse curriculum, as in R3, arXiv 2402.05808): a page the expert solved for a
  group of failures in L >= 3 turns comes back in a later draw as a group that starts from the oracle's
  state k turns in, k uniform in 1..L-2, so the policy meets the page's last turns, where a long page is
  lost (a box left unchecked before Submit), without first having to play its early ones right. The
  oracle's k turns are in each episode's sequence as env tokens (env_mask 0: context, never trained on);
  the policy plays the rest. Such groups take at most half of a draw (its one group, when it draws one), from
  the latest 32 pages queued; their outcomes say nothing of the policy on whole pages, so the task sampler
  never sees them. The prefix replays the expert episode already counted; an expert episode put into a
  guided group that failed is counted again.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from browserrl.curriculum import TaskSampler
from browserrl.rollout import Episode, RolloutBatch, RolloutEngine

#: Rewards closer than this are equal: such a group has no spread (TRL's test is std ~ 0).
EQUAL = 1e-6

#: Episodes -> each one's total reward (None: not scorable, an env error), as the trainer will score them.
Score = Callable[[Sequence[Episode]], list[float | None]]


@dataclass
class Group:
    """The episodes of one (task, seed) instance and their rewards."""

    episodes: list[Episode]
    rewards: list[float | None]

    @property
    def task(self) -> str:
        return self.episodes[0].task

    @property
    def teaches(self) -> bool:
        scored = [r for r in self.rewards if r is not None]
        return len(scored) > 1 and max(scored) - min(scored) > EQUAL

    @property
    def guided_steps(self) -> int:
        return self.episodes[0].guided_steps

    @property
    def all_failed(self) -> bool:
        return not any(e.success for e in self.episodes)

    @property
    def tokens(self) -> int:
        return sum(len(e.prompt_ids) + len(e.completion_ids) for e in self.episodes)


@dataclass
class StepGroups:
    """What a step plays: its groups in order (those that teach first), and how it got them."""

    groups: list[Group] = field(default_factory=list)
    drawn: int = 0  # groups played this step (the policy's)
    zero_spread: int = 0  # of those, groups whose rewards were all equal before any expert
    expert_by_task: Counter[str] = field(default_factory=Counter)  # oracle episodes put into groups
    guided: int = 0  # of the groups drawn, those started from the oracle's state part-way
    queued: int = 0  # pages the expert showed that were queued for guided starts
    tokens_dropped: int = 0  # tokens of groups drawn and not handed to the trainer
    solved: list[bool] = field(default_factory=list)  # every policy episode drawn (kept or not), solved?
    task_weights: dict[str, float] = field(default_factory=dict)  # the sampler's, after this step
    generate_s: float = 0.0
    env_s: float = 0.0

    @property
    def expert_episodes(self) -> int:
        """Oracle episodes put into this step's groups: demonstrations."""
        return sum(self.expert_by_task.values())

    @property
    def kept(self) -> int:
        """Groups handed to the trainer that teach (the rest fill a step at the draw cap)."""
        return sum(g.teaches for g in self.groups)

    def batch(self) -> RolloutBatch:
        return RolloutBatch([e for g in self.groups for e in g.episodes], self.generate_s, self.env_s)

    def metrics(self) -> dict[str, float]:
        """Per-step numbers for the record (metrics.jsonl, W&B): `groups/*`, `expert/*` (with each task's
        expert episodes, `expert/TASK/episodes`, and the pages queued for guided starts,
        `groups/guided_queued`: what the expert reached), and each task's share of the next draws
        (`sampling/TASK/weight`). `groups/success_rate` is the policy's success over every episode drawn:
        the kept groups alone are biased toward a half. `expert/token_share` is the expert's part of the
        model-turn tokens handed to the trainer: the token-mean losses (dapo, the default) weigh each of its
        tokens by its advantage over all of them, so this share says how much of a step's gradient the
        demonstrations can be."""
        model = [(e.expert, sum(e.env_mask)) for g in self.groups for e in g.episodes]
        model_tokens = sum(n for _, n in model)
        return {
            "groups/drawn": self.drawn,
            "groups/kept": self.kept,
            "groups/frac_reward_zero_std": self.zero_spread / self.drawn if self.drawn else math.nan,
            "groups/success_rate": sum(self.solved) / len(self.solved) if self.solved else math.nan,
            "groups/guided": self.guided,
            "groups/guided_kept": sum(g.teaches for g in self.groups if g.guided_steps),
            "groups/guided_queued": self.queued,
            "expert/episodes": self.expert_episodes,
            **{f"expert/{task}/episodes": n for task, n in self.expert_by_task.items()},
            "expert/token_share": sum(n for x, n in model if x) / model_tokens if model_tokens else math.nan,
            "tokens/dropped": self.tokens_dropped,
            **{f"sampling/{task}/weight": w for task, w in self.task_weights.items()},
        }


class GroupCollector:
    """Plays a step's groups: `num_generations` episodes of each drawn instance, on the engine's policy."""

    def __init__(
        self,
        engine: RolloutEngine,
        sampler: TaskSampler,
        score: Score,
        num_generations: int,
        dynamic: bool = True,
        max_draws_per_group: float = 2.0,
        expert: RolloutEngine | None = None,
        guided: bool = False,
    ):
        """`expert`: an engine whose policy is the scripted oracle (oracle.demonstrator), or None. `guided`:
        pages the expert showed come back as guided starts (`engine` needs the oracle as its guide)."""
        if guided and (expert is None or engine.guide is None):
            raise ValueError("guided starts replay the expert's pages: they need the expert and a guide")
        self.engine, self.sampler, self.score = engine, sampler, score
        self.num_generations, self.dynamic, self.expert = num_generations, dynamic, expert
        self.max_draws_per_group, self.guided = max_draws_per_group, guided
        self.expert_total = 0  # expert episodes over the run: demonstrations GRPO consumed
        self.pending: deque[tuple[str, int, int]] = deque(maxlen=32)  # (task, seed, guided steps) to play

    def collect(self, wanted: int) -> StepGroups:
        """`wanted` groups for one step. Without dynamic sampling: the first `wanted` drawn, whatever their
        rewards. With it: drawn until `wanted` teach or `max_draws_per_group * wanted` were drawn, then
        filled up with the latest groups that do not teach."""
        step = StepGroups()
        limit = max(wanted, math.floor(self.max_draws_per_group * wanted)) if self.dynamic else wanted
        teaching: list[Group] = []
        idle: list[Group] = []
        while len(teaching) < wanted and step.drawn < limit:
            count = min(wanted - len(teaching), limit - step.drawn)
            guided = [self.pending.popleft() for _ in range(min(len(self.pending), max(1, count // 2)))]
            drawn = [(task, seed, 0) for task, seed in self.sampler.draw(count - len(guided))]
            for group in self._play(guided + drawn, step):
                (teaching if group.teaches or not self.dynamic else idle).append(group)
        fill = idle[::-1][: wanted - len(teaching)]
        step.groups = teaching + fill
        step.tokens_dropped = sum(g.tokens for g in idle) - sum(g.tokens for g in fill)
        step.task_weights = self.sampler.weights()
        return step

    def _play(self, instances: Sequence[tuple[str, int, int]], step: StepGroups) -> list[Group]:
        """Each (task, seed, guided steps) instance as a group: the policy's episodes (recorded by the
        sampler unless guided), then the expert's episode in each group of failures where the oracle solves
        the page."""
        n = self.num_generations
        played = self.engine.play(
            [(task, seed) for task, seed, _ in instances for _ in range(n)],
            guided_steps=[guided for *_, guided in instances for _ in range(n)],
        )
        step.generate_s += played.generate_s
        step.env_s += played.env_s
        step.drawn += len(instances)
        step.guided += sum(guided > 0 for *_, guided in instances)
        groups = []
        for start in range(0, len(played.episodes), n):
            episodes = played.episodes[start : start + n]
            groups.append(Group(episodes, self.score(episodes)))
            if episodes[0].guided_steps:
                continue
            solved = [e.success for e in episodes if e.env_error is None]
            self.sampler.record(episodes[0].task, solved)
            step.solved += solved
        step.zero_spread += sum(not g.teaches for g in groups)
        if self.expert is not None:
            self._add_expert([g for g in groups if not g.teaches and g.all_failed], step)
        return groups

    def _add_expert(self, groups: list[Group], step: StepGroups) -> None:
        if not groups:
            return
        shown = self.expert.play(
            [(g.task, g.episodes[0].seed) for g in groups], guided_steps=[g.guided_steps for g in groups]
        )
        step.env_s += shown.env_s
        for group, episode in zip(groups, shown.episodes):
            if not episode.success:  # no oracle for this page, or it failed: the group stays as it is
                continue
            if self.guided and not group.guided_steps and episode.steps >= 3:
                k = self.sampler.rng.randint(1, episode.steps - 2)  # the policy plays 2 turns or more
                self.pending.append((group.task, episode.seed, k))
                step.queued += 1
            episode.expert = True
            episode.logprobs = [math.nan if m else 0.0 for m in episode.env_mask]
            # in place of an unscorable episode if there is one: the group keeps every scored failure
            errors = [i for i, e in enumerate(group.episodes) if e.env_error is not None]
            slot = errors[0] if errors else len(group.episodes) - 1
            episodes = [*group.episodes[:slot], episode, *group.episodes[slot + 1 :]]
            rewards = self.score(episodes)
            if not Group(episodes, rewards).teaches:  # no scored failure left beside it
                continue
            group.episodes, group.rewards = episodes, rewards
            step.expert_by_task[group.task] += 1
            self.expert_total += 1
