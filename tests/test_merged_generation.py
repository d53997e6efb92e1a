"""HFGenerator on a LoRA policy generates through a merged copy: the same turns as through PEFT's adapted
layers, made again after every weight change, and never trained or written back."""

from __future__ import annotations

import torch
from helpers import EOT, PAD, tiny_llama
from peft import LoraConfig, get_peft_model

from browserrl.generation import HFGenerator, SamplingParams


def lora_policy() -> torch.nn.Module:
    policy = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():  # a trained adapter: B is zero at initialisation, which would merge nothing
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return policy.train()


def turns(generator: HFGenerator, greedy: bool = True) -> list:
    contexts = [list(range(2, 40)), list(range(5, 30))]
    torch.manual_seed(1)
    return generator(contexts, greedy=greedy, max_new_tokens=8)


def test_merged_copy_generates_what_the_adapted_policy_does():
    policy = lora_policy()
    merged = HFGenerator(policy, PAD, EOT, SamplingParams(0.7), merge_lora=True)
    adapted = HFGenerator(policy, PAD, EOT, SamplingParams(0.7), merge_lora=False)
    for greedy in (True, False):
        for a, b in zip(turns(merged, greedy), turns(adapted, greedy)):
            assert a.ids == b.ids
            assert max(abs(p - q) for p, q in zip(a.logprobs, b.logprobs)) < 1e-4
    copy = merged.runner()
    assert copy is not policy and not any(p.requires_grad for p in copy.parameters())
    assert not any("lora" in name for name, _ in copy.named_parameters())
    assert policy.training  # the policy's mode is restored after each call
    assert adapted.runner() is policy


def test_merged_copy_follows_the_policy_weights():
    policy = lora_policy()
    generator = HFGenerator(policy, PAD, EOT, SamplingParams(0.7))
    before = turns(generator)
    first = generator.runner()
    assert generator.runner() is first  # unchanged weights: the same copy
    with torch.no_grad():  # an optimizer step on the adapter, in place
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.mul_(-3.0)
    after = turns(generator)
    assert generator.runner() is not first
    reference = turns(HFGenerator(policy, PAD, EOT, SamplingParams(0.7), merge_lora=False))
    assert [t.ids for t in after] == [t.ids for t in reference] != [t.ids for t in before]
