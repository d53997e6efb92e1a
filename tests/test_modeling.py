"""browserrl.modeling: where a policy runs, and in which precision."""

from __future__ import annotations

import torch

from browserrl import modeling


def test_a_policy_runs_on_its_process_gpu_unless_told_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert modeling.policy_device(use_cpu=False) == torch.device("cuda", 1)
    assert modeling.policy_device(use_cpu=True) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modeling.policy_device(use_cpu=False) == torch.device("cpu")


def test_bf16_is_chosen_on_a_cpu_only_where_it_is_faster(monkeypatch):
    """The probe runs once per process; without AVX512-BF16 or AMX (emulated bf16) it does not run."""
    modeling._cpu_bf16_faster.cache_clear()
    first = modeling.bf16_faster(use_cpu=True)
    assert isinstance(first, bool) and modeling.bf16_faster(use_cpu=True) == first
    monkeypatch.setattr(modeling.Path, "read_text", lambda self: "flags: fpu avx2")
    modeling._cpu_bf16_faster.cache_clear()
    assert modeling.bf16_faster(use_cpu=True) is False
    modeling._cpu_bf16_faster.cache_clear()
