"""device_check/, the GPU check's driver (`python -m device_check`): its reduced form runs here on CPU (so it
cannot rot between GPU checks), its fixture is a valid rollout, its configurations are the GPU recipe's as
Hydra composes it, its models are LFM2-350M's architecture and the tests' tiny LFM2. On CUDA (`pytest -m gpu`)
the reduced form runs in bf16.

Module-level imports stay to what a GPU check machine has (it collects this file for `pytest -m gpu`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from device_check.agreement import bf16_tolerance
from device_check.episodes import by_task, first_turns, segments, turn_contexts
from device_check.models import LFM2_350M, LFM2_350M_PARAMETERS, build_model
from device_check.plan import FIXTURE, composed, grpo_args, make_plan
from device_check.report import failures, junit_case, markdown

ROOT = Path(__file__).resolve().parents[1]


def run_reduced(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The driver as scripts/device_check.sh runs it, in its reduced form."""
    done = subprocess.run(
        [sys.executable, "-m", "device_check", str(out), "--reduced", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "device_check.md").read_text().startswith("# Device check")
    return done, json.loads((out / "device_check.json").read_text())


def check_reduced_result(result: dict, episodes_per_step: list[int]) -> None:
    """What every reduced run must show, on any device: each path ran and did real work."""
    assert result["mode"] == "reduced" and result["complete"]
    assert not result["failures"] and not result["skipped"]
    grpo = result["grpo"]
    assert [(r["tuning"], r["workload"]) for r in grpo] == [("lora", "click-button"), ("full", "book-flight")]
    for row, n in zip(grpo, episodes_per_step):
        assert row["status"] == "ok", row.get("traceback")
        assert row["rollout_calls"] == [n]  # one call per step, every prompt of the generation batch at once
        assert row["repeats_consecutive"]  # a group's num_generations prompts arrive one after another
        assert row["grad_norm"] > 0 and row["step_s_median"] > 0
        assert 0 < row["model_tokens_per_step"] < row["tokens_per_step"] <= row["padded_tokens_per_step"]
    assert grpo[0]["params/trainable"] < grpo[0]["params/total"]  # LoRA
    assert grpo[0]["weights_changed"] > 0  # LoRA's B (its A gets no gradient while B is 0)
    assert grpo[1]["weights_dtype"] == "float32" and grpo[1]["weights_changed"] > 0.5  # full: fp32, moved
    assert grpo[1]["params/trainable"] == grpo[1]["params/total"]  # full
    assert grpo[1]["model_tokens_per_step"] < grpo[1]["tokens_per_step"] - 2 * 150  # env tokens are masked
    assert all(r["new_tokens"] > 0 and r["new_tokens_per_s"] > 0 for r in result["generation"])
    agreement = result["agreement"]
    assert len(agreement) == 2 and all(r["ok"] for r in agreement)
    assert all(r["model_tokens"] >= 3 for r in agreement)  # a click-button turn, two book-flight turns


@pytest.mark.slow  # real GRPO steps, if of a tiny model: ~30 s on 2 cores
def test_reduced_check_on_cpu(tmp_path: Path) -> None:
    """The whole driver on CPU: tiny LFM2 in fp32, a LoRA step on click-button episodes and a full-tuning
    step on two-turn book-flight episodes in micro-batches, the generator, the logprob agreement at fp32's
    tolerance (1e-4), the JSON and the markdown table."""
    from browserrl.modeling import prepare_packaged_model

    _, result = run_reduced(tmp_path, "--device", "cpu", "--tokenizer", str(prepare_packaged_model()))
    check_reduced_result(result, [4, 2])
    assert all(r["precision"] == "fp32" and r["max_abs_diff"] < 1e-4 for r in result["agreement"])
    assert not result["grpo"][0].get("peak_gpu_mb") and result["grpo"][0]["peak_rss_mb"] > 0


@pytest.mark.gpu
def test_reduced_check_on_cuda(tmp_path: Path) -> None:
    """The reduced form on the GPU: bf16 autocast (tiny LFM2 keeps fp32 weights, as conf/model says), the
    logprob agreement at bf16's tolerance, peak GPU memory reported. The tokenizer: the carried one (make
    device-wheels) or the packaged SmolLM2's."""
    _, result = run_reduced(tmp_path, "--device", "cuda")
    check_reduced_result(result, [4, 2])
    assert all(r["precision"].startswith("bf16") for r in result["agreement"])
    assert all(r["peak_gpu_mb"] > 0 for r in result["grpo"])


def test_fixture_is_a_recorded_rollout() -> None:
    """8 click-button and 4 book-flight oracle episodes as the rollout contract makes them: one sequence each,
    every model turn closed by end-of-turn, env observations masked, ids within SmolLM2's vocabulary."""
    fixture = json.loads(FIXTURE.read_text())
    assert FIXTURE.stat().st_size < 1_000_000
    assert [len(by_task(fixture, t)) for t in ("click-button", "book-flight")] == [8, 4]
    eot, vocab = fixture["eot_id"], fixture["vocab_size"]
    assert vocab <= LFM2_350M["vocab_size"]  # the ids fit LFM2-350M's embedding
    for e in fixture["episodes"]:
        assert e["success"] and e["steps"] >= 1
        ids = e["prompt_ids"] + e["completion_ids"]
        assert max(ids) < vocab and len(e["completion_ids"]) == len(e["env_mask"])
        turns = [(start, end) for from_model, start, end in segments(e["env_mask"]) if from_model]
        assert len(turns) == e["steps"]
        assert all(e["completion_ids"][end - 1] == eot for _, end in turns)
        assert all(end - start <= e["max_action_tokens"] + 1 for start, end in turns)
        assert e["env_mask"][-1] == 1  # ends with the model's (last) turn
        assert len(turn_contexts(e)) == e["steps"]
    for e in by_task(fixture, "book-flight"):
        assert e["steps"] >= 8 and e["env_mask"].count(0) > 1000  # observations between the turns
        short = first_turns(e, 2)
        assert sum(from_model for from_model, _, _ in segments(short["env_mask"])) == 2


def test_full_plan_is_the_gpu_recipe() -> None:
    """The full check's GRPO configurations are `train.py infra=gpu`'s with only a model, a tuning and a task
    (every one 32 episodes per optimizer step in groups of 8), then the probe: book-flight in one batch."""
    plan = make_plan(reduced=False)
    *recipe, probe = plan.grpo
    assert probe.probe and not any(run.probe for run in recipe)
    assert all(o in ("task=click-button", "+experiment=book_flight") for run in recipe for o in run.overrides)
    for run in plan.grpo:
        cfg = composed(f"model={run.model}", f"tuning={run.tuning}", *run.overrides)
        t = cfg.trainer
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 32 and t.num_generations == 8
        assert cfg.task.name == run.workload.split()[0] and cfg.infra.precision == "bf16"
    assert composed(*probe.overrides).trainer.gradient_accumulation_steps == 1


def test_grpo_args_are_the_composed_trainer(tmp_path: Path) -> None:
    """GRPOConfig gets the composed trainer section, changed only where the check must (no vLLM, its own step
    count, no checkpoints or loggers); precision from infra.precision (fp32 in the CPU form)."""
    from omegaconf import OmegaConf

    cfg = composed("model=tiny-lfm2", "tuning=lora", "+experiment=book_flight", cpu=True)
    args = grpo_args(cfg, tmp_path, max_steps=3)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    changed = {k for k, v in trainer.items() if getattr(args, k) != v}
    assert changed == {"use_vllm", "max_steps", "save_strategy"}
    assert not args.use_vllm and args.max_steps == 3 and args.report_to == []
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing


def test_models_are_lfm2_350m_and_the_tiny_lfm2(tmp_path: Path) -> None:
    """LFM2-350M's config builds its published parameter count; model=tiny-lfm2 is the tests' tiny model
    (build_tiny_model), weight for weight."""
    from transformers import AutoModelForCausalLM

    from browserrl.modeling import build_tiny_model, load_tokenizer, prepare_packaged_model

    tokenizer = load_tokenizer(str(prepare_packaged_model()))
    lfm2, meta = composed("model=lfm2-350m").model, torch.device("meta")
    big = build_model(lfm2, tokenizer, meta)
    assert sum(p.numel() for p in big.parameters()) == LFM2_350M_PARAMETERS
    assert big.dtype == torch.bfloat16  # LoRA's frozen base, as conf/model/lfm2-350m.yaml says
    full = build_model(lfm2, tokenizer, meta, trains_weights=True)
    assert full.dtype == torch.float32  # what the optimizer of a full fine-tune steps
    assert big.config.intermediate_size == 6656 and big.model.layers[0].feed_forward.w1.out_features == 4608
    tiny = build_model(composed("model=tiny-lfm2", cpu=True).model, tokenizer, torch.device("cpu"))
    reference = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    saved = {"architectures", "_name_or_path", "dtype"}  # what saving and loading add
    assert {k: v for k, v in tiny.config.to_dict().items() if k not in saved} == {
        k: v for k, v in reference.config.to_dict().items() if k not in saved
    }
    weights, expected = tiny.state_dict(), reference.state_dict()
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)


