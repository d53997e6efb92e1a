"""browserrl.compat and browserrl.env.compat: every private API the repo touches is still where it was read,
in the versions it was read in. A failure here means a library moved: re-read its source, then update the
module and its TESTED range."""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest
import torch
import trl
import trl.trainer.utils as trl_utils
from openenv.core.env_client import EnvClient
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from transformers import Trainer

from browserrl import compat
from browserrl.env import compat as env_compat


@pytest.mark.parametrize(
    ("name", "checked", "allowed", "optional"),
    [(n, *v, False) for n, v in {**compat.TESTED, **env_compat.TESTED}.items()]
    + [(n, *v, True) for n, v in compat.TESTED_OPTIONAL.items()],
)
def test_installed_versions_are_the_checked_ones(name, checked, allowed, optional):
    assert Version(checked) in SpecifierSet(allowed)
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        if not optional:
            raise
        pytest.skip(f"{name} is not installed here (make test-vllm's venv has it)")
    assert Version(installed).release >= (0,)  # a version pip understands
    assert Version(installed) in SpecifierSet(allowed), f"{name} {installed} is past {allowed}: re-check"


def test_trl_vllm_names_are_where_they_were():
    """What compat.vllm_engine_options and compat.sync_by_reload reach into (tests/test_vllm.py runs them)."""
    from trl.generation.vllm_generation import VLLMGeneration

    init = inspect.getsource(VLLMGeneration._init_vllm)
    assert "self.llm = LLM(" in init and "dtype" not in init and "enforce_eager" not in init
    assert inspect.isgeneratorfunction(VLLMGeneration._iter_named_params)
    assert "driver_worker.model_runner.model.load_weights" in inspect.getsource(VLLMGeneration.sync_weights)


def test_trl_names_are_where_they_were():
    assert list(inspect.signature(trl_utils._use_triton).parameters) == ["device"]
    for name in compat.GRPO_OVERRIDES:
        assert callable(getattr(trl.GRPOTrainer, name)), name
    source = inspect.getsource(trl.GRPOTrainer)
    assert "self._metrics[mode][" in source and "self._step += 1" in source
    assert "self._step % self.current_gradient_accumulation_steps" in source  # a step's last micro-batch
    assert list(inspect.signature(Trainer.log).parameters)[:2] == ["self", "logs"]


def test_the_cache_goes_by_the_name_generate_and_its_outputs_use():
    """compat.CACHE: generate takes the cache by it without a deprecation warning, and returns it under it."""
    import warnings

    from helpers import PAD, tiny_llama

    model = tiny_llama().eval()
    ids = torch.tensor([[2, 3, 4]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        first = compat.cache_of(model(input_ids=ids[:, :2]))
        out = model.generate(
            input_ids=ids,
            max_new_tokens=2,
            min_new_tokens=2,  # tiny_llama's end-of-turn must not stop it early
            do_sample=False,
            pad_token_id=PAD,
            return_dict_in_generate=True,
            **{compat.CACHE: first},
        )
    assert compat.cache_of(out) is first  # generate extended the cache it was given, not a new one
    assert first.get_seq_length() == 4  # 3 given + 2 generated, the last not yet encoded


def test_weights_version_moves_with_an_in_place_write():
    layer = torch.nn.Linear(2, 2)
    before = compat.weights_version(layer)
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert compat.weights_version(layer) > before


def test_env_names_are_where_they_were():
    from browsergym.core.observation import _post_extract, _pre_extract
    from playwright.sync_api import sync_playwright

    assert {"page", "tags_to_mark", "lenient"} <= set(inspect.signature(_pre_extract).parameters)
    assert list(inspect.signature(_post_extract).parameters) == ["page"]
    for name in env_compat.OPENENV_CLIENT_METHODS:
        assert inspect.iscoroutinefunction(getattr(EnvClient, name)), name
    playwright = sync_playwright().start()
    try:
        driver = env_compat.driver_process(playwright)
        assert driver.pid and driver.returncode is None  # the running driver, which kill() ends
    finally:
        playwright.stop()
