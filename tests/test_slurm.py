"""infra=slurm: hydra-submitit-launcher; its local executor runs a real two-run multirun here."""

from __future__ import annotations

import json

import pytest
from helpers import TINY, run_train

from browserrl.compose import compose

# infra=slurm builds on infra/gpu: these put a CPU-only test machine back on the CPU path.
CPU = ["trainer.use_cpu=true", "trainer.use_vllm=false", "infra.precision=fp32"]


def test_infra_slurm_selects_the_submitit_slurm_launcher():
    cfg = compose("infra=slurm", return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.infra.name == "slurm" and cfg.trainer.use_vllm and cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.browser
@pytest.mark.slow
def test_submitit_local_runs_a_two_run_multirun(tmp_path):
    done = run_train(
        "-m",
        "infra=slurm",
        "hydra/launcher=submitit_local",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.timeout_min=10",
        *CPU,
        *TINY,
        "env.sessions=2",
        "trainer.per_device_train_batch_size=2",
        "trainer.max_steps=1",
        "eval.before=false",
        "eval.after=false",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
        "seed=0,1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    runs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert [p.name for p in runs] == ["0-click-test-lora-r16-s0", "1-click-test-lora-r16-s1"]
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "reward" in r] == [1]
        assert (run / "final" / "adapter_model.safetensors").exists()
    jobs = sorted((tmp_path / ".submitit").glob("*/*_0_result.pkl"))  # one submitit job (process) per run
    assert len(jobs) == 2 and jobs[0].parent != jobs[1].parent