def test_gpu_test_report_reads_junit() -> None:
    """`pytest -m gpu`'s junit report: outcomes of tests, and modules that cannot be imported here, told
    apart by whether they hold gpu tests."""
    import xml.etree.ElementTree as ET

    cases = ET.fromstring(
        "<testsuite>"
        '<testcase classname="tests.test_device_check" name="test_reduced_check_on_cuda"/>'
        '<testcase classname="tests.test_x" name="test_y"><skipped message="needs CUDA"/></testcase>'
        '<testcase classname="" name="tests.test_device_check"><error message="collection failure">'
        "E   ModuleNotFoundError: No module named 'openenv'</error></testcase>"
        '<testcase classname="" name="tests.test_prompts"><error message="collection failure">'
        "E   ModuleNotFoundError: No module named 'openenv'</error></testcase>"
        "</testsuite>"
    )
    rows = [junit_case(case) for case in cases.iter("testcase")]
    assert [r["outcome"] for r in rows] == [
        "passed",
        "skipped",
        "not collected (holds gpu tests)",
        "not collected (no gpu tests)",
    ]
    assert rows[1]["reason"] == "needs CUDA" and "openenv" in rows[2]["reason"]
    empty = {"grpo": [], "generation": [], "agreement": [], "skipped": [], "complete": True, "wall_s": 1.0}
    report = markdown(
        empty
        | {"mode": "full", "environment": {"device": "cuda", "gpu": "H100", "versions": {}}}
        | {"gpu_tests": {"command": "python -m pytest -m gpu", "tests": rows}}
    )
    assert "| tests.test_device_check | not collected (holds gpu tests) |" in report
    assert "1 other test modules cannot be imported here (missing: openenv)" in report


