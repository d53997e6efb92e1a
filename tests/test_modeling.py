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


def test_max_positions_are_the_models_own():
    """Read without loading weights; the packaged constant is the converted model's config."""
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    packaged = OmegaConf.create({"source": "packaged"})
    converted = AutoConfig.from_pretrained(modeling.resolve_model_path(packaged))
    assert modeling.max_positions(packaged) == converted.max_position_embeddings == 8192
    tiny = OmegaConf.create({"source": "tiny", "arch": "llama", "seed": 0})
    assert (
        modeling.max_positions(tiny)
        == AutoConfig.from_pretrained(modeling.resolve_model_path(tiny)).max_position_embeddings
    )
    path = OmegaConf.create({"source": "path", "name_or_path": modeling.resolve_model_path(tiny)})
    assert modeling.max_positions(path) == 4096
    assert (
        modeling.max_positions(OmegaConf.create({"source": "hub", "name_or_path": "nobody/absent"})) is None
    )
