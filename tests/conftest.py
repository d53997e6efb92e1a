"""Shared fixtures: the repo root, Hydra's compose API on conf/, one env server per test process, a skip for
GPU tests without CUDA, and one thread per process when pytest-xdist runs the suite in several."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from browserrl.compose import compose

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    return compose


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs two workers on two cores: an OpenMP pool of two threads in each would spin against
        # the other's; the train.py processes a test starts inherit the setting.
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def env_url() -> str:
    """One real local env server (headless Chromium) shared by the tests of this process that play
    episodes."""
    from browserrl.env.launcher import LocalEnvServer

    with LocalEnvServer(task="click-test", max_sessions=8) as server:
        yield server.url
