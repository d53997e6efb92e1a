"""Multi-step episodes, batched by turn, each kept as ONE token sequence for GRPO.

An episode's tokens:  prompt_ids = chat template(system, [example], first observation, generation prompt)
                      completion_ids = action_1 <eot> | observation_2 ... <assistant> | action_2 <eot> | ...
`env_mask` is 1 on tokens the model sampled and 0 on tokens the environment wrote; logprobs are the sampler's
on model tokens and 0 elsewhere. Each turn is generated from exactly the ids the trainer will later score, so
the sampler's and the trainer's logprobs agree (tests/test_rollout.py::test_logprobs_match_trainer).

At every turn: one policy call for all live episodes, then all their env steps at once (one session each).
The policy is the model (`model_policy`: a generator continues each episode's token sequence) or a script
that reads the last observation (`scripted_policy`: the oracles of browserrl.oracle, baselines), so RL
episodes, held-out evaluations and SFT demonstrations are the same `Episode`, built by this one loop. A
guided episode (grpo.guided, browserrl.groups) has its first turns played by the engine's `guide`, the oracle,
written as env tokens (env_mask 0): the trainer reads them as context, like the observations.

Why TRL's `rollout_func` and not its `environment_factory`: `environment_factory` drives an environment
through the model's tool-call template, one tool call per turn. Here a turn is a plain-text action
(`click('13')`) that any chat model can write, including SmolLM2 and LFM2 checkpoints without a tool-call
template, and the turns of all live episodes are batched into one generate call and one concurrent round of
env steps; `rollout_func` lets this loop own both and hand TRL finished token sequences with `env_mask`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from browserrl.env.actions import DEFAULT_ALLOWED, extract_action, validate_action
from browserrl.generation import Generator, Turn
from browserrl.pool import EnvFailure, EnvPool
from browserrl.prompts import initial_messages, observation_text
from browserrl.settings import TaskSettings

log = logging.getLogger(__name__)

#: MiniWoB's raw score of a fully solved page (1.0; float tolerance for the partial-credit tasks' sums).
FULL_SCORE = 1.0 - 1e-6


@dataclass
class Episode:
    task: str
    seed: int
    max_steps: int = 1
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    goal: str = ""
    steps: int = 0
    invalid_actions: int = 0
    success: bool = False
    raw_reward: float = 0.0
    done: bool = False
    truncated: bool = False
    env_error: str | None = None
    expert: bool = False  # played by the scripted oracle inside a GRPO group (browserrl.groups)
    guided_steps: int = 0  # its first turns are the oracle's, env tokens to the trainer (browserrl.groups)
    observation: Any = field(default=None, repr=False)  # the last one: what a scripted policy reads

    def extend(self, ids: Sequence[int], logprobs: Sequence[float] | None, from_model: bool) -> None:
        self.completion_ids += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.env_mask += [int(from_model)] * len(ids)


@dataclass
class RolloutBatch:
    episodes: list[Episode]
    generate_s: float = 0.0
    env_s: float = 0.0


class ChatFormat:
    """Token ids for the first prompt and for each observation appended after a model turn.

    Built once per model: it checks the chat template on a short conversation, so a template that cannot
    grow an episode turn by turn fails at load, before any rollout.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, eot_token: str | None = None):
        self.tokenizer = tokenizer
        self.eot_token = eot_token or tokenizer.eos_token
        self.eot_id = tokenizer.convert_tokens_to_ids(self.eot_token)
        conversation = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
        if self.eot_token not in self.render(conversation, generation_prompt=False):
            raise ValueError(
                f"the chat template never writes end-of-turn {self.eot_token!r}: set model.eot_token"
            )
        self.continuation_ids(conversation, "u")

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.render(messages, generation_prompt=True))

    def continuation_ids(self, messages: list[dict[str, str]], user_text: str) -> list[int]:
        """Tokens between the model's end-of-turn and its next turn: the new user turn + generation prompt."""
        before = self.render(messages, generation_prompt=False)
        after = self.render([*messages, {"role": "user", "content": user_text}], generation_prompt=True)
        cut = before.rindex(self.eot_token) + len(self.eot_token)
        if not after.startswith(before[:cut]):
            raise ValueError(
                "chat template re-renders earlier turns differently; multi-turn episodes need a "
                "template whose history is a prefix of the next prompt"
            )
        return self.encode(after[cut:])


