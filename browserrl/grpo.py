"""TRL's GRPOTrainer, with each micro-batch cut to its own length before its forward/backward, and its LM head
projecting only the completion's positions on CPU too (browserrl.lm_head).

TRL pads a whole generation batch (a step's episodes) to one width, prompts on the left to the longest prompt,
completions on the right to the longest completion, and splits it into micro-batches as it is. A suite's step
mixes one-turn episodes of a few hundred tokens with eight-turn ones of ~2k, so a micro-batch holding one
short episode was computed at the longest one's width (two of the recipe's steps: 1.64x the tokens there
were, docs/benchmarks.md).

`trim_padding` drops the columns that are padding in every row of a micro-batch. The loss and its gradient
do not change: those positions are outside the attention mask and the loss mask, and every loss type
normalizes by mask sums or by constants (trainer.max_completion_length), never by the tensor's width
(tests/test_grpo.py compares both against TRL's on the same micro-batch).
"""

from __future__ import annotations

from typing import Any

import torch
import trl

from browserrl.lm_head import compact_lm_head

#: Inputs on the prompt's axis; every other [batch, width, ...] tensor of a micro-batch whose width is the
#: completion's (ids, masks, the sampler's, old and reference logprobs) is cut on the completion's axis.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def _width(used: int, full: int, multiple: int | None) -> int:
    """Columns to keep: the used ones (at least one), rounded up to `multiple` (GRPOConfig's
    pad_to_multiple_of, for compilers that want few distinct shapes), never more than there are."""
    width = max(used, 1)
    if multiple:
        width = -(-width // multiple) * multiple
    return min(width, full)


def trim_padding(inputs: dict[str, Any], multiple: int | None = None) -> dict[str, Any]:
    """A micro-batch without the prompt columns left of its longest prompt and the completion columns right
    of its longest completion (TRL pads prompts on the left, completions on the right)."""
    prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
    batch, prompt_full = prompt_mask.shape
    completion_full = completion_mask.shape[1]
    used = prompt_mask.any(0).nonzero()
    prompt_width = _width(prompt_full - int(used[0]) if len(used) else 0, prompt_full, multiple)
    used = completion_mask.any(0).nonzero()
    completion_width = _width(int(used[-1]) + 1 if len(used) else 0, completion_full, multiple)
    trimmed = dict(inputs)
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != batch:
            continue
        if key in PROMPT_KEYS:
            trimmed[key] = value[:, prompt_full - prompt_width :]
        elif value.shape[1] == completion_full:
            trimmed[key] = value[:, :completion_width]
    return trimmed


class GRPOTrainer(trl.GRPOTrainer):
    """trl.GRPOTrainer whose loss is computed on micro-batches without their shared padding, and whose every
    scoring pass while training (the loss; reference and old logprobs where a config asks for them) uses an
    LM head that projects the completion only."""

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with compact_lm_head():
            return super().train(*args, **kwargs)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = trim_padding(inputs, self.args.pad_to_multiple_of)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
