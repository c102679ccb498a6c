"""Loading causal LMs and tokenizers, and building tiny real ones from a config.

Safe defaults: `trust_remote_code` is off unless the config asks, and weights
load from safetensors only (`use_safetensors=True`): smlearn never unpickles a
user's file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .errors import SmlearnError

SPECIAL_TOKENS = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: cuda if available, else cpu. Under a multi-process launcher (smlearn.dist) `auto` and `cuda`
    mean this process's own GPU, cuda:LOCAL_RANK."""
    from . import dist

    if device in ("auto", "cuda") and torch.cuda.is_available() and dist.is_distributed():
        return torch.device(f"cuda:{dist.local_rank()}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 on GPUs that support it; fp32 on CPU where bf16 matmuls are slow.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise SmlearnError(f"model.dtype: unknown dtype '{dtype}' (use auto, float32, bfloat16, float16)") from None


def _check_model_path(name_or_path: str) -> None:
    """A path-looking name that does not exist is a user error, not a hub lookup."""
    # Hub ids are "name" or "org/name"; anything rooted or with more parts is a path.
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    p = Path(name_or_path).expanduser()
    if looks_local and not p.exists():
        raise SmlearnError(f"model path not found: {name_or_path}")
    if not p.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(name_or_path, "config.json") is None:
            raise SmlearnError(
                f"model '{name_or_path}' is neither a local path nor in the Hugging Face cache, "
                "and HF_HUB_OFFLINE=1 forbids downloading it")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    _check_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as e:
        # A model folder without tokenizer files raises ValueError ("Couldn't instantiate the backend tokenizer").
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SmlearnError(f"cannot load tokenizer from '{name_or_path}' (does the folder hold the tokenizer "
                           f"files, e.g. tokenizer.json?): {first}") from None
    if tok.pad_token is None:
        # Causal LMs often ship without a pad token; eos is the usual stand-in.
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, *, dtype: str = "auto", device: str = "auto",
                   trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoModelForCausalLM

    _check_model_path(name_or_path)
    dev = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code,
            revision=revision, use_safetensors=True)
    except OSError as e:
        raise SmlearnError(f"cannot load model from '{name_or_path}': {str(e).splitlines()[0]}") from None
    return model.to(dev)


def context_length(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ---------------------------------------------------------------------------
# Tiny real models, built from a config (tests, the reasoning lab).
# ---------------------------------------------------------------------------

def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512, save_dir: str | Path | None = None):
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKENS["bos"],
                                   eos_token=SPECIAL_TOKENS["eos"], pad_token=SPECIAL_TOKENS["pad"])
    if save_dir is not None:
        fast.save_pretrained(save_dir)
    return fast


@dataclass
class TinyLlamaSpec:
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024


def build_tiny_llama(tokenizer, spec: TinyLlamaSpec | None = None, seed: int = 0, save_dir: str | Path | None = None):
    """A randomly initialised Llama-architecture `LlamaForCausalLM` sized by `spec`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or TinyLlamaSpec()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    if save_dir is not None:
        model.save_pretrained(save_dir, safe_serialization=True)
        tokenizer.save_pretrained(save_dir)
    return model
