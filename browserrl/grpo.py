"""TRL's GRPOTrainer, computing only what a loss uses: no forward/backward for episodes with nothing to teach,
each micro-batch cut to its own length, and an LM head projecting only the model's turns on CPU too, not the
env's observations between them (browserrl.compat).

Nothing to teach: with no KL term (beta 0), no entropy bonus, no auxiliary loss and no entropy mask, an
episode whose advantage is 0 (its group's rewards were all equal, or an env error made it unscorable)
contributes exactly zero to the loss and its gradient. Such rows are dropped from a micro-batch where the
loss type normalizes by constants (dapo, the default; cispo; vespo), and a micro-batch with no other row is
not computed at all for every loss type: its loss is a zero tied to the trainable weights. With several
processes such a micro-batch still runs the forward of one row (a zero loss): DDP's gradient all-reduce and
TRL's metric collectives happen there, and a process that left them out would hang the others.
browserrl.groups fills a step with groups that teach; this is what makes the others, at the draw cap, cost
(almost) nothing.

Padding: TRL pads a whole generation batch (a step's episodes) to one width, prompts on the left to the
longest prompt, completions on the right to the longest completion, and splits it into micro-batches as it
is. A suite's step mixes one-turn episodes of a few hundred tokens with eight-turn ones of ~2k, so a
micro-batch holding one short episode was computed at the longest one's width (two of the recipe's steps:
1.64x the tokens there were, docs/benchmarks.md). `trim_padding` drops the columns that are padding in every
row of a micro-batch. The loss and its gradient do not change: those positions are outside the attention
mask and the loss mask, and every loss type normalizes by mask sums or by constants
(trainer.max_completion_length), never by the tensor's width (tests/test_grpo.py compares both against
TRL's on the same micro-batch).

With vLLM, TRL corrects for the sampler's logprobs differing from the trainer's by an importance ratio, by
default one per episode (`vllm_importance_sampling_mode: sequence_mask`) that zeroes an episode whose ratio
leaves [clip_min, clip_max]. An episode's ratio is exp of a sum over hundreds of tokens here, each rounded in
bf16, so a small per-token drift may mask many episodes: `sampling/is_masked` logs the share masked
(episodes in sequence modes, tokens in token modes) at every generation.

Expert weight (`expert_sft_weight`, grpo.expert_sft_weight). An expert episode in a group (browserrl.groups)
is one of a step's episodes (32 in the recipe) and carries its group's advantage over all of the step's
tokens (dapo's normalizer): 2-8% of a step's loss tokens in the study (`expert/token_share`), where SFT's
loss is the mean over the demonstrations' own tokens. With a weight w, the expert's rows get the advantage
w x (the step's loss tokens) / (the expert's loss tokens, over all processes). With the ratio at 1 (one
iteration per generation: on CPU TRL takes the old logprobs as the current ones; the expert's sampler
logprobs are NaN, so no vLLM correction), the step's gradient then holds w x the gradient of the expert
tokens' mean negative log-likelihood (SFT on the demonstrations) beside GRPO's term for the policy's
episodes, whose advantages stay. With several iterations the ratio moves, and clipping caps that term as it
caps any positive advantage. Exact for the token-level losses normalized by the step's tokens (dapo, cispo),
which browserrl.config requires. Measured at w = 1 (docs/benchmarks.md, "The expert's tokens as SFT"):
worse on the suite than no weight, from the same start; off by default.

Per optimizer step the trainer logs `tokens/trained` (prompt and completion tokens it computed),
`tokens/skipped` (rows with nothing to teach), `time/train_s` (its forwards and backwards) and
`time/saved_s_est`: the skipped tokens and those of groups the rollout drew and dropped (`note_dropped`),
priced at this step's seconds per trained token, an estimate of what training on them would have cost.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import trl
from transformers import TrainerCallback

from browserrl.compat import compact_lm_head, loss_tokens_only, micro_batches, record_metric

log = logging.getLogger(__name__)

#: Loss types whose normalizer is a constant of the step (num_items_in_batch): dropping rows whose loss is
#: zero leaves the loss and its gradient unchanged. The others average over a micro-batch's rows or tokens.
ROW_EXACT_LOSSES = ("dapo", "cispo", "vespo")
ZERO_ADVANTAGE = 1e-6  # |advantage| at or below this: the row has nothing to teach

#: Inputs on the prompt's axis; every other [batch, width, ...] tensor of a micro-batch whose width is the
#: completion's (ids, masks, the sampler's, old and reference logprobs) is cut on the completion's axis.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def loss_mask(output: dict[str, Any]) -> torch.Tensor:
    """The tokens a scored batch's loss counts: the completion's, less the env's (TRL's tool_mask)."""
    return output["completion_mask"] * output.get("tool_mask", 1)


def masked_share(output: dict[str, Any], mode: str) -> tuple[int, int] | None:
    """(masked, total): episodes (sequence_mask) or loss tokens (token_mask) whose importance ratio TRL set to
    zero in a scored batch; None when no ratio masks anything (no vLLM, or a truncate mode)."""
    ratio = output.get("importance_sampling_ratio")
    if ratio is None or not mode.endswith("_mask"):
        return None
    if mode.startswith("sequence"):
        return int((ratio == 0).sum()), ratio.numel()
    mask = loss_mask(output)
    return int(((ratio == 0) & mask.bool()).sum()), int(mask.sum())


def _width(used: int, full: int, multiple: int | None) -> int:
    """Columns to keep: the used ones (at least one), rounded up to `multiple` (GRPOConfig's
    pad_to_multiple_of, for compilers that want few distinct shapes), never more than there are."""
    width = max(used, 1)
    if multiple:
        width = -(-width // multiple) * multiple
    return min(width, full)


def trim_padding(inputs: dict[str, Any], multiple: int | None = None) -> dict[str, Any]:
    """A micro-batch without the prompt columns left of its longest prompt and the completion columns right
    of its longest completion (TRL pads prompts on the left, completions on the right)."""
    prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
    batch, prompt_full = prompt_mask.shape
    completion_full = completion_mask.shape[1]
    used = prompt_mask.any(0).nonzero()
    prompt_width = _width(prompt_full - int(used[0]) if len(used) else 0, prompt_full, multiple)
    used = completion_mask.any(0).nonzero()
    completion_width = _width(int(used[-1]) + 1 if len(used) else 0, completion_full, multiple)
    trimmed = dict(inputs)
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != batch:
            continue
        if key in PROMPT_KEYS:
            trimmed[key] = value[:, prompt_full - prompt_width :]
        elif value.shape[1] == completion_full:
            trimmed[key] = value[:, :completion_width]
    return trimmed


def select_rows(inputs: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The micro-batch's rows where `keep` is true (every [batch, ...] tensor; scalars as they are)."""
    batch = keep.shape[0]
    return {
        k: v[keep] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == batch else v
        for k, v in inputs.items()
    }


