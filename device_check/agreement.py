"""Sampler vs trainer logprobs on the device: the rollout contract's property in the recipe's precision."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from browserrl.grpo import GRPOTrainer
from device_check.episodes import by_task, sampled_episodes
from device_check.models import build_model, final_norm, hf_generator
from device_check.plan import Context, Plan, grpo_args
from device_check.steps import fresh_memory, make_trainer

AGREEMENT_TEMPERATURE = 0.7  # not 1.0: the trainer's division by the temperature is part of what is checked
FP32_TOLERANCE = 1e-4  # tests/test_rollout.py: same weights, fp32; only kernel and cache round-off differ
# Random init samples nearly uniformly (~11 nats per token over 65k tokens, logprobs ~-11); the agreement is
# also checked with the logits scaled (final norm) until sampling at the check's temperature costs this much
# entropy per token: a handful of candidates near the top, logprobs of about -1 to -3, where rounding shows.
SCALED_ENTROPY_NATS = 1.5


def entropy(logits: torch.Tensor, temperature: float) -> float:
    """Mean entropy (nats) of sampling from `logits` [..., vocab] at `temperature`."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean().item()


def entropy_scale(logits: torch.Tensor, temperature: float, nats: float) -> float:
    """The factor s such that sampling from s * logits costs `nats` per token (bisection: scaling the final
    norm's weight scales every logit by s, and the entropy falls as s grows)."""
    low, high = 1.0, 1.0
    while entropy(high * logits, temperature) > nats and high < 1e4:
        low, high = high, high * 2
    for _ in range(40):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if entropy(mid * logits, temperature) > nats else (low, mid)
    return high


def bf16_tolerance(max_logit: float) -> tuple[float, float]:
    """(mean, max) |logprob difference| allowed between sampler and trainer in bf16, for logits (already
    divided by the temperature) of magnitude up to `max_logit`.

    bf16 keeps 8 significant bits: rounding moves a logit of magnitude L by up to L * 2**-8. The sampler (one
    turn at a time, from a cache, left-padded) and the trainer (the whole episode at once, right-padded)
    round at different places, so a token's logprob (its logit minus a log-sum-exp of logits) can differ by
    about that much from the last rounding alone, more where differences carried through the layers add up.
    The mean over tokens must stay within L * 2**-8, the worst token within 4 times that; never tighter than
    tests/test_rollout.py's CPU bf16 bounds (0.01, 0.05), set on logits of ~1."""
    ulp = max_logit * 2**-8
    return max(0.01, ulp), max(0.05, 4 * ulp)


def recomputed_differences(trainer: GRPOTrainer, out: list[dict[str, Any]], pad: int) -> list[float]:
    """|trainer logprob - sampler logprob| on every model token (env_mask 1), batched as TRL pads: prompts
    left, completions right."""
    p_len = max(len(e["prompt_ids"]) for e in out)
    c_len = max(len(e["completion_ids"]) for e in out)
    ids, attention = [], []
    for e in out:
        p, c = e["prompt_ids"], e["completion_ids"]
        ids.append([pad] * (p_len - len(p)) + p + c + [pad] * (c_len - len(c)))
        attention.append([0] * (p_len - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_len - len(c)))
    device = trainer.accelerator.device
    with torch.no_grad(), trainer.compute_loss_context_manager():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.tensor(ids, device=device),
            torch.tensor(attention, device=device),
            c_len,
            batch_size=2,
        )
    logps = logps.float().cpu()
    return [
        abs(logps[row, t].item() - lp)
        for row, e in enumerate(out)
        for t, (lp, m) in enumerate(zip(e["logprobs"], e["env_mask"]))
        if m
    ]


def logprob_agreement(ctx: Context, model_name: str, plan: Plan) -> list[dict]:
    """The rollout contract's property (tests/test_rollout.py::test_logprobs_match_trainer) on this device:
    HFGenerator samples the model turns of recorded episodes; GRPOTrainer recomputes every model token's
    logprob under its own autocast (compute_loss_context_manager, _get_per_token_logps_and_entropies), as
    it does in training. Twice: at the random init (nearly uniform sampling) and with the final norm scaled
    so that sampling has SCALED_ENTROPY_NATS of entropy per token, more like a trained model's."""
    temperature = AGREEMENT_TEMPERATURE
    cfg = ctx.cfg(f"model={model_name}", "tuning=full", f"trainer.temperature={temperature}")
    episodes = [
        e
        for task in ("click-button", "book-flight")
        for e in by_task(ctx.fixture, task)[: plan.agreement_episodes]
    ]
    eot = ctx.fixture["eot_id"]
    rows = []
    with fresh_memory():
        model = build_model(cfg.model, ctx.tokenizer, ctx.device, trains_weights=True)  # tuning=full
        args = grpo_args(cfg, ctx.scratch / "agreement", 1)
        trainer = make_trainer(ctx, model, args, None)
        policy = trainer.accelerator.unwrap_model(trainer.model)
        probe = torch.tensor([episodes[0]["prompt_ids"]], device=ctx.device)

        def probe_logits() -> torch.Tensor:
            with torch.no_grad(), trainer.compute_loss_context_manager():
                return policy(probe).logits.float()

        for label in ("init", "scaled"):
            if label == "scaled":
                with torch.no_grad():
                    factor = entropy_scale(probe_logits(), temperature, SCALED_ENTROPY_NATS)
                    final_norm(policy).weight.mul_(factor)
            logits = probe_logits()
            weights = str(policy.dtype).removeprefix("torch.")
            max_logit, nats = logits.abs().max().item(), entropy(logits, temperature)
            torch.manual_seed(0)
            generator = hf_generator(policy, args, cfg, ctx.tokenizer, eot)
            out = sampled_episodes(generator, episodes, eot, plan.agreement_turns, plan.agreement_max_new)
            diffs = recomputed_differences(trainer, out, ctx.tokenizer.pad_token_id)
            if args.bf16:
                mean_tol, max_tol = bf16_tolerance(max_logit / temperature)
            else:
                mean_tol = max_tol = FP32_TOLERANCE
            mean, worst = statistics.mean(diffs), max(diffs)
            rows.append(
                {
                    "model": model_name,
                    "logits": f"{label}: {nats:.1f} nats, max abs logit {max_logit:.1f}",
                    "sampled_logprob_mean": statistics.mean(
                        lp for e in out for lp, m in zip(e["logprobs"], e["env_mask"]) if m
                    ),
                    "precision": f"{weights} weights, bf16 autocast both sides" if args.bf16 else "fp32",
                    "temperature": temperature,
                    "episodes": len(out),
                    "turns": sum(e["turns"] for e in out),
                    "cut_turns": sum(e["cut_turns"] for e in out),  # closed by a masked end-of-turn
                    "model_tokens": len(diffs),
                    "mean_abs_diff": mean,
                    "max_abs_diff": worst,
                    "tolerance_mean": mean_tol,
                    "tolerance_max": max_tol,
                    "ok": mean <= mean_tol and worst <= max_tol,
                }
            )
        model = trainer = policy = generator = None  # noqa: F841
    return rows
