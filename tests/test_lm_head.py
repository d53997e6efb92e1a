"""browserrl.compat.compact_lm_head: TRL's fused LM head scores only labelled positions on CPU, with the
same values."""

from __future__ import annotations

import contextlib

import pytest
import torch
import trl.trainer.utils as trl_utils
from omegaconf import OmegaConf

from browserrl.compat import compact_lm_head
from browserrl.modeling import load_policy


@pytest.mark.parametrize("arch", ["llama", "lfm2"])
def test_compact_head_scores_labelled_positions_only_with_the_same_values(arch, monkeypatch):
    torch.manual_seed(0)
    model, _ = load_policy(OmegaConf.create({"source": "tiny", "arch": arch, "seed": 0, "dtype": "float32"}))
    trl_utils.add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    ids = torch.randint(3, model.config.vocab_size, (2, 24))
    labels = torch.full_like(ids, -100)
    labels[0, 10:14], labels[1, 20:] = ids[0, 10:14], ids[1, 20:]  # 4 + 4 labelled: model turns
    rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting_apply(hidden, *args):
        rows.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting_apply)
    results = []
    for compact in (False, True):
        model.zero_grad()
        with compact_lm_head() if compact else contextlib.nullcontext():
            out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        (out.loss + out.entropy.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.log_probs.detach(), out.entropy.detach(), out.loss.detach(), grads))
    assert rows == [2 * 23, 8]  # every shifted position, then the labelled ones only
    for wide, compact in zip(*results):
        torch.testing.assert_close(compact, wide, rtol=1e-5, atol=1e-6)
    assert trl_utils._use_triton(torch.device("cpu")) is False  # TRL's own choice is back after the block
