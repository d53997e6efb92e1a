"""browserrl.grpo: a micro-batch cut to its own length, scored by the compact LM head, gives TRL's loss and
gradient on fewer columns."""

from __future__ import annotations

import contextlib

import pytest
import torch
import trl
from helpers import scoring_trainer
from omegaconf import OmegaConf

from browserrl.grpo import GRPOTrainer, trim_padding
from browserrl.lm_head import compact_lm_head
from browserrl.modeling import load_policy

PAD = 0


def padded_batch(prompts: list[list[int]], completions: list[list[int]], env: list[list[int]]) -> dict:
    """A generation batch as TRL builds it: prompts padded on the left, completions on the right."""
    p, c = max(map(len, prompts)), max(map(len, completions))
    return {
        "prompt_ids": torch.tensor([[PAD] * (p - len(x)) + x for x in prompts]),
        "prompt_mask": torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts]),
        "completion_ids": torch.tensor([x + [PAD] * (c - len(x)) for x in completions]),
        "completion_mask": torch.tensor([[1] * len(x) + [0] * (c - len(x)) for x in completions]),
        "tool_mask": torch.tensor([m + [1] * (c - len(m)) for m in env]),
        "advantages": torch.tensor([1.0, -1.0, 0.5][: len(prompts)]),
        "num_items_in_batch": torch.tensor(sum(map(sum, env))),
    }


def rows(batch: dict, i: int) -> dict:
    """Row i as a micro-batch of one (TRL's split_tensor_dict keeps the batch's widths)."""
    return {k: v[i : i + 1] if k != "num_items_in_batch" else v for k, v in batch.items()}


def test_trim_cuts_shared_padding_only():
    batch = padded_batch([[5, 6, 7], [8]], [[1, 2, 3, 4, 9], [3]], [[1, 1, 0, 0, 1], [1]])
    short = trim_padding(rows(batch, 1))
    assert short["prompt_ids"].tolist() == [[8]] and short["prompt_mask"].tolist() == [[1]]
    assert short["completion_ids"].tolist() == [[3]] and short["tool_mask"].tolist() == [[1]]
    assert short["advantages"].tolist() == [-1.0] and short["num_items_in_batch"] == 4
    whole = trim_padding(batch)  # the longest rows set the width: nothing of theirs is cut
    assert all(torch.equal(whole[k], batch[k]) for k in batch)
    # GRPOConfig.pad_to_multiple_of rounds the widths up, never past TRL's own
    assert trim_padding(rows(batch, 1), multiple=4)["completion_ids"].shape == (1, 4)
    assert trim_padding(rows(batch, 1), multiple=8)["completion_ids"].shape == (1, 5)


@pytest.mark.parametrize("arch", ["llama", "lfm2"])  # SmolLM2's architecture and LFM2's (its convolutions)
def test_trimmed_loss_and_gradient_match_trl(arch, tmp_path):
    """Each row of a padded batch alone, at TRL's width and at its own: the same loss and gradient (fp32;
    under bf16 autocast the two widths round differently, by bf16's resolution)."""
    torch.manual_seed(0)
    tiny = {"source": "tiny", "arch": arch, "seed": 0, "dtype": "float32"}
    model, tokenizer = load_policy(OmegaConf.create(tiny))
    trainer = scoring_trainer(
        model, tokenizer, tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=3,
        num_generations=3, bf16=False,
    )  # fmt: skip
    ids = torch.randint(3, tokenizer.vocab_size, (40,)).tolist()
    batch = padded_batch(
        [ids[:9], ids[9:12], ids[12:18]],
        [ids[18:36], ids[36:39], ids[20:28]],
        [[1] * 4 + [0] * 10 + [1] * 4, [1, 1, 1], [1, 1, 0, 0, 0, 1, 1, 1]],
    )
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for i in range(3):
        micro = rows(batch, i)
        losses, grads = [], []
        for compute_loss, head in (
            (trl.GRPOTrainer.compute_loss, contextlib.nullcontext()),
            (GRPOTrainer.compute_loss, compact_lm_head()),  # as GRPOTrainer.train scores
        ):
            trainer.model.zero_grad()
            with head:
                loss = compute_loss(trainer, trainer.model, micro)
            loss.backward()
            losses.append(loss.detach())
            grads.append(torch.cat([p.grad.flatten() for p in params]))
        assert losses[1] != 0
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
