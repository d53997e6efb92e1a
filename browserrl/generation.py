"""Generation backends: one call turns a batch of token sequences into one model turn each, with logprobs.

The rollout loop only sees `Generator.__call__(contexts, greedy) -> [Turn]`, so transformers `generate` (CPU
or GPU) and TRL's vLLM integration are interchangeable. Logprobs are log_softmax(logits / temperature) of the
sampled token: the same quantity GRPOTrainer recomputes, so the two can be compared token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel


@dataclass
class Turn:
    """One model turn: its tokens (ending with the end-of-turn token unless cut), their logprobs."""

    ids: list[int]
    logprobs: list[float]
    finished: bool  # ended with the end-of-turn token (False: cut at max_new_tokens)


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32


class Generator(Protocol):
    def __call__(self, contexts: list[list[int]], greedy: bool = False) -> list[Turn]: ...


def split_turn(ids: list[int], logprobs: list[float], eot_id: int) -> Turn:
    """Cut a raw generation at its first end-of-turn token (kept), dropping the padding after it."""
    if eot_id in ids:
        end = ids.index(eot_id) + 1
        return Turn(ids[:end], logprobs[:end], finished=True)
    return Turn(ids, logprobs, finished=False)


class HFGenerator:
    """transformers `generate` on a left-padded batch; the model is put in eval mode for the call."""

    def __init__(self, model: PreTrainedModel, pad_id: int, eot_id: int, params: SamplingParams):
        self.model, self.pad_id, self.eot_id, self.params = model, pad_id, eot_id, params

    @torch.no_grad()
    def __call__(self, contexts: list[list[int]], greedy: bool = False) -> list[Turn]:
        device = next(self.model.parameters()).device
        width = max(len(c) for c in contexts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(c)) + c for c in contexts], device=device)
        attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
        p = self.params
        sampling = (
            {"do_sample": False}
            if greedy
            else {
                "do_sample": True,
                "temperature": p.temperature,
                "top_p": p.top_p,
                "top_k": p.top_k or None,
            }
        )
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=p.max_new_tokens,
                eos_token_id=self.eot_id,
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                **sampling,
            )
        finally:
            self.model.train(was_training)
        new_ids = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float() / p.temperature  # raw logits: [B, T, V]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
        return [split_turn(ids, lps, self.eot_id) for ids, lps in zip(new_ids.tolist(), logprobs.tolist())]
