"""Stage 3 — supervised fine-tuning on the high-quality rationales (TRL `SFTTrainer`).

Input: `sft.jsonl` rows {"question_id", "prompt", "completion"} written by collect.
The loss covers the completion tokens only (the rationale, the answer sentence
and EOS); the prompt is context. Output: `sft/model/` (a plain model, LoRA
merged in), `sft/adapter/` (LoRA only), `sft/log.jsonl` (the trainer's log).
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

from .. import context, dist
from ..errors import SmlearnError
from ..io import read_jsonl, write_jsonl
from ..models import resolve_device
from ..rundir import Run
from ..tracking import hf_report_to, run_name, setup_trainer_callbacks
from .lora import build_lora_config, merge_lora, prepare_for_training, use_bf16


def load_sft_rows(run: Run) -> list[dict[str, Any]]:
    path = run.path("sft.jsonl")
    if not path.exists():
        raise SmlearnError(f"{path}: not found; run the collect stage first (smlearn collect --run {run.root})")
    rows = read_jsonl(path)
    if not rows:
        raise SmlearnError(
            f"no high-quality rationales were collected ({path.name} is empty): SFT has nothing to learn from. "
            "Try more samples per question (generate.samples_gold / samples_free), a higher "
            "generate.temperature, more training questions, or a stronger base model")
    for i, r in enumerate(rows, start=1):
        for key in ("prompt", "completion"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise SmlearnError(f"{path}, row {i}: field '{key}' must be a non-empty string")
    return rows


# ---------------------------------------------------------------------------
# Helpers shared with the RM stage.
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# The stage.
# ---------------------------------------------------------------------------

def build_sft_trainer(run: Run, model, tokenizer, rows: list[dict[str, Any]], progress: bool = True,
                      out_name: str = "sft"):
    """An `SFTTrainer` on prompt/completion rows with completion-only loss (labels -100 on the prompt)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cfg = run.config.sft
    device = resolve_device(run.config.model.device)
    args = SFTConfig(**trainer_args(cfg, run.path(out_name, "trainer"), device, len(rows), progress,
                                    hf_report_to(run), run_name(run, out_name)),
                     completion_only_loss=True, packing=False)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    # SFTTrainer appends tokenizer.eos_token to each completion, so the model learns to stop.
    peft_config = build_lora_config(cfg.lora, "causal_lm") if cfg.lora.enabled else None
    with quiet_unless(progress):
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
    setup_trainer_callbacks(trainer, run, out_name, progress)
    return trainer


def train_sft(run: Run, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the base model on sft.jsonl; write sft/model and mark the stage done."""
    rows = load_sft_rows(run)
    run.invalidate_from("sft")   # the old SFT model (if any) and everything built on it are replaced
    summary = fine_tune_base(run, rows, "sft", progress)
    run.mark_done("sft", summary)
    return summary


def fine_tune_base(run: Run, rows: list[dict[str, Any]], out_name: str, progress: bool = True) -> dict[str, Any]:
    """SFT of the base model on prompt/completion rows with the run's sft settings; saves <out_name>/model.

    The SFT stage uses it on the model's own high rationales; the reasoning lab's
    oracle reference uses it on clean reference rationales.
    """
    t0 = time.time()
    cfg = run.config.sft
    model, tokenizer = context.load_model(run, "base")
    model, save_dtype = prepare_for_training(model, cfg.lora.enabled)
    model.train()
    trainer = build_sft_trainer(run, model, tokenizer, rows, progress, out_name)
    if len(trainer.train_dataset) == 0:
        raise SmlearnError(f"sft.max_length={cfg.max_length}: every SFT example is longer than this "
                           "(prompt alone); raise sft.max_length")
    with quiet_unless(progress):
        result = trainer.train()

    write_jsonl(run.path(out_name, "log.jsonl"), trainer.state.log_history)
    remove_if_empty(trainer.args.output_dir)
    trained = merge_lora(trainer.model, run.path(out_name, "adapter") if cfg.lora.enabled else None)
    trained = trained.to(save_dtype).eval()
    context.save_model(trained, tokenizer, run.path(out_name, "model"), dist.gathered_state_dict(trainer))
    return train_summary(trainer, result, len(rows), t0)
