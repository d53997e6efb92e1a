"""browserrl.grpo: a micro-batch cut to its own length, scored by the compact LM head, gives TRL's loss and
gradient on fewer columns."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
import trl
import trl.trainer.utils as trl_utils
from helpers import scoring_trainer
from omegaconf import OmegaConf

from browserrl.compat import compact_lm_head
from browserrl.grpo import GRPOTrainer, trim_padding
from browserrl.modeling import load_policy

PAD = 0


def padded_batch(prompts: list[list[int]], completions: list[list[int]], env: list[list[int]]) -> dict:
    """A generation batch as TRL builds it: prompts padded on the left, completions on the right."""
    p, c = max(map(len, prompts)), max(map(len, completions))
    return {
        "prompt_ids": torch.tensor([[PAD] * (p - len(x)) + x for x in prompts]),
        "prompt_mask": torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts]),
        "completion_ids": torch.tensor([x + [PAD] * (c - len(x)) for x in completions]),
        "completion_mask": torch.tensor([[1] * len(x) + [0] * (c - len(x)) for x in completions]),
        "tool_mask": torch.tensor([m + [1] * (c - len(m)) for m in env]),
        "advantages": torch.tensor([1.0, -1.0, 0.5][: len(prompts)]),
        "num_items_in_batch": torch.tensor(sum(map(sum, env))),
    }


def three_episodes(tokenizer: Any) -> dict[str, torch.Tensor]:
    """Three episodes of unequal prompt and completion lengths, the first with env tokens inside."""
    ids = torch.randint(3, tokenizer.vocab_size, (40,)).tolist()
    return padded_batch(
        [ids[:9], ids[9:12], ids[12:18]],
        [ids[18:36], ids[36:39], ids[20:28]],
        [[1] * 4 + [0] * 10 + [1] * 4, [1, 1, 1], [1, 1, 0, 0, 0, 1, 1, 1]],
    )


def rows(batch: dict, i: int) -> dict:
    """Row i as a micro-batch of one (TRL's split_tensor_dict keeps the batch's widths)."""
    return {k: v[i : i + 1] if k != "num_items_in_batch" else v for k, v in batch.items()}


def test_trim_cuts_shared_padding_only():
    batch = padded_batch([[5, 6, 7], [8]], [[1, 2, 3, 4, 9], [3]], [[1, 1, 0, 0, 1], [1]])
    short = trim_padding(rows(batch, 1))
    assert short["prompt_ids"].tolist() == [[8]] and short["prompt_mask"].tolist() == [[1]]
    assert short["completion_ids"].tolist() == [[3]] and short["tool_mask"].tolist() == [[1]]
    assert short["advantages"].tolist() == [-1.0] and short["num_items_in_batch"] == 4
    whole = trim_padding(batch)  # the longest rows set the width: nothing of theirs is cut
    assert all(torch.equal(whole[k], batch[k]) for k in batch)
    # GRPOConfig.pad_to_multiple_of rounds the widths up, never past TRL's own
    assert trim_padding(rows(batch, 1), multiple=4)["completion_ids"].shape == (1, 4)
    assert trim_padding(rows(batch, 1), multiple=8)["completion_ids"].shape == (1, 5)


@pytest.mark.parametrize("arch", ["llama", "lfm2"])  # SmolLM2's architecture and LFM2's (its convolutions)
def test_trimmed_loss_and_gradient_match_trl(arch, tmp_path, monkeypatch):
    """Each row of a padded batch alone, at TRL's width and at its own, the LM head on the model's turns only:
    the same loss and gradient (fp32; under bf16 autocast the two widths round differently, by bf16's
    resolution)."""
    torch.manual_seed(0)
    tiny = {"source": "tiny", "arch": arch, "seed": 0, "dtype": "float32"}
    model, tokenizer = load_policy(OmegaConf.create(tiny))
    trainer = scoring_trainer(
        model, tokenizer, tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=3,
        num_generations=3, bf16=False,
    )  # fmt: skip
    batch = three_episodes(tokenizer)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    projected = []  # positions each call of the LM head projects
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction, "apply", lambda h, *a: projected.append(h.shape[0]) or apply(h, *a)
    )
    for i in range(3):
        micro = rows(batch, i)
        losses, grads = [], []
        for compute_loss, head in (
            (trl.GRPOTrainer.compute_loss, contextlib.nullcontext()),
            (GRPOTrainer.compute_loss, compact_lm_head()),  # as GRPOTrainer.train scores
        ):
            trainer.model.zero_grad()
            with head:
                loss = compute_loss(trainer, trainer.model, micro)
            loss.backward()
            losses.append(loss.detach())
            grads.append(torch.cat([p.grad.flatten() for p in params]))
        assert losses[1] != 0
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert projected[1::2] == [8, 3, 5]  # the model's turns of the completions (18, 3 and 8 tokens)


def tiny_policy(arch: str = "llama"):
    torch.manual_seed(0)
    return load_policy(OmegaConf.create({"source": "tiny", "arch": arch, "seed": 0, "dtype": "float32"}))


def forward_counter(model: torch.nn.Module) -> list[int]:
    """Rows the model's forward passes see (a pre-hook on the model)."""
    rows: list[int] = []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return rows


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_rows_with_nothing_to_teach_cost_no_forward_and_change_nothing(loss_type, tmp_path):
    """A micro-batch whose rows all have advantage 0 runs no forward and gives a zero gradient; in a mixed
    micro-batch, dapo's loss (normalized by the step's token count) drops those rows and keeps TRL's loss
    and gradient exactly; grpo's (a mean over rows) computes them all."""
    model, tokenizer = tiny_policy()
    trainer = scoring_trainer(
        model, tokenizer, tmp_path, per_device_train_batch_size=3, num_generations=3, bf16=False,
        loss_type=loss_type,
    )  # fmt: skip
    batch = three_episodes(tokenizer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    rows = forward_counter(trainer.model)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    idle = dict(batch, advantages=torch.zeros(3))
    loss = GRPOTrainer.compute_loss(trainer, trainer.model, idle)
    loss.backward()
    assert rows == [] and loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in params)  # every weight joins the all-reduce
    assert trainer.step_tokens.skipped == int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())

    mixed = dict(batch, advantages=torch.tensor([1.0, 0.0, -0.5]))
    grads, losses = [], []
    for compute_loss in (trl.GRPOTrainer.compute_loss, GRPOTrainer.compute_loss):
        trainer.model.zero_grad()
        loss = compute_loss(trainer, trainer.model, mixed)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    assert rows[-1] == (2 if loss_type == "dapo" else 3)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def scripted_group(tokenizer, expert_last: bool) -> dict:
    """rollout_func output for one group of 4: three failed policy episodes and, last, the expert's solved
    one (or a fourth failure). Each: a prompt, a model turn, an observation, a model turn."""
    from browserrl.rollout import Episode, RolloutBatch, trainer_output

    episodes = []
    for k in range(4):
        e = Episode("click-test", 7, max_steps=2, prompt_ids=[5, 6, 7, 8], steps=2)
        e.extend([10 + k, 11], [-1.0, -1.0], from_model=True)
        e.extend([20, 21, 22], None, from_model=False)
        e.extend([12, 13], [-1.0, -1.0], from_model=True)
        if k == 3 and expert_last:
            e.expert, e.success = True, True
            e.logprobs = [float("nan") if m else 0.0 for m in e.env_mask]
        episodes.append(e)
    return trainer_output(RolloutBatch(episodes))


