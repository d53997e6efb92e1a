"""browserrl.groups and browserrl.curriculum: which groups a GRPO step plays, with scripted outcomes (no
model, no browser)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest

from browserrl.curriculum import SamplerCheckpoint, TaskSampler
from browserrl.groups import GroupCollector
from browserrl.rewards import scorer
from browserrl.rollout import Episode, RolloutBatch

G = 4  # episodes per group


class ScriptedEngine:
    """RolloutEngine.play with outcomes from `solved(task, seed, index in the group)`; records the instances
    played and their guided steps. Every episode: 3 prompt and 5 completion tokens, 2 of them the model's."""

    guide = None

    def __init__(self, solved: Callable[[str, int, int], bool]):
        self.solved, self.played = solved, []

    def play(
        self, instances: Sequence[tuple[str, int]], greedy: bool = False, guided_steps: Sequence[int] = ()
    ) -> RolloutBatch:
        self.played += list(instances)
        self.guided = list(guided_steps) or [0] * len(instances)
        episodes = []
        for i, ((task, seed), guided) in enumerate(zip(instances, self.guided)):
            e = Episode(task, seed, max_steps=2, prompt_ids=[1, 2, 3], steps=1, guided_steps=guided)
            e.extend([4, 5], [-0.5, -0.5], from_model=True)
            e.extend([6, 7, 8], None, from_model=False)
            e.success = self.solved(task, seed, i % G)
            episodes.append(e)
        return RolloutBatch(episodes, generate_s=1.0, env_s=0.5)


def collector(solved, tasks=("a", "b"), expert=None, **kwargs) -> tuple[GroupCollector, ScriptedEngine]:
    engine = ScriptedEngine(solved)
    sampler = TaskSampler(list(tasks), train_seeds=1000, seed=0)
    return GroupCollector(engine, sampler, scorer({"success": 1.0}), G, expert=expert, **kwargs), engine


def half_solved(task: str, seed: int, k: int) -> bool:
    return k < G // 2


def test_groups_that_teach_are_kept_and_the_others_replaced():
    """Task a is always solved (no spread), task b half the time: the step gets its 2 groups, both of b,
    however many a-groups the sampler drew first."""
    col, engine = collector(lambda t, s, k: t == "a" or k < 2, max_draws_per_group=10)
    step = col.collect(2)
    assert [g.task for g in step.groups] == ["b", "b"] and step.kept == 2
    drawn_a = sum(t == "a" for t, _ in engine.played) // G
    assert step.drawn == 2 + drawn_a and step.zero_spread == drawn_a
    assert step.tokens_dropped == drawn_a * G * 8
    metrics = step.metrics()
    assert metrics["groups/drawn"] == step.drawn and metrics["groups/kept"] == 2
    assert metrics["groups/frac_reward_zero_std"] == drawn_a / step.drawn
    assert len(step.batch().episodes) == 2 * G  # what TRL gets: whole groups, in blocks of G


def test_the_draw_cap_ends_a_step_with_groups_that_teach_nothing():
    """Nothing teaches: the step stops at 2 x 3 groups drawn and hands over 3 of them (all-equal rewards:
    zero advantages, which the trainer does not compute); the others' tokens are counted as dropped."""
    col, engine = collector(lambda t, s, k: True, max_draws_per_group=2)
    step = col.collect(3)
    assert step.drawn == 6 and len(engine.played) == 6 * G
    assert len(step.groups) == 3 and step.kept == 0 and step.zero_spread == 6
    assert step.tokens_dropped == 3 * G * 8
    assert step.metrics()["groups/frac_reward_zero_std"] == 1.0


def test_without_dynamic_sampling_every_drawn_group_is_the_step():
    col, engine = collector(lambda t, s, k: True, dynamic=False)
    step = col.collect(3)
    assert step.drawn == 3 and len(step.groups) == 3 and step.tokens_dropped == 0


def test_env_errors_are_not_scored_and_do_not_make_a_spread():
    """An episode an env error ended scores None (TRL leaves it out of the baseline, advantage 0)."""

    def solved(task, seed, k):
        return False

    col, engine = collector(solved, dynamic=False)
    original = engine.play

    def play(instances, greedy=False, guided_steps=()):
        batch = original(instances, greedy, guided_steps)
        batch.episodes[0].env_error = "reset: server gone"
        return batch

    engine.play = play
    group = col.collect(1).groups[0]
    assert group.rewards == [None, 0.0, 0.0, 0.0] and not group.teaches


