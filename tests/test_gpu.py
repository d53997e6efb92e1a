"""The GPU path: configs compose everywhere; with CUDA and vLLM, VLLMGenerator rollouts keep the contract.

Tests marked `gpu` are skipped without CUDA (tests/conftest.py); on a GPU machine they need `pip install vllm`
(EXTRAS=dev,gpu) and the env's Chromium. GRPOConfig itself refuses bf16 without a GPU, so on CPU only the
composed values are checked.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from browserrl.generation import SamplingParams, VLLMGenerator
from browserrl.modeling import load_policy, prepare_packaged_model
from browserrl.pool import EnvPool
from browserrl.rollout import ChatFormat, RolloutEngine, model_policy
from browserrl.settings import TaskSettings

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


@pytest.mark.gpu
@pytest.mark.browser
def test_vllm_colocate_rollout_keeps_the_contract(env_url):
    """Real vLLM on the GPU, the packaged SmolLM2: one sequence per episode, vLLM's logprobs on model tokens,
    and they agree with what the trainer recomputes (float32 both sides)."""
    vllm = pytest.importorskip("vllm")
    path = str(prepare_packaged_model())
    llm = vllm.LLM(
        model=path, dtype="float32", gpu_memory_utilization=0.2, logprobs_mode="processed_logprobs"
    )
    model, tokenizer = load_policy(OmegaConf.create({"source": "packaged", "dtype": "float32"}))
    model = model.cuda().eval()
    chat = ChatFormat(tokenizer)
    task = TaskSettings.from_config(OmegaConf.load(ROOT / "conf/task/click-test.yaml"))
    pool = EnvPool(lambda _: [env_url], size=4)
    try:
        generator = VLLMGenerator(llm, chat.eot_id, SamplingParams(0.7))
        engine = RolloutEngine(model_policy(generator), pool, chat, {"click-test": task})
        batch = engine.play([("click-test", 7)] * 4)
    finally:
        pool.close()
    for e in batch.episodes:
        assert e.env_error is None and e.steps >= 1
        assert len(e.completion_ids) == len(e.env_mask) == len(e.logprobs)
        ids = torch.tensor([e.prompt_ids + e.completion_ids], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[0, len(e.prompt_ids) - 1 : -1].float() / 0.7
        recomputed = torch.log_softmax(logits, -1).gather(-1, ids[0, len(e.prompt_ids) :, None])[:, 0]
        mask = torch.tensor(e.env_mask, device="cuda").bool()
        assert torch.allclose(recomputed[mask], torch.tensor(e.logprobs, device="cuda")[mask], atol=1e-3)
