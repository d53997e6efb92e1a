"""Multi-step episodes against the real env server, and the sampler/trainer logprob agreement."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from omegaconf import OmegaConf
from trl import GRPOConfig, GRPOTrainer

from browserrl import rewards
from browserrl.env.pool import EnvPool
from browserrl.generation import HFGenerator, SamplingParams
from browserrl.modeling import load_policy
from browserrl.rollout import ChatFormat, RolloutEngine, instance_prompt, trainer_output

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEMPERATURE = 0.7
TOLERANCE = 1e-4  # float32, same weights: only kernel/caching round-off may differ


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_policy(OmegaConf.create({"source": "tiny", "seed": 0, "dtype": "float32"}))


@pytest.fixture(scope="module")
def task(root):
    cfg = OmegaConf.load(root / "conf/task/click-test.yaml")
    cfg.max_steps, cfg.max_action_tokens = 3, 6
    return cfg


def play(tiny, task, env_url, n: int = 4, max_completion_tokens: int | None = None, greedy=False):
    model, tokenizer = tiny
    chat = ChatFormat(tokenizer)
    pool = EnvPool(lambda: env_url, size=n)
    try:
        generator = HFGenerator(
            model, tokenizer.pad_token_id, chat.eot_id, SamplingParams(TEMPERATURE, 1.0, 0, 6)
        )
        engine = RolloutEngine(generator, pool, chat, task, max_completion_tokens)
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
    out = trainer_output(batch, task.max_steps)
    assert out["valid_action_rate"] == [0.0] * 4 and out["max_steps"] == [3] * 4


def test_token_budget_truncates_episodes(tiny, task, env_url):
    """Greedy turns, same pages: the same episodes again, but the last turn no longer fits the budget."""
    unbounded, _ = play(tiny, task, env_url, n=2, greedy=True)
    assert [e.steps for e in unbounded.episodes] == [3, 3]
    budget = min(len(e.completion_ids) for e in unbounded.episodes) - 1
    batch, chat = play(tiny, task, env_url, n=2, max_completion_tokens=budget, greedy=True)
    for e in batch.episodes:
        assert e.truncated and e.steps == 2
        assert len(e.completion_ids) <= budget and e.completion_ids[-1] == chat.eot_id


def test_logprobs_match_trainer(tiny, task, env_url, tmp_path):
    """The trainer scores each multi-step episode exactly as the sampler produced it."""
    model, tokenizer = tiny
    batch, _ = play(tiny, task, env_url)
    out = trainer_output(batch, task.max_steps)
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=2,
        max_steps=1,
        temperature=TEMPERATURE,
        use_cpu=True,
        bf16=False,
        report_to=[],
        beta=0.0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[rewards.success],
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": [instance_prompt("click-test", 7)] * 4}),
    )
    pad = tokenizer.pad_token_id
    p_len = max(len(p) for p in out["prompt_ids"])
    c_len = max(len(c) for c in out["completion_ids"])
    ids, attention = [], []
    for p, c in zip(out["prompt_ids"], out["completion_ids"]):
        ids.append([pad] * (p_len - len(p)) + p + c + [pad] * (c_len - len(c)))
        attention.append([0] * (p_len - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_len - len(c)))
    with torch.no_grad():
        trainer_logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.tensor(ids), torch.tensor(attention), c_len, batch_size=4
        )
    compared = 0
    for row, (sampled, mask) in enumerate(zip(out["logprobs"], out["env_mask"])):
        for t, (lp, m) in enumerate(zip(sampled, mask)):
            if m:
                assert abs(trainer_logps[row, t].item() - lp) < TOLERANCE, (row, t)
                compared += 1
    assert compared >= 4 * 3  # at least one token per model turn, 3 turns, 4 episodes