class ScriptedExpert:
    """The oracle engine: solves every page it plays unless told otherwise."""

    def __init__(self, solves: bool = True, steps: int = 1):
        self.solves, self.steps, self.played = solves, steps, []

    def play(
        self, instances: Sequence[tuple[str, int]], greedy: bool = False, guided_steps: Sequence[int] = ()
    ) -> RolloutBatch:
        self.played += list(instances)
        self.guided = list(guided_steps) or [0] * len(instances)
        episodes = []
        for (task, seed), guided in zip(instances, self.guided):
            e = Episode(task, seed, 8, [1, 2, 3], steps=self.steps, success=self.solves, guided_steps=guided)
            e.extend([9, 9], [0.0, 0.0], from_model=True)
            episodes.append(e)
        return RolloutBatch(episodes, env_s=0.25)


def test_an_expert_episode_makes_an_all_failure_group_teach():
    expert = ScriptedExpert()
    col, _ = collector(lambda t, s, k: False, expert=expert)
    step = col.collect(2)
    assert step.kept == 2 and step.expert_episodes == 2 == col.expert_total
    for group in step.groups:
        shown = group.episodes[-1]
        assert shown.expert and (shown.task, shown.seed) == (group.task, group.episodes[0].seed)
        assert group.rewards == [0.0, 0.0, 0.0, 1.0]
        # its model turns: no sampler logprob (NaN: TRL applies no importance correction to them)
        assert all(math.isnan(lp) for lp, m in zip(shown.logprobs, shown.env_mask) if m)
    assert step.zero_spread == 2  # before the expert: both groups were all failures
    metrics = step.metrics()
    by_task = {k: v for k, v in metrics.items() if k in ("expert/a/episodes", "expert/b/episodes")}
    assert metrics["expert/episodes"] == 2 == sum(by_task.values())  # each task the expert reached, counted
    assert metrics["expert/token_share"] == 0.25  # 2 of each group's 8 model-turn tokens


def test_the_expert_joins_only_groups_of_failures_and_only_when_it_solves():
    expert = ScriptedExpert()
    col, _ = collector(lambda t, s, k: t == "a", expert=expert, max_draws_per_group=1)
    step = col.collect(4)
    assert all(t == "b" for t, _ in expert.played)  # a's all-success groups get no expert
    assert step.expert_episodes == len(expert.played)
    failing = ScriptedExpert(solves=False)
    col, _ = collector(lambda t, s, k: False, expert=failing, max_draws_per_group=1)
    step = col.collect(2)
    assert step.expert_episodes == 0 and step.kept == 0 and failing.played


def test_the_sampler_records_the_policy_s_episodes_only():
    col, _ = collector(lambda t, s, k: False, expert=ScriptedExpert(), tasks=("a",))
    col.collect(1)
    assert list(col.sampler.recent["a"]) == [0.0] * G


def guided_collector(solved, steps: int) -> tuple[GroupCollector, ScriptedEngine, ScriptedExpert]:
    """A collector with guided starts: the expert solves each page in `steps` turns."""
    engine, expert = ScriptedEngine(solved), ScriptedExpert(steps=steps)
    engine.guide = "the oracle"
    sampler = TaskSampler(["a", "b"], train_seeds=1000, seed=0)
    collector = GroupCollector(engine, sampler, scorer({"success": 1.0}), G, expert=expert, guided=True)
    return collector, engine, expert


def test_a_page_the_expert_showed_comes_back_as_a_guided_start():
    """A group of failures that the expert solves in 5 turns queues its page; the next draw plays it from
    the oracle's state k turns in (1 <= k <= 3: the policy keeps 2 turns or more), in at most half the draw's
    groups; the sampler and the policy's success rate never see a guided group."""
    col, engine, expert = guided_collector(lambda t, s, k: False, steps=5)
    first = col.collect(2)
    assert first.guided == 0 and len(col.pending) == 2 == first.metrics()["groups/guided_queued"]
    queued = list(col.pending)
    assert all(1 <= k <= 3 for *_, k in queued)
    recorded = {t: list(d) for t, d in col.sampler.recent.items()}
    second = col.collect(2)
    assert second.guided == 1 and engine.guided[:G] == [queued[0][2]] * G and engine.guided[G:] == [0] * G
    assert engine.played[:G] == [queued[0][:2]] * G
    guided = [g for g in second.groups if g.guided_steps]
    assert len(guided) == 1 and guided[0].teaches  # all failed: the expert joined it, from the same state
    assert expert.guided[0] == queued[0][2] and expert.played[-2] == queued[0][:2]
    assert second.solved == [False] * G  # the unguided group alone
    assert sum(len(d) for d in col.sampler.recent.values()) == sum(len(d) for d in recorded.values()) + G
    metrics = second.metrics()
    assert metrics["groups/guided"] == 1 and metrics["groups/guided_kept"] == 1
    assert second.expert_episodes == 2  # the expert in the guided group is counted again


