"""Shared training plumbing for the SFT and RM stages: LoRA (PEFT) and training precision.

LoRA is optional (`<stage>.lora.enabled`). After training, the adapter is saved
on its own and then merged into the backbone, so every later stage loads a
plain transformers model and never needs PEFT.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import LoraConfig

# Our task names → PEFT TaskType values.
TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS"}


def build_lora_config(cfg: LoraConfig, task_type: str):
    """A `peft.LoraConfig` from our LoRA section; `task_type` is causal_lm / seq_cls (or a PEFT TaskType name).

    For seq_cls PEFT keeps the new reward head (`score`) fully trainable via `modules_to_save`
    and leaves it out of "all-linear".
    """
    from peft import LoraConfig as PeftLoraConfig

    target = cfg.target_modules
    return PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
        target_modules=list(target) if isinstance(target, list) else target,
        task_type=TASK_TYPES.get(task_type, task_type))


def merge_lora(model, adapter_dir: str | Path | None = None):
    """Save the adapter (if `adapter_dir`), then return the backbone with the adapter merged in."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    from .. import dist

    if adapter_dir is not None and dist.is_main():
        Path(adapter_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(adapter_dir, safe_serialization=True)
    return model.merge_and_unload()


def use_bf16(device: torch.device) -> bool:
    """Mixed-precision bf16 only on CUDA GPUs that support it (TRL's default would turn it on everywhere)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def upcast_trainable(model) -> list[str]:
    """Every trainable half-precision parameter to fp32, in place; returns their names.

    AdamW on bf16 weights loses every update smaller than half a bf16 step (one RL step at lr 1e-6 changed
    ~2 % of a bf16 model's weights against ~100 % in fp32). PEFT upcasts LoRA adapters but leaves
    `modules_to_save` (an RM's new `score` head) in the backbone's dtype: this covers both. Frozen weights
    keep their dtype; the forward then runs under autocast (RL) or the trainer's mixed precision.
    """
    names = []
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
            names.append(name)
    return names


def prepare_for_training(model, lora_enabled: bool):
    """Full fine-tuning keeps fp32 master weights (half-precision weights lose small AdamW updates);
    with LoRA the frozen backbone may stay in half precision and PEFT keeps the adapter in fp32.
    Returns (model, dtype to save the result in)."""
    save_dtype = model.dtype
    if not lora_enabled and model.dtype in (torch.float16, torch.bfloat16):
        model = model.float()
    if lora_enabled and model.device.type == "cpu" and model.dtype != torch.float32:
        model = model.float()   # half-precision matmuls are slow or unsupported on CPU
    return model, save_dtype

