"""Multi-step episodes against the real env server, and the sampler/trainer logprob agreement."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from helpers import scoring_trainer
from omegaconf import OmegaConf

from browserrl.generation import HFGenerator, SamplingParams
from browserrl.modeling import load_policy
from browserrl.pool import EnvPool
from browserrl.rollout import ChatFormat, RolloutEngine, model_policy, trainer_output
from browserrl.settings import TaskSettings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEMPERATURE = 0.7
TOLERANCE = 1e-4  # float32, same weights: only kernel/caching round-off may differ
# bf16 autocast both sides (test_logprobs_match_trainer says why). Measured on this tiny model: mean 4e-4,
# max 1.4e-3; its logits are small. The packaged SmolLM2's are larger, so bf16 rounds them more (not measured:
# these bounds are the tiny model's; docs/gpu.md's device check scales its bounds by the largest logit).
BF16_MEAN, BF16_MAX = 0.01, 0.05


def tiny_model(arch: str = "lfm2"):
    torch.manual_seed(0)
    return load_policy(OmegaConf.create({"source": "tiny", "arch": arch, "seed": 0, "dtype": "float32"}))


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def task(root):
    click_test = TaskSettings.from_config(OmegaConf.load(root / "conf/task/click-test.yaml"))
    return dataclasses.replace(click_test, max_env_steps=3, max_action_tokens=6)


def play(tiny, task, env_url, n=4, max_completion_length=None, greedy=False, bf16=False, max_positions=None):
    model, tokenizer = tiny
    chat = ChatFormat(tokenizer)
    pool = EnvPool(lambda _: [env_url], size=n)
    try:
        generator = HFGenerator(model, tokenizer.pad_token_id, chat.eot_id, SamplingParams(TEMPERATURE), bf16)
        tasks = {"click-test": task}
        engine = RolloutEngine(
            model_policy(generator), pool, chat, tasks, max_completion_length, max_positions
        )
        instances = [("click-test", 7)] * (n // 2) + [("click-test", 8)] * (n - n // 2)
        return engine.play(instances, greedy), chat
    finally:
        pool.close()


def test_episode_is_one_masked_sequence(tiny, task, env_url):
    batch, chat = play(tiny, task, env_url)
    for e in batch.episodes:
        assert e.env_error is None
        assert len(e.completion_ids) == len(e.env_mask) == len(e.logprobs)
        assert e.completion_ids[-1] == chat.eot_id  # every episode ends a model turn: never "clipped"
        # a random model never solves click-test: all 3 turns are played, with 2 observations in between
        assert e.steps == 3 and not e.success and e.truncated
        assert e.env_mask.count(0) > 0 and e.env_mask.count(1) > 0
        assert all(lp == 0.0 for lp, m in zip(e.logprobs, e.env_mask) if m == 0)
        assert e.invalid_actions == 3 and len(e.trace) == 3 and all(t["error"] for t in e.trace)
    out = trainer_output(batch)
    assert out["valid_action_rate"] == [0.0] * 4 and out["max_steps"] == [3] * 4


def test_token_budget_truncates_episodes(tiny, task, env_url, caplog):
    """Greedy turns, same pages: the same episodes again, but the last turn no longer fits the budget; the
    cut is named once (it silently made 5-step click-checkboxes solutions unreachable at 1024 tokens)."""
    unbounded, _ = play(tiny, task, env_url, n=2, greedy=True)
    assert [e.steps for e in unbounded.episodes] == [3, 3]
    budget = min(len(e.completion_ids) for e in unbounded.episodes) - 1
    with caplog.at_level(logging.WARNING, logger="browserrl.rollout"):
        batch, chat = play(tiny, task, env_url, n=2, max_completion_length=budget, greedy=True)
    for e in batch.episodes:
        assert e.truncated and e.steps == 2
        assert len(e.completion_ids) <= budget and e.completion_ids[-1] == chat.eot_id
    warnings = [r.getMessage() for r in caplog.records if "max_completion_length" in r.getMessage()]
    assert warnings == [
        f"click-test: an episode ended at step 2 of its 3: the next observation and turn do not "
        f"fit trainer.max_completion_length={budget} tokens; raise it if the task needs more steps"
    ]


def test_model_positions_truncate_episodes(tiny, task, env_url, caplog):
    """As the token budget, for prompt and completion together: the model has no position past its last."""
    unbounded, _ = play(tiny, task, env_url, n=2, greedy=True)
    positions = min(len(e.prompt_ids) + len(e.completion_ids) for e in unbounded.episodes) - 1
    with caplog.at_level(logging.WARNING, logger="browserrl.rollout"):
        batch, chat = play(tiny, task, env_url, n=2, greedy=True, max_positions=positions)
    for e in batch.episodes:
        assert e.truncated and e.steps == 2
        assert len(e.prompt_ids) + len(e.completion_ids) <= positions and e.completion_ids[-1] == chat.eot_id
    assert any("max_position_embeddings" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("arch", "bf16"),
    [("lfm2", False), ("llama", False), ("llama", True)],
    ids=["lfm2-fp32", "llama-fp32-kv-reuse", "llama-bf16-kv-reuse"],
)
def test_logprobs_match_trainer(arch, bf16, task, env_url, tmp_path):
    """The trainer scores each multi-step episode as the sampler produced it: LFM2 (the GPU default's
    architecture) and Llama (the packaged SmolLM2's, whose generator reuses its key/value cache across turns),
    in fp32 and in the bf16 autocast both sides share on CPUs that have it.

    bf16 keeps 8 bits of mantissa: a logit of magnitude x is rounded by up to x * 2**-9, and the sampler (one
    turn at a time, cached) and the trainer (the whole episode at once) round differently. Each token's
    logprob may then move by a few hundredths; the mean over tokens must stay at that level. In TRL the
    sampler's logprobs feed only vLLM's importance-sampling correction (off with transformers generation),
    so on CPU this shows as slightly off-policy samples, not as a wrong gradient.
    """
    model, tokenizer = tiny = tiny_model(arch)
    batch, _ = play(tiny, task, env_url, bf16=bf16)
    out = trainer_output(batch)
    trainer = scoring_trainer(
        model, tokenizer, tmp_path, per_device_train_batch_size=4, num_generations=2,
        temperature=TEMPERATURE, bf16=bf16,
    )  # fmt: skip
    pad = tokenizer.pad_token_id
    p_len = max(len(p) for p in out["prompt_ids"])
    c_len = max(len(c) for c in out["completion_ids"])
    ids, attention = [], []
    for p, c in zip(out["prompt_ids"], out["completion_ids"]):
        ids.append([pad] * (p_len - len(p)) + p + c + [pad] * (c_len - len(c)))
        attention.append([0] * (p_len - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_len - len(c)))
    with torch.no_grad(), trainer.compute_loss_context_manager():  # the trainer's autocast, as in training
        trainer_logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.tensor(ids), torch.tensor(attention), c_len, batch_size=4
        )
    diffs = [
        abs(trainer_logps[row, t].item() - lp)
        for row, (sampled, mask) in enumerate(zip(out["logprobs"], out["env_mask"]))
        for t, (lp, m) in enumerate(zip(sampled, mask))
        if m
    ]
    assert len(diffs) >= 4 * 3  # at least one token per model turn, 3 turns, 4 episodes
    if bf16:
        assert sum(diffs) / len(diffs) < BF16_MEAN and max(diffs) < BF16_MAX, (
            sum(diffs) / len(diffs),
            max(diffs),
        )
    else:
        assert max(diffs) < TOLERANCE