def parse_instance(prompt: str) -> tuple[str, int]:
    """Dataset prompts are JSON task instances: {"task": "click-test", "seed": 17}."""
    row = json.loads(prompt)
    return row["task"], int(row["seed"])


def instance_prompt(task: str, seed: int) -> str:
    return json.dumps({"task": task, "seed": seed})


#: Plays one turn of each live episode: (episodes, greedy, max_new_tokens) -> one Turn each.
Policy = Callable[[Sequence[Episode], bool, int], list[Turn]]


def model_policy(generator: Generator) -> Policy:
    """The model's turns: the generator continues each episode's token sequence (prompt + completion)."""

    def policy(episodes: Sequence[Episode], greedy: bool, max_new_tokens: int) -> list[Turn]:
        return generator([e.prompt_ids + e.completion_ids for e in episodes], greedy, max_new_tokens)

    return policy


def scripted_policy(act: Callable[[Any], str | None], chat: ChatFormat) -> Policy:
    """Turns written by a script from the last observation (an oracle, a baseline), tokenized as the model's
    would be: the action, then end-of-turn. None (the script does not know the page) is an empty turn,
    which the env refuses like any invalid action."""

    def policy(episodes: Sequence[Episode], greedy: bool, max_new_tokens: int) -> list[Turn]:
        turns = []
        for episode in episodes:
            action = act(episode.observation)
            ids = (chat.encode(action) if action else []) + [chat.eot_id]
            turns.append(Turn(ids, [0.0] * len(ids), finished=True))
        return turns

    return policy