def scored_expert_group(tmp_path, **trainer_kwargs: Any) -> tuple[GRPOTrainer, Any, dict]:
    """A GRPOTrainer on the tiny model whose rollout is `scripted_group` (the expert last), in training,
    and TRL's scoring of that group."""
    from datasets import Dataset

    from browserrl import rewards

    model, tokenizer = tiny_policy()
    funcs, weights = rewards.select({"success": 1.0})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[], beta=0.0, bf16=False,
        per_device_train_batch_size=4, num_generations=4, reward_weights=weights,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=funcs, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": ["slot"] * 4}),
        rollout_func=lambda prompts, trainer: scripted_group(tokenizer, expert_last=True), **trainer_kwargs,
    )  # fmt: skip
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop
    return trainer, tokenizer, trainer._generate_and_score_completions([{"prompt": "slot"} for _ in range(4)])


def test_an_expert_in_a_failed_group_gets_a_positive_advantage_on_its_model_turns(tmp_path):
    """TRL scores the group: the expert's advantage is positive, the failures' negative, and the loss mask
    is the env_mask (the expert's actions train, the page's tokens do not); on CPU its ratio is 1, so its
    gradient is the advantage times grad log pi of its actions (the loss does not clip it)."""
    trainer, tokenizer, scored = scored_expert_group(tmp_path)
    advantages = scored["advantages"]
    assert advantages[3] > 0 and (advantages[:3] < 0).all()
    env_mask = scripted_group(tokenizer, True)["env_mask"][3]
    loss_mask = (scored["completion_mask"] * scored["tool_mask"])[3]
    assert loss_mask.tolist() == env_mask == [1, 1, 0, 0, 0, 1, 1]
    assert "old_per_token_logps" not in scored  # on-policy on CPU: the ratio is pi / pi.detach() = 1

    expert_only = {k: v[3:] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in scored.items()}
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = GRPOTrainer.compute_loss(trainer, trainer.model, expert_only)
    loss.backward()
    assert loss.item() < 0 and any(p.grad.any() for p in params)  # -A x (ratio 1) per token: it teaches
    assert trainer._metrics["train"]["clip_ratio/region_mean"][-1] == 0.0  # nothing clipped