def test_bf16_tolerance_grows_with_the_logits() -> None:
    assert bf16_tolerance(1.0) == (0.01, 0.05)  # tests/test_rollout.py's CPU bounds, logits of ~1
    mean, worst = bf16_tolerance(40.0)
    assert mean == pytest.approx(40 / 256) and worst == pytest.approx(4 * 40 / 256)


def test_the_driver_imports_without_the_env_libraries():
    """A GPU check machine has no browsergym, openenv, Playwright or MiniWoB: the driver and what it imports
    of browserrl (generation, grpo, compat, modeling, analysis) must not need them."""
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("browsergym", "openenv", "playwright", "miniwob"):
            raise ImportError(f"no {name} on a GPU check machine")
sys.meta_path.insert(0, Block())
import device_check.__main__
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_full_fine_tune_whose_weights_are_bf16_or_did_not_move_fails_the_check():
    """The master-weight check (a full fine-tune held in bf16 loses an lr-1e-5 step to rounding)."""
    row = {"model": "lfm2-350m", "tuning": "full", "workload": "click-button", "status": "ok", "probe": False}
    fine = row | {"weights_dtype": "float32", "weights_changed": 0.97}
    assert failures({"grpo": [fine], "agreement": []}) == []
    for dtype, moved in (("bfloat16", 0.02), ("float32", 0.0)):
        result = {"grpo": [row | {"weights_dtype": dtype, "weights_changed": moved}], "agreement": []}
        assert failures(result) == [f"grpo lfm2-350m full click-button: {dtype}, {moved:.0%} moved"]
