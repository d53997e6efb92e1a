"""Multi-step episodes, batched by turn, each kept as ONE token sequence for GRPO.

An episode's tokens:  prompt_ids = chat template(system, [example], first observation, generation prompt)
                      completion_ids = action_1 <eot> | observation_2 ... <assistant> | action_2 <eot> | ...
`env_mask` is 1 on tokens the model sampled and 0 on tokens the environment wrote; logprobs are the sampler's
on model tokens and 0 elsewhere. Each turn is generated from exactly the ids the trainer will later score, so
the sampler's and the trainer's logprobs agree (tests/test_rollout.py::test_logprobs_match_trainer).

At every turn: one generate call for all live episodes, then all their env steps at once (one session each).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase

from browserrl.actions import DEFAULT_ALLOWED, extract_action, validate_action
from browserrl.env.pool import EnvFailure, EnvPool
from browserrl.generation import Generator
from browserrl.prompts import initial_messages, observation_text


@dataclass
class Episode:
    task: str
    seed: int
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


class RolloutEngine:
    """Plays episodes: generator for the policy's turns, env pool for the pages.

    `max_completion_tokens` (trainer.max_completion_length) bounds an episode's completion_ids: an episode
    whose next observation and turn would not fit ends there, truncated, like one that reached max_steps.
    """

    def __init__(
        self,
        generator: Generator,
        pool: EnvPool,
        chat: ChatFormat,
        task: DictConfig,
        max_completion_tokens: int | None = None,
    ):
        self.generator, self.pool, self.chat, self.task = generator, pool, chat, task
        self.allowed = frozenset(task.get("allowed_actions") or DEFAULT_ALLOWED)
        self.max_completion_tokens = max_completion_tokens

    def play(self, instances: Sequence[tuple[str, int]], greedy: bool = False) -> RolloutBatch:
        batch = RolloutBatch([])
        for start in range(0, len(instances), self.pool.size):
            self._play_chunk(instances[start : start + self.pool.size], greedy, batch)
        return batch

    def _play_chunk(self, instances: Sequence[tuple[str, int]], greedy: bool, batch: RolloutBatch) -> None:
        episodes = [Episode(task, seed) for task, seed in instances]
        slots = list(range(len(episodes)))
        t0 = time.perf_counter()
        results = self.pool.reset(slots, [e.task for e in episodes], [e.seed for e in episodes])
        batch.env_s += time.perf_counter() - t0
        for episode, result in zip(episodes, results):
            if isinstance(result, EnvFailure):
                episode.env_error, episode.done = result.message, True
                episode.prompt_ids = [self.chat.eot_id]
                episode.extend([self.chat.eot_id], None, from_model=False)  # a valid, fully masked sequence
                continue
            episode.goal = result.observation.goal
            episode.messages = initial_messages(result.observation, self.task)
            episode.prompt_ids = self.chat.prompt_ids(episode.messages)

        for _ in range(self.task.max_steps):
            live = [i for i, e in enumerate(episodes) if not e.done]
            if not live:
                break
            t0 = time.perf_counter()
            turns = self.generator(
                [episodes[i].prompt_ids + episodes[i].completion_ids for i in live], greedy
            )
            batch.generate_s += time.perf_counter() - t0
            actions = [self._take_turn(episodes[i], turn) for i, turn in zip(live, turns)]
            t0 = time.perf_counter()
            results = self.pool.step(live, actions)
            batch.env_s += time.perf_counter() - t0
            for i, action, result in zip(live, actions, results):
                self._observe(episodes[i], action, result)
        batch.episodes += episodes

    def _take_turn(self, episode: Episode, turn: Any) -> str:
        """Append the model's turn; return the action to send (raw text when it holds no valid action)."""
        episode.extend(turn.ids, turn.logprobs, from_model=True)
        if not turn.finished:  # cut at max_new_tokens: close the turn so the sequence stays well-formed
            episode.extend([self.chat.eot_id], None, from_model=False)
        text = self.chat.tokenizer.decode(turn.ids, skip_special_tokens=True).strip()
        action = extract_action(text)
        if action is None or validate_action(action, self.allowed) is not None:
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
        obs = result.observation
        episode.raw_reward = float(obs.metadata.get("raw_reward", result.reward or 0.0))
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
        if episode.steps >= self.task.max_steps:
            episode.done = episode.truncated = True
            return
        user_text = observation_text(obs, self.task)
        env_ids = self.chat.continuation_ids(episode.messages, user_text)
        next_turn = len(env_ids) + self.task.max_action_tokens + 1  # the observation, a turn, its end
        budget = self.max_completion_tokens
        if budget and len(episode.completion_ids) + next_turn > budget:
            episode.done = episode.truncated = True
            return
        episode.extend(env_ids, None, from_model=False)
        episode.messages.append({"role": "user", "content": user_text})


def trainer_output(batch: RolloutBatch, max_steps: int) -> dict[str, list[Any]]:
    """rollout_func's return value: one sequence per episode, plus fields the reward functions read."""
    eps = batch.episodes
    return {
        "prompt_ids": [e.prompt_ids for e in eps],
        "completion_ids": [e.completion_ids for e in eps],
        "logprobs": [e.logprobs for e in eps],
        "env_mask": [e.env_mask for e in eps],
        "success": [e.success for e in eps],
        "steps": [e.steps for e in eps],
        "max_steps": [max_steps] * len(eps),
        "valid_action_rate": [1 - e.invalid_actions / e.steps if e.steps else 0.0 for e in eps],
    }