def tokens_of(inputs: dict[str, Any]) -> int:
    return int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())


@dataclass
class StepTokens:
    """One optimizer step's accounting: tokens trained, skipped (nothing to teach) and dropped by the
    rollout (groups drawn and not handed over), and the seconds spent training."""

    trained: int = 0
    skipped: int = 0
    dropped: int = 0
    train_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        per_token = self.train_s / self.trained if self.trained else math.nan
        return {
            "tokens/trained": self.trained,
            "tokens/skipped": self.skipped,
            "time/train_s": self.train_s,
            "time/saved_s_est": (self.skipped + self.dropped) * per_token,
        }


class GRPOTrainer(trl.GRPOTrainer):
    """trl.GRPOTrainer that computes no forward/backward for episodes with nothing to teach, computes each
    micro-batch without its shared padding, and scores with an LM head that projects the model's turns
    only."""

    def __init__(self, *args: Any, expert_sft_weight: float | None = None, **kwargs: Any):
        rollout_func = kwargs.get("rollout_func")
        if rollout_func is not None:
            kwargs["rollout_func"] = self._marking_experts(rollout_func)
        super().__init__(*args, **kwargs)
        self.expert_sft_weight = expert_sft_weight
        self.expert_rows: list[bool] = []  # the latest rollout's `expert` field: its rows the oracle played
        self.step_tokens = StepTokens()
        self.last_step = StepTokens()  # the latest finished step's (StopWhenIdle reads it)
        self.trained_total = 0  # tokens over the whole run: 0 means the weights never moved

    def note_dropped(self, tokens: int) -> None:
        """The rollout drew groups with nothing to teach and kept them out of this step: their tokens."""
        self.step_tokens.dropped += tokens

    def _marking_experts(self, rollout_func: Any) -> Any:
        """rollout_func, keeping which of its rows an expert played (its output's `expert` field)."""

        def rollout(prompts: list[Any], trainer: GRPOTrainer) -> dict[str, Any]:
            output = rollout_func(prompts, trainer)
            self.expert_rows = list(output.get("expert") or [False] * len(output["prompt_ids"]))
            return output

        return rollout

    def train(self, *args: Any, **kwargs: Any) -> Any:
        with compact_lm_head():
            return super().train(*args, **kwargs)

    def _prepare_inputs(self, inputs: Any) -> dict[str, Any]:
        """TRL's (at a step's first micro-batch: the rollout and its scoring); a micro-batch `training_step`
        already prepared passes through."""
        if isinstance(inputs, dict):
            return inputs
        return super()._prepare_inputs(inputs)

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        """TRL's, and the share of the batch its importance-sampling mask zeroed (summed over processes)."""
        output = super()._generate_and_score_completions(inputs)
        if self.expert_sft_weight is not None and self.model.training:
            weigh_expert(self, output, self.expert_sft_weight)
        share = masked_share(output, self.args.vllm_importance_sampling_mode)
        if share is not None:
            masked, total = sum_over_processes(self.accelerator, list(share))
            record_metric(self, "sampling/is_masked", masked / total if total else 0.0)
        return output

    def training_step(
        self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        # Train mode before the rollout, as in Trainer.training_step: a model loaded in eval mode (a full
        # fine-tune's from_pretrained) would have TRL take its first step's rollout for an evaluation (no
        # buffering across micro-batches, a generation per micro-batch, metrics logged to no line).
        model.train()
        inputs = self._prepare_inputs(inputs)  # outside the clock: the rollout is not training
        started = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_tokens.train_s += time.perf_counter() - started
        if micro_batches(self) % self.current_gradient_accumulation_steps == 0:  # the step's last
            for key, value in self.step_tokens.metrics().items():
                record_metric(self, key, value)
            self.trained_total += self.step_tokens.trained
            self.last_step, self.step_tokens = self.step_tokens, StepTokens()
        return loss

    def zero_loss_teaches_nothing(self) -> bool:
        """A row with advantage 0 adds nothing to the loss or its gradient (no KL, entropy or aux term), and
        leaving it out changes no other row's (an entropy mask's quantile is over all rows' tokens)."""
        return (
            self.beta == 0.0
            and self.args.entropy_coef == 0.0
            and not self.args.use_adaptive_entropy
            and not self.aux_loss_enabled
            and self.top_entropy_quantile == 1.0
        )

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.model.training and self.zero_loss_teaches_nothing():
            # Equal rewards that are not exact in float32 (weighted sums) leave advantages of ~1e-7, not 0.
            keep = inputs["advantages"].abs() > ZERO_ADVANTAGE
            if keep.dim() > 1:  # per-token advantages (subclasses of TRL's): a row teaches if any token does
                keep = keep.any(-1)
            if not keep.any():
                self.step_tokens.skipped += tokens_of(inputs)
                if self.accelerator.num_processes == 1:
                    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
                # Several processes: each runs the forward (DDP's gradient all-reduce and TRL's metric
                # collectives happen in it), on one row: every advantage is 0, so is the loss.
                first = torch.zeros_like(keep)
                first[0] = True
                inputs = trim_padding(select_rows(inputs, first))
                return self._trl_loss(model, inputs, return_outputs, num_items_in_batch)
            if not keep.all() and self.loss_type in ROW_EXACT_LOSSES:
                self.step_tokens.skipped += tokens_of(select_rows(inputs, ~keep))
                inputs = select_rows(inputs, keep)
        inputs = trim_padding(inputs, self.args.pad_to_multiple_of)
        if self.model.training:
            self.step_tokens.trained += tokens_of(inputs)
        return self._trl_loss(model, inputs, return_outputs, num_items_in_batch)

    def _trl_loss(self, model: torch.nn.Module, inputs: dict[str, Any], *args: Any) -> torch.Tensor:
        """TRL's loss of a micro-batch, its LM head on the tokens the loss reads (compat.loss_tokens_only)."""
        with loss_tokens_only(model, loss_mask(inputs)):
            return super().compute_loss(model, inputs, *args)


def weigh_expert(trainer: GRPOTrainer, output: dict[str, Any], weight: float) -> None:
    """Sets the advantage of the expert's rows in a scored generation batch so that they add `weight` x
    their tokens' mean negative log-likelihood to the step's loss (the module's docstring says when exactly).
    Every process calls it: the expert's tokens are summed over all of them."""
    rows = torch.tensor(trainer.expert_rows, dtype=torch.bool, device=output["advantages"].device)
    mask = loss_mask(output)
    if rows.numel() != mask.shape[0]:
        raise RuntimeError(f"the rollout marked {rows.numel()} rows, the scored batch has {mask.shape[0]}")
    expert_tokens = trainer.accelerator.gather(mask[rows].sum()).sum()
    if expert_tokens == 0:
        return
    advantage = weight * output["num_items_in_batch"].clamp(min=1) / expert_tokens
    output["advantages"] = torch.where(rows, advantage.to(output["advantages"].dtype), output["advantages"])
    record_metric(trainer, "expert/advantage", float(advantage))


def sum_over_processes(accelerator: Any, counts: list[int]) -> list[int]:
    """Per-process counts summed over the run's processes (each trains on its own groups); the same on
    every process, so a decision taken from them (stop, warn) is taken by all."""
    if accelerator.num_processes == 1:
        return counts
    total = accelerator.reduce(torch.tensor(counts, device=accelerator.device), "sum")
    return [int(c) for c in total.tolist()]


class StopWhenIdle(TrainerCallback):
    """Ends training after `patience` optimizer steps in a row that trained no token: every group drawn up
    to the cap was all-success (a solved run) or all-failure (nothing to follow)."""

    def __init__(self, trainer: GRPOTrainer, patience: int):
        self.trainer, self.patience, self.idle = trainer, patience, 0
        self.stopped_at: int | None = None  # the step training ended at, when this callback ended it

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - HF callback signature
        (trained,) = sum_over_processes(self.trainer.accelerator, [self.trainer.last_step.trained])
        self.idle = self.idle + 1 if trained == 0 else 0
        if self.patience and self.idle >= self.patience:
            control.should_training_stop = True
            self.stopped_at = state.global_step
            log.warning(
                "training stops at step %d: %d steps in a row trained nothing", state.global_step, self.idle
            )
        return control
