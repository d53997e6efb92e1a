"""HFGenerator's PrefixCache: multi-turn episodes encode only their new tokens, and nothing else changes.

A tiny random Llama (the architecture of the packaged SmolLM2) plays four turns of eight episodes that share
their first prompt, as a GRPO group does; between turns each episode gets a different number of
"observation" tokens. With and without the cache, greedy turns must be the same tokens with the same
logprobs, while the cached generator feeds the model far fewer tokens.
"""

from __future__ import annotations

import pytest
import torch
from helpers import EOT, PAD, VOCAB, tiny_llama
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from browserrl.generation import HFGenerator, SamplingParams
from browserrl.modeling import load_policy

TOLERANCE = {False: 1e-4, True: 0.05}  # fp32; bf16 autocast: a different batch layout rounds differently


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return tiny_llama()


def play(model: torch.nn.Module, reuse: bool, bf16: bool = False) -> tuple[list, int]:
    """Four greedy turns of eight episodes; returns the turns and the tokens the model was fed."""
    fed = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: fed.append(args[0].numel()))
    generator = HFGenerator(model, PAD, EOT, SamplingParams(0.7), bf16=bf16, reuse_cache=reuse)
    prompt = [int(t) for t in torch.randint(2, VOCAB, (40,), generator=torch.Generator().manual_seed(1))]
    contexts = [list(prompt) for _ in range(8)]
    turns = []
    try:
        for turn in range(4):
            out = generator(contexts, greedy=True, max_new_tokens=6)
            turns.append(out)
            contexts = [
                c + t.ids + ([] if t.finished else [EOT]) + [2 + (turn + i) % 50] * (3 + 2 * i)
                for i, (c, t) in enumerate(zip(contexts, out))
            ]
    finally:
        hook.remove()
    return turns, sum(fed)


@pytest.mark.parametrize("bf16", [False, True])
def test_cached_turns_equal_uncached_turns(llama, bf16):
    plain, fed_plain = play(llama, reuse=False, bf16=bf16)
    cached, fed_cached = play(llama, reuse=True, bf16=bf16)
    for a, b in zip(plain, cached):
        for x, y in zip(a, b):
            assert x.ids == y.ids and x.finished == y.finished
            assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs)) < TOLERANCE[bf16]
    assert fed_cached < fed_plain / 3  # the shared prompt once, then only each turn's new tokens


def test_reuse_holds_in_a_trainer_whose_config_says_no_cache():
    """transformers' Trainer sets model.config.use_cache = False (TrainingArguments.use_cache): the group's
    shared prompt must still be encoded once into a cache, and later turns reuse it."""
    model = tiny_llama()
    model.config.use_cache = False
    plain, fed_plain = play(model, reuse=False)
    cached, fed_cached = play(model, reuse=True)
    assert [[t.ids for t in turn] for turn in cached] == [[t.ids for t in turn] for turn in plain]
    assert fed_cached < fed_plain / 3


def test_cache_empties_when_the_weights_change(llama):
    generator = HFGenerator(llama, PAD, EOT, SamplingParams(0.7))
    context = list(range(2, 30))
    generator([context, context], greedy=True, max_new_tokens=4)
    assert generator.prefixes.entries
    with torch.no_grad():
        llama.lm_head.weight.add_(0.0)  # an in-place write, as an optimizer step does
    generator.prefixes.check_weights(llama)
    assert not generator.prefixes.entries


def test_models_without_a_plain_cache_fall_back():
    """LFM2 (the tiny model of the training tests) keeps convolution states, not per-position keys and
    values: it generates without reuse."""
    model, tokenizer = load_policy(OmegaConf.create({"source": "tiny", "seed": 0, "dtype": "float32"}))
    generator = HFGenerator(model, tokenizer.pad_token_id, tokenizer.eos_token_id, SamplingParams(1.0))
    context = list(range(5, 40))
    turns = generator([context, context], greedy=True, max_new_tokens=3)
    assert len(turns) == 2 and generator.prefixes is None