def test_the_expert_weight_makes_its_tokens_an_sft_loss_of_that_weight(tmp_path):
    """grpo.expert_sft_weight=w: the expert's row gets the advantage w x (the step's loss tokens) / (its
    loss tokens), and its gradient in the step's loss is w x the gradient of its actions' mean negative
    log-likelihood, computed here directly from the model; the failures keep their group advantages."""
    trainer, tokenizer, scored = scored_expert_group(tmp_path, expert_sft_weight=2.0)
    advantages = scored["advantages"]
    assert scored["num_items_in_batch"] == 16  # 4 episodes x 4 action tokens; the expert's: 4
    assert advantages[3].item() == pytest.approx(2.0 * 16 / 4)
    assert (advantages[:3] < 0).all()  # the failures' advantages are TRL's
    assert trainer._metrics["train"]["expert/advantage"] == [pytest.approx(8.0)]

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    expert_only = {k: v[3:] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in scored.items()}
    trainer.model.zero_grad()
    GRPOTrainer.compute_loss(trainer, trainer.model, expert_only).backward()
    through_grpo = torch.cat([p.grad.flatten() for p in params])

    trainer.model.zero_grad()
    episode = scripted_group(tokenizer, expert_last=True)
    prompt, completion = episode["prompt_ids"][3], episode["completion_ids"][3]
    ids = torch.tensor([prompt + completion])
    logps = trainer.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
    token_logps = logps.gather(-1, torch.tensor(completion)[:, None])[:, 0]
    actions = torch.tensor(episode["env_mask"][3], dtype=torch.bool)
    (2.0 * -token_logps[actions].mean()).backward()
    as_sft = torch.cat([p.grad.flatten() for p in params])
    assert as_sft.any()
    torch.testing.assert_close(through_grpo, as_sft, rtol=1e-4, atol=1e-6)


def test_a_model_loaded_in_eval_mode_plays_one_rollout_per_step_and_logs_it(tmp_path):
    """from_pretrained returns a model in eval mode (a full fine-tune trains it as it is): the first step's
    rollout is still a training one, played once for the step's micro-batches, its reward on its line."""
    from datasets import Dataset

    from browserrl import rewards

    model, tokenizer = tiny_policy()
    model.eval()
    calls = []

    def rollout(prompts, trainer):
        calls.append(len(prompts))
        return scripted_group(tokenizer, expert_last=True)

    funcs, weights = rewards.select({"success": 1.0})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[], beta=0.0, bf16=False,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, num_generations=4,
        reward_weights=weights, logging_steps=1, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=funcs, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": ["slot"] * 4}), rollout_func=rollout,
    )  # fmt: skip
    trainer.train()
    assert calls == [4]
    line = trainer.state.log_history[0]
    assert line["step"] == 1 and line["reward"] == 0.25 and line["tokens/trained"] > 0


