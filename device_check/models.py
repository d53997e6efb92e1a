"""The models the check trains: LFM2-350M's real architecture or the tests' tiny LFM2, random weights."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, Lfm2Config
from trl import GRPOConfig

from browserrl.generation import HFGenerator, SamplingParams
from browserrl.modeling import tiny_config, weights_dtype

# LiquidAI/LFM2-350M's config.json (huggingface.co/LiquidAI/LFM2-350M), as quoted in public code: an MLX
# port's loader test ("A trimmed LFM2-350M (dense) config": vocab 65536, hidden 1024, 16 layers, 16 heads,
# 8 KV heads, conv_L_cache 3, rope_theta 1e6, full_attn_idxs [2, 5, 8, 10, 12, 14], block_dim 1024,
# block_ff_dim 6656, eos 7) and the LFM2-VL-450M text_config built on it (block_multiple_of 256,
# block_ffn_dim_multiplier 1.0, block_auto_adjust_ff_dim true, tied embeddings, max_position 128000).
# transformers' Lfm2Config reads block_ff_dim as intermediate_size and adjusts it to 4608 (2/3, multiple of
# 256). Built with transformers it has 354,483,968 parameters, LFM2-350M's published count
# (tests/test_device_check.py checks it).
LFM2_350M: dict[str, Any] = {
    "vocab_size": 65536,
    "hidden_size": 1024,
    "intermediate_size": 6656,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128000,
    "norm_eps": 1e-5,
    "conv_bias": False,
    "conv_L_cache": 3,
    "block_multiple_of": 256,
    "block_ffn_dim_multiplier": 1.0,
    "block_auto_adjust_ff_dim": True,
    "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True,
}
LFM2_350M_PARAMETERS = 354_483_968


def build_model(
    model_cfg: DictConfig, tokenizer: Any, device: torch.device, trains_weights: bool = False
) -> Any:
    """Random weights, created directly on the device in the dtype the recipe holds them in
    (browserrl.modeling.weights_dtype: fp32 for a full fine-tune, else `model.dtype`). model=tiny-lfm2: the
    tests' tiny LFM2 (browserrl.modeling.tiny_config, its seed); model=lfm2-350m: LFM2-350M's real
    architecture with the recorded episodes' special tokens (the SmolLM2 tokenizer's; its 49152 ids fit
    LFM2-350M's 65536-token vocabulary)."""
    if model_cfg.source == "tiny":
        config = tiny_config(model_cfg.arch, tokenizer)
    elif model_cfg.name == "lfm2-350m":
        special = ("bos_token_id", "eos_token_id", "pad_token_id")
        config = Lfm2Config(**LFM2_350M, **{key: getattr(tokenizer, key) for key in special})
    else:
        raise ValueError(f"model={model_cfg.name}: the check builds lfm2-350m or a tiny model")
    torch.manual_seed(model_cfg.get("seed", 0))
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=weights_dtype(model_cfg, trains_weights))


def watched_weights(model: torch.nn.Module, count: int = 4) -> list[tuple[str, torch.nn.Parameter]]:
    """A few trainable matrices whose every element gets a gradient (not an embedding: rows of tokens that
    no episode holds get none)."""
    trainable = model.named_parameters()
    return [(n, p) for n, p in trainable if p.requires_grad and p.ndim == 2 and "embed" not in n][:count]


def weight_update(watched: list[tuple[str, torch.nn.Parameter]], before: dict[str, torch.Tensor]) -> dict:
    """What the optimizer holds and whether its steps stuck: the watched weights' dtype, and the share of
    their elements that training changed (a full fine-tune held in bf16 loses an lr-1e-5 step to rounding:
    near 0)."""
    changed = sum((p.detach().float().cpu() != before[n]).sum().item() for n, p in watched)
    return {
        "weights_dtype": ",".join(sorted({str(p.dtype).removeprefix("torch.") for _, p in watched})),
        "weights_changed": changed / max(1, sum(p.numel() for _, p in watched)),
    }


def final_norm(model: Any) -> torch.nn.Module:
    """The norm before the (tied) LM head: scaling its weight scales every logit by the same factor."""
    decoder = model.get_decoder()
    return getattr(decoder, "embedding_norm", None) or decoder.norm


def hf_generator(model: Any, args: GRPOConfig, cfg: DictConfig, tokenizer: Any, eot_id: int) -> HFGenerator:
    """HFGenerator as browserrl/train.py builds it: the trainer's sampling and autocast, the infra's key/value
    reuse."""
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k or 0)
    return HFGenerator(model, tokenizer.pad_token_id, eot_id, sampling, args.bf16, cfg.infra.reuse_kv_cache)
