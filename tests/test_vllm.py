"""vLLM for real: its colocate path end to end, on the CPU with vLLM's CPU build (`make test-vllm` builds that
venv and runs these) or on a GPU with vLLM installed. Skipped where vLLM is not installed (`make test`).

What the GPU path relies on and only a real engine shows: a rollout through `VLLMGenerator` keeps the contract
(one sequence per episode, vLLM's logprobs on the model's tokens, equal to what the trainer recomputes); a
weight sync reaches every weight the sampler uses (browserrl.compat.sync_by_reload on the CPU, where TRL's own
sync cannot write); and GRPO steps through TRL's GRPOTrainer with `use_vllm=True` keep the sampler's logprobs
equal to the trainer's after each sync, LoRA and full.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import run_train
from omegaconf import OmegaConf

from browserrl import compat
from browserrl.generation import SamplingParams, VLLMGenerator
from browserrl.modeling import load_policy, prepare_packaged_model
from browserrl.pool import EnvPool
from browserrl.rollout import ChatFormat, RolloutEngine, model_policy
from browserrl.settings import TaskSettings

vllm = pytest.importorskip("vllm")

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: fp32 on both sides: what vLLM reports and what the trainer recomputes differ by ~3e-5 (docs/gpu.md).
LOGPROB_TOLERANCE = 1e-3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packaged() -> Iterator[tuple[Any, Any, Any]]:
    """One engine in this process, as TRL builds its colocated one (external launcher, processed logprobs),
    with infra=cpu-vllm's engine options and environment, in fp32, beside the same model in transformers."""
    infra = OmegaConf.load(ROOT / "conf/infra/cpu-vllm.yaml")
    launcher = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    launcher |= {"MASTER_PORT": "29517", **infra.hydra.job.env_set}
    saved = dict(os.environ)
    os.environ.update({k: os.environ.get(k, v) for k, v in launcher.items()})
    try:  # the launcher's variables only while the engine starts: train.py runs below would read them
        llm = vllm.LLM(
            model=str(prepare_packaged_model()),
            dtype="float32",
            distributed_executor_backend="external_launcher",
            max_num_batched_tokens=4096,
            logprobs_mode="processed_logprobs",
            gpu_memory_utilization=0.2,
            **infra.infra.vllm_engine,
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    model, tokenizer = load_policy(OmegaConf.create({"source": "packaged", "dtype": "float32"}))
    yield llm, model.to(DEVICE).eval(), tokenizer


def recomputed(model: Any, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """The trainer's logprobs of `completion` after `prompt` (temperature-scaled, as GRPOTrainer scores)."""
    ids = torch.tensor([prompt + completion], device=DEVICE)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt) :, None])[:, 0].cpu()


def sampler_gap(llm: Any, model: Any, prompt: list[int]) -> float:
    """Largest difference between vLLM's logprobs of 16 sampled tokens and the trainer's."""
    out = llm.generate(
        [{"prompt_token_ids": prompt}],
        vllm.SamplingParams(temperature=1.0, max_tokens=16, logprobs=0, seed=1),
        use_tqdm=False,
    )[0].outputs[0]
    ids = list(out.token_ids)
    sampled = torch.tensor([d[t].logprob for d, t in zip(out.logprobs, ids)])
    return (recomputed(model, prompt, ids, 1.0) - sampled).abs().max().item()


@pytest.mark.browser
def test_vllm_colocate_rollout_keeps_the_contract(packaged, env_url):
    """Episodes played through VLLMGenerator: one sequence each, vLLM's logprobs on the model's tokens only,
    and they agree with what the trainer recomputes; the episodes run several turns."""
    llm, model, tokenizer = packaged
    chat = ChatFormat(tokenizer)
    task = TaskSettings.from_config(OmegaConf.load(ROOT / "conf/task/click-test.yaml"))
    pool = EnvPool(lambda _: [env_url], size=4)
    try:
        generator = VLLMGenerator(llm, chat.eot_id, SamplingParams(0.7))
        engine = RolloutEngine(model_policy(generator), pool, chat, {"click-test": task})
        batch = engine.play([("click-test", 7)] * 4 + [("click-test", 8)] * 4)
    finally:
        pool.close()
    assert max(e.steps for e in batch.episodes) >= 2, "no episode took a second turn"
    for e in batch.episodes:
        assert e.env_error is None and e.steps >= 1
        assert len(e.completion_ids) == len(e.env_mask) == len(e.logprobs)
        mask = torch.tensor(e.env_mask).bool()
        assert (~mask).sum() > 0 if e.steps >= 2 else True  # the env's tokens between turns are masked out
        again = recomputed(model, e.prompt_ids, e.completion_ids, 0.7)
        assert torch.allclose(again[mask], torch.tensor(e.logprobs)[mask], atol=LOGPROB_TOLERANCE)


