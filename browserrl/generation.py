"""Generation backends: one call turns a batch of token sequences into one model turn each, with logprobs.

The rollout loop only sees `Generator.__call__(contexts, greedy, max_new_tokens) -> [Turn]`, so
transformers `generate` (CPU or GPU) and TRL's vLLM integration are interchangeable. Logprobs are
log_softmax(logits / temperature) of the sampled token: the same quantity GRPOTrainer recomputes, so the two
can be compared token for token.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from peft import PeftModel
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from browserrl.compat import CACHE, cache_of, weights_version

log = logging.getLogger(__name__)


@dataclass
class Turn:
    """One model turn: its tokens (ending with the end-of-turn token unless cut), their logprobs."""

    ids: list[int]
    logprobs: list[float]
    finished: bool  # ended with the end-of-turn token (False: cut at max_new_tokens)


@dataclass
class SamplingParams:
    """GRPOConfig's sampling settings (temperature, top_p, top_k: 0 for none); tokens per turn come from
    each task's config with every call."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


class Generator(Protocol):
    def __call__(self, contexts: list[list[int]], greedy: bool, max_new_tokens: int) -> list[Turn]: ...


def split_turn(ids: list[int], logprobs: list[float], eot_id: int) -> Turn:
    """Cut a raw generation at its first end-of-turn token (kept), dropping the padding after it."""
    if eot_id in ids:
        end = ids.index(eot_id) + 1
        return Turn(ids[:end], logprobs[:end], finished=True)
    return Turn(ids, logprobs, finished=False)


@dataclass
class Prefix:
    """Keys and values of the first len(tokens) tokens of a sequence: per layer, [kv_heads, len, head_dim]."""

    tokens: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    age: int = 0  # calls since it was stored


class PrefixCache:
    """Keys and values of the sequences recent calls ended on, so that the next turn of an episode encodes
    only what is new (its observation and the generation prompt), not the whole episode again.

    An entry is found by content: the longest one whose tokens are a prefix of the new context. Entries hold
    for the weights they were computed with only: the cache empties itself when a parameter was written
    since (an optimizer step or a load bumps each tensor's version counter). Entries not used for two calls
    (finished episodes) are dropped, and the oldest go first beyond `max_tokens`.
    """

    def __init__(self, max_tokens: int = 64 * 1024):
        self.max_tokens = max_tokens
        self.entries: list[Prefix] = []
        self.weights_version = -1

    def check_weights(self, model: torch.nn.Module) -> None:
        version = weights_version(model)
        if version != self.weights_version:
            self.entries, self.weights_version = [], version

    def match(self, context: list[int]) -> Prefix | None:
        """The longest entry that is a strict prefix of `context` (one token at least must be fed)."""
        best = None
        for entry in self.entries:
            n = len(entry.tokens)
            if n < len(context) and (best is None or n > len(best.tokens)) and context[:n] == entry.tokens:
                best = entry
        return best

    def update(self, used: list[Prefix | None], new: list[Prefix]) -> None:
        """After a call: the entries it continued are superseded by the ones it ended on."""
        used_ids = {id(e) for e in used if e is not None}
        kept = [e for e in self.entries if id(e) not in used_ids]
        for entry in kept:
            entry.age += 1
        self.entries = [e for e in kept if e.age <= 2] + new
        while sum(len(e.tokens) for e in self.entries) > self.max_tokens:
            self.entries.pop(0)


def rows_of(cache: Any, rows: list[tuple[int, int, list[int]]]) -> list[Prefix]:
    """One entry per (batch row, first column, tokens): the row's keys and values from that column on, as
    many as it has tokens, copied out of the batch."""
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    return [
        Prefix(
            tokens,
            [
                (k[i, :, at : at + len(tokens)].clone(), v[i, :, at : at + len(tokens)].clone())
                for k, v in layers
            ],
        )
        for i, at, tokens in rows
    ]


def reusable(cache: Any) -> bool:
    """A plain DynamicCache: every layer a [batch, heads, position, dim] tensor pair that rows can be cut
    from (Llama-style attention: SmolLM2). LFM2's convolution states and sliding windows are not."""
    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


