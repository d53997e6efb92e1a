"""The GPU path's configs compose everywhere. GRPOConfig itself refuses bf16 without a GPU, so on CPU only the
composed values are checked; vLLM itself is tested in tests/test_vllm.py (`make test-vllm`, CPU or GPU).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
GPU_INFRA = ["gpu", "gpu-vllm-server"]
MODELS = sorted(p.stem for p in (ROOT / "conf/model").glob("*.yaml"))
TASKS = ["click-test", "click-button", "book-flight"]


@pytest.mark.parametrize(("infra", "model", "task"), list(itertools.product(GPU_INFRA, MODELS, TASKS)))
def test_gpu_infra_composes_with_every_model_and_task(compose_cfg, infra, model, task):
    cfg = OmegaConf.to_container(
        compose_cfg(f"infra={infra}", f"model={model}", f"task={task}"), resolve=True
    )
    t = cfg["trainer"]
    assert (t["use_vllm"], t["use_cpu"], cfg["infra"]["precision"]) == (True, False, "bf16")
    assert t["vllm_mode"] == {"gpu": "colocate", "gpu-vllm-server": "server"}[infra]


def test_lfm2_defaults(compose_cfg):
    cfg = compose_cfg("model=lfm2-350m", "infra=gpu")
    assert (cfg.model.name_or_path, cfg.model.dtype) == ("LiquidAI/LFM2-350M", "bfloat16")
    assert cfg.lora.target_modules == "all-linear"  # LFM2's in_proj/out_proj/w1-w3 too, not only q, k, v


def test_book_flight_settings(compose_cfg):
    cfg = compose_cfg("+experiment=book_flight")
    assert 10 <= cfg.task.max_env_steps <= 15  # the oracle takes 8-10 steps
    assert cfg.task.observation_delay > 0.3  # the autocomplete list opens 300 ms after typing
    assert cfg.task.prompt.compact and cfg.sft.enabled and list(cfg.sft.tasks) == ["book-flight"]
    assert cfg.trainer.max_completion_length >= 4096  # oracle episodes: up to 3.8k tokens (benchmarks.md)
