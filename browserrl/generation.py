"""Generation backends: one call turns a batch of token sequences into one model turn each, with logprobs.

The rollout loop only sees `Generator.__call__(contexts, greedy) -> [Turn]`, so transformers `generate` (CPU
or GPU) and TRL's vLLM integration are interchangeable. Logprobs are log_softmax(logits / temperature) of the
sampled token: the same quantity GRPOTrainer recomputes, so the two can be compared token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


def sampled_logprobs(
    ids: list[int], logprobs: list[list[float | None]], token_ids: list[list[int]]
) -> list[float]:
    """The sampled token's logprob at each position, from TRL's vLLM format (per position: candidates sorted
    by probability, the sampled one always among them, not always first when top-k logprobs are asked for)."""
    picked = []
    for position, (token, candidates, values) in enumerate(zip(ids, token_ids, logprobs)):
        value = values[candidates.index(token)] if token in candidates else None
        if value is None:  # vLLM reports NaN (TRL: None) only for a broken forward pass: do not train on it
            raise ValueError(f"vLLM returned no logprob for sampled token {token} at position {position}")
        picked.append(value)
    return picked


def vllm_turns(
    completion_ids: list[list[int]],
    logprobs: list[list[list[float | None]]],
    logprob_token_ids: list[list[list[int]]],
    eot_id: int,
) -> list[Turn]:
    """vLLM completions in TRL's format (`VLLMClient.generate`, `trl...vllm_generation.extract_logprobs`)
    -> one `Turn` each, cut at the first end-of-turn token like the transformers backend."""
    return [
        split_turn(list(ids), sampled_logprobs(list(ids), lps, lp_ids), eot_id)
        for ids, lps, lp_ids in zip(completion_ids, logprobs, logprob_token_ids)
    ]


class VLLMGenerator:
    """TRL's vLLM integration as a `Generator`: the trainer's colocated `vllm.LLM`, or a `VLLMClient` of
    `trl vllm-serve`. GRPOTrainer pushes the policy's weights into vLLM before each rollout_func call.

    Each call sends raw token ids (the episode so far) with n=1: after the first turn every episode of a group
    has its own context, so TRL's own `VLLMGeneration.generate` (which dedups prompts by num_generations and,
    in server mode, gathers across ranks on every call) does not fit a turn-by-turn loop whose turn count
    differs between ranks. Logprobs are vLLM's `processed_logprobs` (after temperature): the quantity
    GRPOTrainer recomputes, as with HFGenerator.
    """

    def __init__(self, engine: Any, eot_id: int, params: SamplingParams):
        self.engine, self.eot_id, self.params = engine, eot_id, params

    @classmethod
    def from_trainer(cls, trainer: Any, eot_id: int, params: SamplingParams) -> VLLMGenerator:
        """The colocated LLM, or (server mode) this rank's client: rank 0 reuses the trainer's, which also
        carries the weight-sync communicator; other ranks open a plain HTTP client of their own."""
        vg = trainer.vllm_generation
        if vg.mode == "colocate":
            if vg.tensor_parallel_size > 1:
                raise ValueError(
                    "vllm_tensor_parallel_size > 1 needs every TP rank to generate the same prompts in "
                    "lockstep; multi-turn rollouts use vllm_tensor_parallel_size=1 (or vllm_mode=server)"
                )
            return cls(vg.llm, eot_id, params)
        client = getattr(vg, "vllm_client", None)
        if client is None:
            from trl.generation.vllm_client import VLLMClient

            base_url = vg.server_base_url or f"http://{vg.server_host}:{vg.server_port}"
            client = VLLMClient(base_url=base_url, connection_timeout=vg.server_timeout)
        return cls(client, eot_id, params)

    def sampling(self, greedy: bool) -> dict[str, Any]:
        """vLLM sampling parameters; stop at the configured end-of-turn token (it is kept in the output)."""
        p = self.params
        return {
            "n": 1,
            "temperature": 0.0 if greedy else p.temperature,
            "top_p": 1.0 if greedy else p.top_p,
            "top_k": 0 if greedy else p.top_k,
            "max_tokens": p.max_new_tokens,
            "logprobs": 0,  # the sampled token's logprob only
            "stop_token_ids": [self.eot_id],
        }

    def __call__(self, contexts: list[list[int]], greedy: bool = False) -> list[Turn]:
        sampling = self.sampling(greedy)
        if hasattr(self.engine, "base_url"):  # trl VLLMClient (server mode)
            n = sampling.pop("n")
            stop = sampling.pop("stop_token_ids")
            out = self.engine.generate(
                prompts=contexts, n=n, generation_kwargs={"stop_token_ids": stop}, **sampling
            )
            ids, logprobs, token_ids = out["completion_ids"], out["logprobs"], out["logprob_token_ids"]
        else:  # vllm.LLM (colocate)
            from trl.generation.vllm_generation import extract_logprobs
            from vllm import SamplingParams as VLLMSamplingParams

            outputs = self.engine.generate(
                [{"prompt_token_ids": c} for c in contexts],
                sampling_params=VLLMSamplingParams(**sampling),
                use_tqdm=False,
            )
            ids = [list(o.outputs[0].token_ids) for o in outputs]
            logprobs, token_ids = extract_logprobs(outputs)
        return vllm_turns(ids, logprobs, token_ids, self.eot_id)
