"""Stage 3, sft — supervised fine-tuning on the high-quality rationales (TRL `SFTTrainer`).

Input: `sft.jsonl` rows {"question_id", "prompt", "completion"} written by collect.
The loss covers the completion tokens only (the rationale, the answer sentence
and EOS); the prompt is context. Output: `sft/model/` (a plain model, LoRA
merged in), `sft/adapter/` (LoRA only), `sft/log.jsonl` (the trainer's log).
"""
from __future__ import annotations

import time
from typing import Any

from .. import dist, stage_io
from ..errors import SmlearnError
from ..io import read_jsonl, write_jsonl
from ..models import resolve_device
from ..rundir import Run
from ..tracking import hf_report_to, run_name, setup_trainer_callbacks
from .common import (build_lora_config, merge_lora, prepare_for_training, quiet_unless, remove_if_empty,
                     train_summary, trainer_args)


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
    """Fine-tune the base model (in round k >= 2 with rounds_init=previous, round k-1's model: stage_io's `init`)
    on sft.jsonl; write sft/model and mark the stage done."""
    rows = load_sft_rows(run)
    run.invalidate_from("sft")   # the old SFT model (if any) and everything built on it are replaced
    summary = {**fine_tune_base(run, rows, "sft", progress, start="init"), **stage_io.round_models(run, "init")}
    run.mark_done("sft", summary)
    return summary


def fine_tune_base(run: Run, rows: list[dict[str, Any]], out_name: str, progress: bool = True,
                   start: str = "base") -> dict[str, Any]:
    """SFT of the model `start` (stage_io.model_path; the base model by default) on prompt/completion rows with
    the run's sft settings; saves <out_name>/model.

    The SFT stage uses it on the model's own high rationales; the reasoning lab's
    oracle reference uses it on clean reference rationales.
    """
    t0 = time.time()
    cfg = run.config.sft
    model, tokenizer = stage_io.load_model(run, start)
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
    stage_io.save_model(trained, tokenizer, run.path(out_name, "model"), dist.gathered_state_dict(trainer))
    return train_summary(trainer, result, len(rows), t0)
