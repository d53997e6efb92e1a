"""browserrl.sweep: a sweep's points each in a fresh process, nothing of one left when the next starts."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY, run_train
from omegaconf import OmegaConf

from browserrl.compose import compose
from browserrl.sweep import run_point


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone but not reaped


def env_servers(marker: str) -> set[int]:
    """Live env servers whose environment holds `marker` (set for one test's runs): another pytest-xdist
    worker's servers do not count."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if not (proc.name.isdigit() and b"browserrl.env.server" in (proc / "cmdline").read_bytes()):
                continue
            if marker.encode() in (proc / "environ").read_bytes().split(b"\0"):
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("infra", ["gpu", "gpu-vllm-server"], ids=["colocate", "server"])
def test_accelerator_infras_run_each_sweep_point_in_a_fresh_process(infra):
    assert compose(f"infra={infra}", return_hydra_config=True).hydra.launcher._target_.endswith(
        "ProcessPerRunLauncher"
    )
    assert compose("infra=cpu", return_hydra_config=True).hydra.launcher._target_.endswith("BasicLauncher")


def test_what_a_point_leaves_running_is_killed(tmp_path):
    """A point that exits while a process it started (an engine core, say) still runs: that one is ended."""
    pid_file = tmp_path / "child"
    script = (
        "import subprocess, sys; p = subprocess.Popen(['sleep', '300']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); sys.exit(3)"
    )
    pid, code = run_point([sys.executable, "-c", script])
    assert code == 3
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


@pytest.mark.browser
@pytest.mark.slow
def test_a_two_point_sweep_runs_two_processes_and_leaves_nothing(tmp_path, monkeypatch):
    marker = f"BROWSERRL_TEST_SWEEP={tmp_path}"  # inherited by the sweep's points and their env servers
    monkeypatch.setenv(*marker.split("=", 1))
    done = run_train(
        "-m",
        "hydra/launcher=process_per_run",
        *TINY,
        "env.sessions=2",
        "trainer.per_device_train_batch_size=2",
        "trainer.max_steps=1",
        "eval.before=false",
        "eval.after=false",
        f"hydra.sweep.dir={tmp_path}",
        "seed=0,1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pids = [int(p) for p in re.findall(r"pid (\d+)", done.stdout + done.stderr)]
    assert len(set(pids)) == 2 and not any(alive(p) for p in pids)
    assert not env_servers(marker)  # each point's env server went with it
    runs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert [p.name for p in runs] == ["0-click-test-lora-r16-s0", "1-click-test-lora-r16-s1"]
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "reward" in r] == [1]
        assert OmegaConf.load(run / "config.yaml").logger.group == tmp_path.name  # one W&B group


def test_a_failed_point_is_reported_not_hidden(tmp_path):
    """Hydra raises a failed point's error when the sweep ends (after the other points ran)."""
    from hydra.core.utils import JobStatus

    from browserrl.sweep import point_return

    config = OmegaConf.create({"hydra": {"job": {"name": "train"}}})
    assert point_return(["seed=0"], config, tmp_path, 0).status == JobStatus.COMPLETED
    failed = point_return(["seed=1"], config, tmp_path, 2)
    assert failed.status == JobStatus.FAILED
    with pytest.raises(RuntimeError, match="exited with code 2"):
        failed.return_value  # noqa: B018 - the property raises