class HFGenerator:
    """transformers `generate` on a left-padded batch; the model is put in eval mode for the call.

    `bf16`: generate under the bfloat16 autocast the trainer computes in (GRPOConfig.bf16), so sampler and
    trainer logprobs come from the same arithmetic. `reuse_cache`: keep each sequence's keys and values
    (PrefixCache) where the model's cache allows it; the first turn of a GRPO group, the same prompt
    num_generations times, is encoded once. `merge_lora`: a LoRA policy (PeftModel) generates through a
    plain copy with its adapters merged into the weights, made again whenever the policy's weights change:
    LoRA's side path adds four small operations to every adapted linear layer, and a decode step of a small
    model is mostly such per-operation overhead: 0.77-0.87 of the time on the cpu suite's groups in fp32
    (benchmarks/bench_generate.py; docs/benchmarks.md, "Generation from a merged copy"), 0.85-0.96 in bf16
    on an AMD AVX512-BF16 machine (docs/benchmarks.md, "One recipe step before and after").
    """

    def __init__(
        self,
        model: PreTrainedModel,
        pad_id: int,
        eot_id: int,
        params: SamplingParams,
        bf16: bool = False,
        reuse_cache: bool = True,
        merge_lora: bool = True,
    ):
        self.model, self.pad_id, self.eot_id, self.params = model, pad_id, eot_id, params
        self.bf16, self.merge_lora = bf16, merge_lora
        self.prefixes = PrefixCache() if reuse_cache else None
        self._merged: tuple[int, PreTrainedModel] | None = None  # (the policy's weights version, its copy)

    def runner(self) -> torch.nn.Module:
        """The module that generates: the policy itself, or the merged copy of a LoRA policy (rebuilt after
        the policy's weights changed: an optimizer step, a load)."""
        if not (self.merge_lora and isinstance(self.model, PeftModel)):
            return self.model
        version = weights_version(self.model)
        if self._merged is None or self._merged[0] != version:
            self._merged = None  # the old copy goes before the new one is made
            merged = copy.deepcopy(self.model).merge_and_unload().eval().requires_grad_(False)
            self._merged = (version, merged)
        return self._merged[1]

    @contextlib.contextmanager
    def _inference(self) -> Iterator[tuple[torch.nn.Module, torch.device]]:
        """The generating module in eval mode, no autograd, the trainer's autocast; the policy's training mode
        is restored after."""
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=self.bf16):
                yield self.runner(), device
        finally:
            self.model.train(was_training)

    def _batch(self, contexts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(c) for c in contexts)
        ids = torch.tensor([[self.pad_id] * (width - len(c)) + c for c in contexts], device=device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
        return ids, mask

    def _prefill_shared(
        self, model: torch.nn.Module, contexts: list[list[int]], device: torch.device
    ) -> None:
        """Encode once each context that several rows share and no entry continues (a GRPO group's prompt)."""
        counts = Counter(map(tuple, contexts))
        shared = [list(c) for c, n in counts.items() if n > 1 and self.prefixes.match(list(c)) is None]
        if not shared:
            return
        seqs = [c[:-1] for c in shared]  # the last token is fed by generate, which needs its logits
        ids, mask = self._batch(seqs, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # use_cache: a model's forward defaults to config.use_cache, which transformers' Trainer sets to False
        cache = cache_of(model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True))
        if not reusable(cache):
            self._stop_reuse(cache)
            return
        width = ids.shape[1]
        self.prefixes.update([], rows_of(cache, [(i, width - len(s), s) for i, s in enumerate(seqs)]))

    def _cache_for(self, contexts: list[list[int]], found: list[Prefix | None], width: int) -> Any:
        """A DynamicCache of the batch's first `cached` columns, each row's from its entry; None if none."""
        new = [len(c) - (len(f.tokens) if f else 0) for c, f in zip(contexts, found)]
        cached = width - max(new)  # rows are right-aligned: every row's new tokens start at or after it
        if cached <= 0:
            return None
        template = next(f for f in found if f is not None).kv
        cache = DynamicCache()
        for layer, (k0, v0) in enumerate(template):
            keys = k0.new_zeros((len(contexts), k0.shape[0], cached, k0.shape[2]))
            values = v0.new_zeros((len(contexts), v0.shape[0], cached, v0.shape[2]))
            for row, (context, entry) in enumerate(zip(contexts, found)):
                start = width - len(context)
                if entry is not None and start < cached:
                    keys[row, :, start:] = entry.kv[layer][0][:, : cached - start]
                    values[row, :, start:] = entry.kv[layer][1][:, : cached - start]
            cache.update(keys, values, layer)
        return cache

    def __call__(self, contexts: list[list[int]], greedy: bool, max_new_tokens: int) -> list[Turn]:
        p = self.params
        sampling = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k or None}
        )
        with self._inference() as (model, device):
            found: list[Prefix | None] = [None] * len(contexts)
            cache = None
            if self.prefixes is not None:
                self.prefixes.check_weights(self.model)
                self._prefill_shared(model, contexts, device)
            if self.prefixes is not None:
                found = [self.prefixes.match(c) for c in contexts]
                cache = self._cache_for(contexts, found, max(len(c) for c in contexts))
            input_ids, attention = self._batch(contexts, device)
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                eos_token_id=self.eot_id,
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                use_cache=True,
                **{CACHE: cache},
                **sampling,
            )
        width = input_ids.shape[1]
        new_ids = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float() / p.temperature  # raw logits: [B, T, V]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)
        turns = [split_turn(ids, lps, self.eot_id) for ids, lps in zip(new_ids.tolist(), logprobs.tolist())]
        if self.prefixes is not None:
            self._keep(contexts, turns, found, cache_of(out), width, new_ids.shape[1])
        return turns

    def _stop_reuse(self, cache: Any) -> None:
        """No more prefix reuse for this generator: every turn encodes its whole episode again, said once."""
        self.prefixes = None
        log.info("prefix reuse off: the model returned %s, not a plain DynamicCache", type(cache).__name__)

    def _keep(
        self,
        contexts: list[list[int]],
        turns: list[Turn],
        found: list[Prefix | None],
        cache: Any,
        width: int,
        generated: int,
    ) -> None:
        """Store each row's sequence as far as the cache holds it: all but the last generated column."""
        if not reusable(cache):
            self._stop_reuse(cache)
            return
        rows = [
            (i, width - len(context), (context + turn.ids)[: len(context) + generated - 1])
            for i, (context, turn) in enumerate(zip(contexts, turns))
        ]
        self.prefixes.update(found, rows_of(cache, rows))


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

    def sampling(self, greedy: bool, max_new_tokens: int) -> dict[str, Any]:
        """vLLM sampling parameters; stop at the configured end-of-turn token (it is kept in the output)."""
        p = self.params
        return {
            "n": 1,
            "temperature": 0.0 if greedy else p.temperature,
            "top_p": 1.0 if greedy else p.top_p,
            "top_k": 0 if greedy else p.top_k,
            "max_tokens": max_new_tokens,
            "logprobs": 0,  # the sampled token's logprob only
            "stop_token_ids": [self.eot_id],
        }

    def __call__(self, contexts: list[list[int]], greedy: bool, max_new_tokens: int) -> list[Turn]:
        sampling = self.sampling(greedy, max_new_tokens)
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