def test_training_stops_after_steps_that_train_nothing():
    """A solved run (every group all-success, up to the draw cap) stops drawing after `patience` steps."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from browserrl.grpo import StepTokens, StopWhenIdle

    trainer = SimpleNamespace(last_step=StepTokens(), accelerator=SimpleNamespace(num_processes=1))
    stop, control = StopWhenIdle(trainer, patience=2), TrainerControl()
    for step, trained in enumerate([100, 0, 50, 0, 0], start=1):
        trainer.last_step = StepTokens(trained=trained)
        stop.on_step_end(None, SimpleNamespace(global_step=step), control)
        assert control.should_training_stop == (step == 5)
    assert stop.stopped_at == 5
    never = StopWhenIdle(trainer, patience=0)
    never.on_step_end(None, SimpleNamespace(global_step=6), TrainerControl())
    assert never.stopped_at is None


@pytest.mark.parametrize("trains_weights", [True, False])
def test_a_full_fine_tune_of_a_bf16_model_keeps_fp32_weights_that_small_steps_move(trains_weights, tmp_path):
    """model.dtype=bfloat16 (the GPU default), tuning=full: the weights the optimizer steps are fp32 and an
    AdamW step at lr 1e-5 moves them; loaded as configured (bf16, what LoRA's frozen base keeps), the
    same step is lost to rounding in most weights."""
    spec = {"source": "tiny", "arch": "llama", "seed": 0, "dtype": "bfloat16"}
    model, tokenizer = load_policy(OmegaConf.create(spec), trains_weights=trains_weights)
    trainer = scoring_trainer(model, tokenizer, tmp_path, learning_rate=1e-5, bf16=True)
    optimizer = trainer.create_optimizer()
    held = [p for group in optimizer.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in held]
    for p in held:
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    moved = sum(int((p != b).sum()) for p, b in zip(held, before)) / sum(p.numel() for p in held)
    if trains_weights:
        assert all(p.dtype == torch.float32 for p in held)
        assert moved > 0.99
    else:
        assert moved < 0.5  # the failure this guards against


@pytest.mark.parametrize(
    ("use_vllm", "mode", "processes", "waits"),
    [
        (True, "server", 2, True),
        (True, "server", 1, False),
        (True, "colocate", 2, False),
        (False, None, 2, False),
    ],
)
def test_ranks_meet_after_a_server_weight_sync_before_they_sample(use_vllm, mode, processes, waits):
    from types import SimpleNamespace

    from browserrl.train import wait_for_weights

    met = []
    accelerator = SimpleNamespace(num_processes=processes, wait_for_everyone=lambda: met.append(True))
    args = SimpleNamespace(use_vllm=use_vllm, vllm_mode=mode)
    trainer = SimpleNamespace(args=args, accelerator=accelerator)
    wait_for_weights(trainer)
    assert met == ([True] if waits else [])


def test_the_importance_sampling_mask_is_counted(monkeypatch):
    """vLLM runs: the share of episodes (sequence modes) or loss tokens (token modes) whose importance
    ratio TRL zeroed is logged; env tokens and padding are not loss tokens."""
    from types import SimpleNamespace

    from browserrl.grpo import masked_share

    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    tool_mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]])
    sequence = {"completion_mask": completion_mask, "importance_sampling_ratio": torch.tensor([[0.0], [1.2]])}
    assert masked_share(sequence, "sequence_mask") == (1, 2)
    assert masked_share(sequence, "sequence_truncate") is None  # clipped, not masked
    assert masked_share({"completion_mask": completion_mask}, "sequence_mask") is None  # no vLLM
    ratio = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    tokens = {"completion_mask": completion_mask, "tool_mask": tool_mask, "importance_sampling_ratio": ratio}
    assert masked_share(tokens, "token_mask") == (2, 6)  # the env token and the padding do not count

    monkeypatch.setattr(trl.GRPOTrainer, "_generate_and_score_completions", lambda self, inputs: sequence)
    trainer = object.__new__(GRPOTrainer)
    trainer.args = SimpleNamespace(vllm_importance_sampling_mode="sequence_mask")
    trainer.accelerator = SimpleNamespace(num_processes=1)
    trainer.model = SimpleNamespace(training=True)
    trainer.expert_sft_weight = None
    trainer._metrics = {"train": {"sampling/is_masked": []}}
    assert trainer._generate_and_score_completions([]) is sequence
    assert trainer._metrics["train"]["sampling/is_masked"] == [0.5]