class RolloutEngine:
    """Plays episodes: the policy for the turns, the env pool for the pages.

    `tasks` holds each task's settings by name (browserrl.config.task_configs): its episode cap, tokens per
    turn, allowed actions, observation delay and prompt. `max_completion_length`
    (trainer.max_completion_length) bounds an episode's completion_ids, and `max_positions` (the model's
    max_position_embeddings) its prompt and completion together: an episode whose next observation and turn
    would not fit ends there, truncated, like one that reached max_steps.
    """

    def __init__(
        self,
        policy: Policy,
        pool: EnvPool,
        chat: ChatFormat,
        tasks: Mapping[str, TaskSettings],
        max_completion_length: int | None = None,
        max_positions: int | None = None,
        guide: Policy | None = None,
    ):
        """`guide`: the policy that plays an episode's first `guided_steps` turns (the scripted oracle)."""
        self.policy, self.pool, self.chat, self.tasks = policy, pool, chat, tasks
        self.max_completion_length, self.max_positions = max_completion_length, max_positions
        self.guide = guide
        self._over_budget: set[str] = set()  # tasks whose episodes a token limit has cut (warned once)

    def play(
        self,
        instances: Sequence[tuple[str, int]],
        greedy: bool = False,
        progress: str | None = None,
        guided_steps: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """Every (task, seed) instance as one episode, `pool.size` at a time; `progress`: a bar with that
        label (evaluations of hundreds of episodes take minutes on CPU). `guided_steps`: per instance, how
        many first turns the guide plays (its tokens masked as the env's; none by default)."""
        batch = RolloutBatch([])
        guided_steps = guided_steps or [0] * len(instances)
        with tqdm(total=len(instances), desc=progress, unit="episode", disable=progress is None) as bar:
            for start in range(0, len(instances), self.pool.size):
                end = start + self.pool.size
                self._play_chunk(instances[start:end], guided_steps[start:end], greedy, batch)
                bar.update(len(instances[start:end]))
        return batch

    def _play_chunk(
        self,
        instances: Sequence[tuple[str, int]],
        guided_steps: Sequence[int],
        greedy: bool,
        batch: RolloutBatch,
    ) -> None:
        episodes = [
            Episode(task, seed, max_steps=self.tasks[task].max_env_steps, guided_steps=guided)
            for (task, seed), guided in zip(instances, guided_steps)
        ]
        delays = [self.tasks[e.task].observation_delay for e in episodes]
        options = [{"observation_delay": d, "max_steps": e.max_steps} for d, e in zip(delays, episodes)]
        t0 = time.perf_counter()
        results = self.pool.reset(
            range(len(episodes)), [e.task for e in episodes], [e.seed for e in episodes], options
        )
        batch.env_s += time.perf_counter() - t0
        for episode, result in zip(episodes, results):
            if isinstance(result, EnvFailure):
                episode.env_error, episode.done = result.message, True
                episode.prompt_ids = [self.chat.eot_id]
                episode.extend([self.chat.eot_id], None, from_model=False)  # a valid, fully masked sequence
                continue
            episode.observation = result.observation
            episode.goal = result.observation.goal
            episode.messages = initial_messages(result.observation, self.tasks[episode.task])
            episode.prompt_ids = self.chat.prompt_ids(episode.messages)

        while live := [i for i, e in enumerate(episodes) if not e.done]:
            by_length = defaultdict(list)  # one policy call per tokens-per-turn setting (one, in most suites)
            for i in live:
                by_length[self.tasks[episodes[i].task].max_action_tokens].append(i)
            actions = {}
            t0 = time.perf_counter()
            for max_new_tokens, group in by_length.items():
                turns = self._turns([episodes[i] for i in group], greedy, max_new_tokens)
                actions |= {i: self._take_turn(episodes[i], turn) for i, turn in zip(group, turns)}
            batch.generate_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            results = self.pool.step(live, [actions[i] for i in live])
            batch.env_s += time.perf_counter() - t0
            for i, result in zip(live, results):
                self._observe(episodes[i], actions[i], result)
        batch.episodes += episodes

    def _turns(self, episodes: Sequence[Episode], greedy: bool, max_new_tokens: int) -> list[Turn]:
        """One turn each: the guide's for an episode still in its guided start, the policy's for the rest
        (an engine without a guide plays a guided start by its own policy: the expert's, the oracle too)."""
        guided = [self.guide is not None and e.steps < e.guided_steps for e in episodes]
        turns: dict[int, Turn] = {}
        for by_guide, policy in ((True, self.guide), (False, self.policy)):
            picked = [i for i, g in enumerate(guided) if g == by_guide]
            if picked:
                played = policy([episodes[i] for i in picked], greedy, max_new_tokens)
                turns |= dict(zip(picked, played))
        return [turns[i] for i in range(len(episodes))]

    def _take_turn(self, episode: Episode, turn: Turn) -> str:
        """Append the turn (a guided one as env tokens); return the action to send (raw text when it holds no
        valid action)."""
        from_model = episode.steps >= episode.guided_steps
        episode.extend(turn.ids, turn.logprobs if from_model else None, from_model=from_model)
        if not turn.finished:  # cut at max_new_tokens: close the turn so the sequence stays well-formed
            episode.extend([self.chat.eot_id], None, from_model=False)
        text = self.chat.tokenizer.decode(turn.ids, skip_special_tokens=True).strip()
        action = extract_action(text)
        allowed = self.tasks[episode.task].allowed_actions or DEFAULT_ALLOWED
        if action is None or validate_action(action, frozenset(allowed)) is not None:
            episode.invalid_actions += 1
            action = action or text  # the env refuses it with an error observation: the episode goes on
        episode.messages.append({"role": "assistant", "content": text})
        return action

    def _observe(self, episode: Episode, action: str, result: Any) -> None:
        episode.steps += 1
        if isinstance(result, EnvFailure):
            episode.env_error, episode.done = result.message, True
            episode.trace.append({"action": action, "env_error": result.message})
            return
        obs = episode.observation = result.observation
        episode.raw_reward = float(obs.metadata.get("raw_reward", result.reward or 0.0))
        # Solved = MiniWoB's full score. BrowserGym's reward is 1 for any positive score, and the checkbox
        # tasks score (right - wrong) / boxes: half-right answers would count. A server that sends no raw
        # score (OpenEnv's) is taken at its reward.
        if "raw_reward" in obs.metadata:
            episode.success = episode.raw_reward >= FULL_SCORE
        else:
            episode.success = (result.reward or 0.0) > 0
        episode.done = bool(result.done)
        episode.truncated = bool(obs.metadata.get("truncated"))  # the server's max_steps may end it first
        episode.trace.append(
            {
                "action": action,
                "reward": result.reward,
                "done": result.done,
                "error": obs.error if obs.last_action_error else None,
            }
        )
        if episode.done:
            return
        if episode.steps >= episode.max_steps:
            episode.done = episode.truncated = True
            return
        task = self.tasks[episode.task]
        user_text = observation_text(obs, task)
        env_ids = self.chat.continuation_ids(episode.messages, user_text)
        next_turn = len(env_ids) + task.max_action_tokens + 1  # the observation, a turn, its end
        after_prompt = self.max_positions and self.max_positions - len(episode.prompt_ids)
        limits = {  # the completion's token budget; the model's positions the prompt leaves
            "trainer.max_completion_length": self.max_completion_length,
            "the model's max_position_embeddings": after_prompt,
        }
        for name, budget in limits.items():
            if budget is not None and len(episode.completion_ids) + next_turn > budget:
                episode.done = episode.truncated = True
                if episode.task not in self._over_budget:  # a silent cap makes long solutions unreachable
                    self._over_budget.add(episode.task)
                    log.warning(
                        "%s: an episode ended at step %d of its %d: the next observation and turn do not fit "
                        "%s=%d tokens%s",
                        episode.task, episode.steps, episode.max_steps, name, budget,
                        "; raise it if the task needs more steps" if name.startswith("trainer") else
                        " after the prompt; a model with more positions, or a shorter prompt, is needed",
                    )  # fmt: skip
                return
        episode.extend(env_ids, None, from_model=False)
        episode.messages.append({"role": "user", "content": user_text})


def trainer_output(batch: RolloutBatch, step_metrics: dict[str, float] | None = None) -> dict[str, list[Any]]:
    """rollout_func's return value: one sequence per episode, plus fields the reward functions read (TRL
    gives each episode its entry of a list, and a scalar, the batch's timings and `step_metrics`, to every
    episode)."""
    eps = batch.episodes
    return {
        "prompt_ids": [e.prompt_ids for e in eps],
        "completion_ids": [e.completion_ids for e in eps],
        "logprobs": [e.logprobs for e in eps],
        "env_mask": [e.env_mask for e in eps],
        "task": [e.task for e in eps],
        "success": [e.success for e in eps],
        "steps": [e.steps for e in eps],
        "max_steps": [e.max_steps for e in eps],
        "invalid_actions": [e.invalid_actions for e in eps],
        "valid_action_rate": [1 - e.invalid_actions / e.steps if e.steps else 0.0 for e in eps],
        "truncated": [e.truncated for e in eps],
        "env_error": [e.env_error is not None for e in eps],
        "expert": [e.expert for e in eps],
        "guided": [e.guided_steps > 0 for e in eps],
        "generate_s": batch.generate_s,
        "env_s": batch.env_s,
        "generated_tokens": sum(sum(e.env_mask) for e in eps if not e.expert),
        "step_metrics": step_metrics or {},
    }