def test_short_pages_and_solved_groups_queue_no_guided_start():
    col, _, _ = guided_collector(lambda t, s, k: False, steps=2)  # Submit and one more: nothing to leave
    col.collect(2)
    assert not col.pending
    col, _, _ = guided_collector(half_solved, steps=5)  # the policy solves some: no expert, no page
    col.collect(2)
    assert not col.pending


def test_guided_starts_need_the_expert_and_the_oracle_as_guide():
    engine = ScriptedEngine(half_solved)
    sampler = TaskSampler(["a"], train_seeds=10, seed=0)
    with pytest.raises(ValueError, match="guided"):
        GroupCollector(engine, sampler, scorer({"success": 1.0}), G, expert=ScriptedExpert(), guided=True)


def test_learning_weights_move_toward_a_task_that_starts_failing():
    sampler = TaskSampler(["easy", "hard"], train_seeds=100, mode="learning", window=8, floor=0.02)
    assert sampler.weights() == {"easy": 0.5, "hard": 0.5}  # neither played: p = 1/2 for both
    sampler.record("easy", [True] * 8)
    sampler.record("hard", [True] * 4 + [False] * 4)
    weights = sampler.weights()
    assert weights["hard"] > 0.9 and weights["easy"] == pytest.approx(0.02 / 0.27)
    sampler.record("easy", [False] * 4)  # easy starts failing: its window is now half failures
    assert sampler.weights()["easy"] == pytest.approx(0.5)
    draws = sampler.draw(2000)
    assert 0.4 < sum(t == "easy" for t, _ in draws) / 2000 < 0.6
    assert all(0 <= seed < 100 for _, seed in draws)


def test_teaching_weights_draw_a_failing_task_only_when_the_expert_can_show_it():
    """`teaching`: a task by the chance its next group has a spread. Without the expert a task the policy
    fails entirely gets the floor, as under `learning`; with it, such a group teaches too, so the task is
    drawn as often as a half-solved one, and only a solved task falls to the floor."""
    outcomes = {"solved": [True] * 8, "half": [True, False] * 4, "failing": [False] * 8}
    weights = {}
    for expert in (False, True):
        sampler = TaskSampler(list(outcomes), 100, mode="teaching", window=8, group_size=8, expert=expert)
        for task, solved in outcomes.items():
            sampler.record(task, solved)
        weights[expert] = sampler.weights()
    floor = 0.02
    raw = {"solved": floor, "half": 1 - 2 * 0.5**8, "failing": floor}  # not all successes, not all failures
    assert weights[False] == pytest.approx({t: w / sum(raw.values()) for t, w in raw.items()})
    raw = {"solved": floor, "half": 1 - 0.5**8, "failing": 1.0}  # with the expert: not all successes
    assert weights[True] == pytest.approx({t: w / sum(raw.values()) for t, w in raw.items()})


def test_uniform_draws_every_task_and_the_state_resumes(tmp_path):
    sampler = TaskSampler(["a", "b", "c"], train_seeds=10**5, seed=3)
    assert sampler.weights() == {t: pytest.approx(1 / 3) for t in "abc"}
    sampler.record("a", [True, False])
    saver = SamplerCheckpoint(sampler, rank=1)
    args, state = type("A", (), {"output_dir": str(tmp_path)}), type("S", (), {"global_step": 5})
    saver.on_save(args, state, None)
    expected = sampler.draw(5)
    resumed = TaskSampler(["a", "b", "c"], train_seeds=10**5, seed=99)
    SamplerCheckpoint(resumed, rank=1).resume(tmp_path / "checkpoint-5")
    assert resumed.draw(5) == expected and list(resumed.recent["a"]) == [1.0, 0.0]
    SamplerCheckpoint(resumed, rank=0).resume(tmp_path / "checkpoint-5")  # no state for rank 0: as is


@pytest.mark.parametrize("errors", [1, G - 1, G])
def test_the_expert_takes_an_unscorable_episode_s_place_and_counts_only_when_it_teaches(errors):
    """With env errors in a failed group the expert replaces one of them, keeping every scored failure; with
    no scored failure left beside it the group could not teach, and the expert is neither used nor counted."""
    col, engine = collector(lambda t, s, k: False, expert=ScriptedExpert(), dynamic=False)
    original = engine.play

    def play(instances, greedy=False, guided_steps=()):
        batch = original(instances, greedy, guided_steps)
        for e in batch.episodes[:errors]:
            e.env_error = "step: server gone"
        return batch

    engine.play = play
    group = col.collect(1).groups[0]
    if errors < G:
        assert group.episodes[0].expert and group.rewards[0] == 1.0 and group.rewards[-1] == 0.0
        assert col.expert_total == 1
    else:
        assert not any(e.expert for e in group.episodes) and col.expert_total == 0
