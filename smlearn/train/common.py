"""What the training stages share: TRL trainer arguments and quiet progress, LoRA (PEFT), training precision.

LoRA is optional (`<stage>.lora.enabled`). After training, the adapter is saved
on its own and then merged into the backbone, so every later stage loads a
plain transformers model and never needs PEFT.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from .. import dist
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


def trainer_args(cfg, output_dir, device, n_examples: int, progress: bool,
                 report_to: list[str] | str = "none", run_name: str | None = None) -> dict[str, Any]:
    """TrainingArguments common to our TRL trainers, from an SFT/RM stage section; `report_to` the hosted
    loggers (smlearn.tracking.hf_report_to: TensorBoard is attached as a callback)."""
    steps_per_epoch = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    warmup = getattr(cfg, "warmup_ratio", 0.0)
    return dict(
        output_dir=str(output_dir), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
        # batch_size is the global batch: each of the processes of a multi-process run takes its share.
        per_device_train_batch_size=dist.per_process(cfg.batch_size, "batch_size"),
        gradient_accumulation_steps=cfg.grad_accum,
        # transformers 5 dropped warmup_ratio: a float in [0, 1) in warmup_steps is the ratio.
        warmup_steps=min(warmup, 0.999) if warmup > 0 else 0,
        weight_decay=getattr(cfg, "weight_decay", 0.0),
        # TRL turns gradient checkpointing and bf16 on by default: set both explicitly
        # (transformers 5 renamed gradient_checkpointing to activation_checkpointing).
        activation_checkpointing=getattr(cfg, "gradient_checkpointing", False),
        bf16=use_bf16(device), use_cpu=device.type == "cpu",
        seed=cfg.seed, data_seed=cfg.seed, max_length=cfg.max_length,
        logging_steps=max(1, min(10, total_steps // 10)), logging_first_step=True,
        save_strategy="no", report_to=report_to, run_name=run_name, disable_tqdm=not progress, dataloader_num_workers=0)


@contextlib.contextmanager
def quiet_unless(progress: bool):
    """Hide datasets' map/filter progress bars when progress is off (restored afterwards)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def remove_if_empty(folder) -> None:
    """The Trainer creates output_dir even though nothing is checkpointed (save_strategy="no")."""
    with contextlib.suppress(OSError):
        Path(folder).rmdir()


def train_summary(trainer, train_output, n_examples: int, t0: float) -> dict[str, Any]:
    return {"examples": n_examples, "epochs": trainer.args.num_train_epochs,
            "steps": trainer.state.global_step,
            "train_loss": round(float(train_output.training_loss), 6),
            "seconds": round(time.time() - t0, 1)}
