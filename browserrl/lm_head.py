"""TRL's fused LM head on CPU: project only the positions that have a label, as it does on GPUs.

TRL 1.16 computes the per-token log-probabilities of SFT and GRPO with a chunked LM head
(`trl.trainer.utils.add_fused_lm_head`) that never holds a [tokens, vocab] logits tensor. Where Triton runs
(CUDA, XPU) it projects only the positions whose label is not -100; everywhere else it projects every
position, so that compilers for static shapes (Neuron) see one tile shape. On CPU that is waste: SFT's
labels are the model's turns only (a few percent of an episode's tokens) and GRPO's the completion, yet
the 49k-way projection, its softmax statistics and their backward ran on every token of every sequence.

`compact_lm_head()` lets TRL take its own compact path on CPU for the duration of a block. TRL reads the
choice from `trl.trainer.utils._use_triton`, which in TRL 1.16 decides nothing else in that module
(pyproject pins trl < 1.17). The log-probabilities, losses and gradients are the same
(tests/test_lm_head.py); the time saved is in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import trl.trainer.utils as trl_utils


@contextlib.contextmanager
def compact_lm_head() -> Iterator[None]:
    """Within the block, TRL's fused LM head scores only labelled positions on CPU too."""
    original = trl_utils._use_triton

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = compact
    try:
        yield
    finally:
        trl_utils._use_triton = original