@pytest.mark.skipif(DEVICE != "cpu", reason="vLLM's CPU build; on a GPU TRL's own sync writes the weights")
def test_weight_sync_by_reload_reaches_every_weight(packaged):
    """A change to each kind of weight (one projection, the tied embedding and LM head, the norms, the MLPs)
    shows in vLLM's logprobs before a sync and is gone after it (vLLM's reload alone misses the tied head)."""
    llm, model, tokenizer = packaged
    prompt = tokenizer("The quick brown fox jumps over the lazy dog. Then it").input_ids
    generation = SimpleNamespace(
        llm=llm, _iter_named_params=lambda: ((n, p.data) for n, p in model.named_parameters())
    )
    compat.sync_by_reload(generation)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    noise = torch.Generator().manual_seed(0)
    parts = ["layers.0.self_attn.q_proj", "embed_tokens", "norm", "mlp"]
    try:
        for part in parts:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if part in name:
                        p.add_(torch.randn(p.shape, generator=noise).to(p) * 0.1 * p.abs().mean())
            assert sampler_gap(llm, model, prompt) > 5 * LOGPROB_TOLERANCE, f"{part}: no change to see"
            generation.sync_weights()
            assert sampler_gap(llm, model, prompt) < LOGPROB_TOLERANCE, f"{part} did not reach vLLM"
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(original[name])
        generation.sync_weights()


@pytest.mark.browser
@pytest.mark.skipif(DEVICE != "cpu", reason="infra=cpu-vllm; a GPU runs infra=gpu (docs/gpu.md)")
@pytest.mark.parametrize(("tuning", "lr"), [("lora", "1.0e-2"), ("full", "1.0e-4")], ids=["lora", "full"])
def test_grpo_steps_with_vllm_colocate(tmp_path, tuning, lr):
    """Three GRPO steps of train.py through TRL's colocated vLLM on the real env server: each step's sampler
    logprobs (TRL's `sampling/sampling_logp_difference`) equal the trainer's, after weights that moved (the
    learning rates make a stale engine show: 0.07 nats at full tuning's 1e-4 before the tied head's fix)."""
    run = tmp_path / tuning
    proc = run_train(
        "infra=cpu-vllm",
        "task=click-test",
        f"tuning={tuning}",
        f"trainer.learning_rate={lr}",
        "trainer.max_steps=3",
        "grpo.stop_after_idle_steps=0",
        "eval.before=false",
        "eval.after=false",
        "logger=none",
        f"hydra.run.dir={run}",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [s for s in steps if "sampling/sampling_logp_difference/max" in s]
    assert len(trained) == 3, steps
    for s in trained:
        assert s["sampling/sampling_logp_difference/max"] < LOGPROB_TOLERANCE, s
        assert s["sampling/is_masked"] == 0.0
    assert trained[0]["grad_norm"] > 0  # later steps may keep no group: lr 1e-2 can wreck a LoRA policy fast
    assert all(s["grad_norm"] > 0 for s in trained if s["groups/kept"] > 0)


@pytest.mark.browser
@pytest.mark.skipif(DEVICE != "cpu", reason="infra=cpu-vllm")
def test_bench_generate_with_vllm(tmp_path, env_url):
    """benchmarks/bench_generate.py's vLLM way, as documented (its own process: an engine of its own)."""
    out = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "benchmarks/bench_generate.py"), "--ways", "merged,vllm"]
    command += ["--groups", "1", "--repeats", "1", "--out", str(out), "infra=cpu-vllm", "task=click-test"]
    command += ["trainer.num_generations=2", "env=remote", f"env.url={env_url}"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for way in ("merged", "vllm"):
        for decoding in ("sampled", "greedy"):
            assert report[f"{way}/{decoding}"]["model_tokens"] > 0
    assert report["vllm/merged generate_s, greedy"] > 0
