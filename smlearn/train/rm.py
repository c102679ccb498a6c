"""Stage 4, rm — the reward model: learns the ranking of rationales (TRL `RewardTrainer`, Bradley–Terry loss).

Input: `pairs.jsonl` rows {"question_id", "prompt", "chosen", "rejected",
"chosen_level", "rejected_level", "split"}; "train" pairs train the model,
"heldout" pairs (other questions) measure it. The backbone is the SFT model
(`rm.init=sft`) or the model SFT started from (`rm.init=base`: the base model,
or with rounds_init=previous round k-1's model) with a new scalar head. `rm.lm_coef` > 0 adds a
language-modelling loss on prompt + chosen to the pairwise loss (`lm_regularized_trainer`);
`rm.pooling=mean` scores a text by the mean of the head's per-token outputs over its completion
(`mean_pooled_trainer`; reward_scorer.py) instead of the last token's.

Output: `rm/model/` (a plain `*ForSequenceClassification` model, LoRA merged),
`rm/adapter/` (LoRA only), `rm/log.jsonl`, `rm/metrics.json` (pairwise
accuracy — held-out with a 95 % CI that resamples questions —, score mean/std on the training completions — RL standardises rewards
with them — and the score distribution per level) and `rm/scores.jsonl`.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

import torch

from .. import dist, stage_io
from ..errors import SmlearnError
from ..evaluate.intervals import cluster_bootstrap
from ..io import read_jsonl, write_json, write_jsonl
from ..models import load_tokenizer, resolve_device, resolve_dtype
from ..rundir import Run
from .common import (build_lora_config, merge_lora, prepare_for_training, quiet_unless, remove_if_empty, trainer_args,
                     upcast_trainable)
from .reward_scorer import (POOLING_KEY, RewardScorer, completion_mask, completion_start, load_reward_backbone,
                            mean_pooled, scored_text)
from ..tracking import hf_report_to, run_name, setup_trainer_callbacks

SPLITS = ("train", "heldout")


def load_pairs(run: Run) -> list[dict[str, Any]]:
    path = run.path("pairs.jsonl")
    if not path.exists():
        raise SmlearnError(f"{path}: not found; run the collect stage first (smlearn collect --run {run.root})")
    rows = read_jsonl(path)
    if not rows:
        raise SmlearnError(
            f"no preference pairs were collected ({path.name} is empty): a pair needs two rationales of one "
            "question at different quality levels. Try more samples per question, a higher generate.temperature "
            "or more training questions")
    for i, r in enumerate(rows, start=1):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(r.get(key), str) or not r[key]:
                raise SmlearnError(f"{path}, row {i}: field '{key}' must be a non-empty string")
        if r.get("split", "train") not in SPLITS:
            raise SmlearnError(f"{path}, row {i}: field 'split' must be train or heldout, got {r['split']!r}")
    if not any(r.get("split", "train") == "train" for r in rows):
        raise SmlearnError(f"{path}: all {len(rows)} pairs are held out, none is left to train the reward model; "
                           "lower collect.heldout_fraction")
    return rows


def backbone_path(run: Run) -> str:
    """rm.init: the run's SFT model, or `base`: the model SFT started from (stage_io's `init`: the base model,
    or in round k >= 2 with rounds_init=previous, round k-1's model)."""
    if run.config.rm.init == "base":
        return stage_io.model_path(run, "init")
    try:
        return stage_io.model_path(run, "sft")
    except SmlearnError:
        raise SmlearnError(f"rm.init=sft: this run has no sft model yet; run smlearn train sft "
                           f"--run {run.root} first, or set rm.init=base") from None


def build_rm_trainer(run: Run, model, tokenizer, train_rows: list[dict[str, Any]], progress: bool = True):
    """A `RewardTrainer` on explicit-prompt pairs: TRL scores prompt+chosen+EOS vs prompt+rejected+EOS."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    cfg = run.config.rm
    device = resolve_device(run.config.model.device)
    kwargs = trainer_args(cfg, run.path("rm", "trainer"), device, len(train_rows), progress,
                          hf_report_to(run), run_name(run, "rm"))
    # A bf16 LoRA backbone runs under bf16 mixed precision (its fp32 head and adapters need the autocast).
    kwargs["bf16"] = kwargs["bf16"] or any(p.dtype == torch.bfloat16 for p in model.parameters())
    args = RewardConfig(**kwargs)
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in train_rows]
    peft_config = build_lora_config(cfg.lora, "seq_cls") if cfg.lora.enabled else None
    extra = {}
    if cfg.pooling == "mean":
        RewardTrainer = mean_pooled_trainer(RewardTrainer)
        rows = [{**r, "prompt_len": prompt_length(tokenizer, r)} for r in rows]
    if cfg.lm_coef:
        RewardTrainer = lm_regularized_trainer(RewardTrainer)
        extra = {"lm_coef": cfg.lm_coef, "lm_head": output_embedding(run, model)}
    dataset = Dataset.from_list(rows)
    with quiet_unless(progress):
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                peft_config=peft_config, **extra)
    upcast_trainable(trainer.model)   # PEFT leaves the new score head (modules_to_save) in a bf16 backbone's dtype
    setup_trainer_callbacks(trainer, run, "rm", progress)
    return trainer


def prompt_length(tokenizer, row: dict[str, str]) -> int:
    """The prompt's token count in both texts TRL tokenizes, prompt + chosen + EOS and prompt + rejected + EOS
    (reward_scorer.completion_start; the scorer finds the same start for each)."""
    return min(completion_start(tokenizer, row["prompt"],
                                tokenizer(scored_text(tokenizer, row["prompt"], row[side]))["input_ids"])
               for side in ("chosen", "rejected"))


def mean_pooled_trainer(base):
    """`base` (TRL's RewardTrainer) scoring each text by the mean of the head's per-token outputs over its
    completion (`reward_scorer.mean_pooled`) rather than at its last token; TRL's loss, margin and metrics
    are then computed on those scores unchanged. The dataset carries each pair's `prompt_len`; the collator
    turns it into a completion mask over TRL's right-padded [chosen | rejected] batch."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class CompletionMaskCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            out = super().torch_call(examples)
            starts = [e["prompt_len"] for e in examples] * 2          # the chosen rows, then the rejected ones
            out["completion_mask"] = completion_mask(starts, out["attention_mask"])
            return out

    class MeanPooledRewardTrainer(base):
        def __init__(self, *, processing_class, args, **kwargs):
            pad = processing_class.pad_token_id
            kwargs["data_collator"] = CompletionMaskCollator(
                pad_token_id=pad if pad is not None else processing_class.eos_token_id,
                pad_to_multiple_of=args.pad_to_multiple_of)
            super().__init__(processing_class=processing_class, args=args, **kwargs)

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "prompt_len" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "prompt_len"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with mean_pooled(model, inputs.pop("completion_mask")):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    return MeanPooledRewardTrainer


def output_embedding(run: Run, model) -> torch.Tensor | None:
    """The LM head the `rm.lm_coef` regulariser predicts tokens with: None when the model ties it to the input
    embedding (it is then read from the model being trained, and trained with it); otherwise the backbone
    checkpoint's own `lm_head` weight, loaded once and kept frozen (a sequence-classification model has none)."""
    if model.config.get_text_config().tie_word_embeddings:
        return None
    from transformers import AutoModelForCausalLM

    path, mcfg = backbone_path(run), run.config.model
    revision = mcfg.revision if run.config.rm.init == "base" and stage_io.is_base(run, "init") else None
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                              trust_remote_code=mcfg.trust_remote_code, revision=revision)
    weight = lm.get_output_embeddings().weight.detach().clone()
    del lm
    return weight


def lm_regularized_trainer(base):
    """`base` (TRL's RewardTrainer) with `lm_coef` x the next-token loss of prompt + chosen added to its
    Bradley–Terry loss.

    With a few hundred pairs a reward model fits them with whatever separates them in training (a name, an
    answer word) and ranks new questions worse. Keeping the backbone a language model of the good
    rationales — the hidden states must still predict their next tokens — regularises the features the
    scalar head reads (GRM: Yang et al. 2024, "Regularizing Hidden States Enables Learning Generalizable
    Reward Model for LLMs"; their SFT regulariser). The tokens are those TRL scores (prompt + chosen + EOS),
    pads excluded; the LM head is the tied input embedding (trained with the model) or the checkpoint's own
    (frozen). The loss is logged as `lm_loss`."""

    class LMRegularizedRewardTrainer(base):
        def __init__(self, *args, lm_coef: float, lm_head: torch.Tensor | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.lm_coef = lm_coef
            self.lm_head = lm_head.to(self.args.device) if lm_head is not None else None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["output_hidden_states"] = True
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            hidden = torch.chunk(outputs.hidden_states[-1], 2)[0]          # the chosen half of the batch
            ids = torch.chunk(inputs["input_ids"], 2)[0]
            mask = torch.chunk(inputs["attention_mask"], 2)[0][:, 1:].bool()
            weight = self.lm_head if self.lm_head is not None else model.get_input_embeddings().weight
            logits = hidden[:, :-1][mask] @ weight.to(hidden.dtype).T
            lm_loss = torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][mask])
            mode = "train" if model.training else "eval"
            self._metrics[mode]["lm_loss"].append(lm_loss.item())
            loss = loss + self.lm_coef * lm_loss
            return (loss, outputs) if return_outputs else loss

    return LMRegularizedRewardTrainer


def train_rm(run: Run, progress: bool = True) -> dict[str, Any]:
    """Train the reward model on the train pairs, evaluate it, write rm/ and mark the stage done."""
    t0 = time.time()
    cfg, mcfg = run.config.rm, run.config.model
    rows = load_pairs(run)
    train_rows = [r for r in rows if r.get("split", "train") == "train"]
    heldout_rows = [r for r in rows if r.get("split") == "heldout"]

    path = backbone_path(run)
    from_base = cfg.init == "base" and stage_io.is_base(run, "init")      # the configured model: its revision
    revision = mcfg.revision if from_base and not mcfg.gguf_file else None
    device = resolve_device(mcfg.device)
    save_dtype = resolve_dtype(mcfg.dtype, device)
    # Full fine-tuning trains fp32 master weights; a LoRA backbone stays in the run's dtype.
    load_dtype = save_dtype if cfg.lora.enabled and device.type == "cuda" else torch.float32
    tokenizer = load_tokenizer(path, trust_remote_code=mcfg.trust_remote_code, revision=revision)
    # The new score head is initialised while loading: seed first, so one rm.seed gives one model.
    from transformers import set_seed

    set_seed(cfg.seed)
    model = load_reward_backbone(path, dtype=load_dtype, trust_remote_code=mcfg.trust_remote_code,
                                 revision=revision)
    # The head reads the value at the last non-pad token, so the model must know the pad id.
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model, _ = prepare_for_training(model, cfg.lora.enabled)
    model.train()
    run.invalidate_from("rm")

    trainer = build_rm_trainer(run, model, tokenizer, train_rows, progress)
    used = len(trainer.train_dataset)
    if used == 0:
        raise SmlearnError(f"rm.max_length={cfg.max_length}: every training pair is longer than this; "
                           "raise rm.max_length")
    with quiet_unless(progress):
        result = trainer.train()
    write_jsonl(run.path("rm", "log.jsonl"), trainer.state.log_history)
    remove_if_empty(trainer.args.output_dir)

    trained = merge_lora(trainer.model, run.path("rm", "adapter") if cfg.lora.enabled else None)
    trained = trained.to(save_dtype).eval()
    setattr(trained.config, POOLING_KEY, cfg.pooling)       # in config.json: RewardScorer scores the same way
    gathered = dist.gathered_state_dict(trainer)
    stage_io.save_model(trained, tokenizer, run.path("rm", "model"), gathered)
    if gathered is not None:          # ZeRO-3: this process holds a part of the weights; score with the saved model
        dist.barrier()
        trained = load_reward_backbone(run.path("rm", "model"), dtype=save_dtype).to(device).eval()

    metrics, scores = evaluate_rm(RewardScorer(trained, tokenizer), train_rows, heldout_rows,
                                  batch_size=cfg.batch_size)
    metrics.update({"init": cfg.init, "backbone": path, "train_pairs_used": used,
                    "train_pairs_too_long": len(train_rows) - used,
                    "train_loss": round(float(result.training_loss), 6), "steps": trainer.state.global_step})
    write_json(run.path("rm", "metrics.json"), metrics)
    write_jsonl(run.path("rm", "scores.jsonl"), scores)

    summary = {key: metrics[key] for key in ("train_pairs", "heldout_pairs", "heldout_accuracy",
                                             "train_accuracy", "score_mean", "score_std")}
    summary["seconds"] = round(time.time() - t0, 1)
    run.mark_done("rm", summary)
    return summary


# ---------------------------------------------------------------------------
# Evaluation with our own scorer.
# ---------------------------------------------------------------------------

def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.pstdev(values) if values else None, "n": len(values)}


def evaluate_rm(scorer: RewardScorer, train_rows: list[dict[str, Any]], heldout_rows: list[dict[str, Any]],
                batch_size: int = 16) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pairwise accuracy per split, score mean/std over the unique training completions, scores per level.

    Each distinct (question, prompt, completion) is scored once, even when it appears in several pairs.
    Returns (metrics, one score row per scored completion).
    """
    completions: dict[tuple, dict[str, Any]] = {}
    for split, rows in (("train", train_rows), ("heldout", heldout_rows)):
        for r in rows:
            for side in ("chosen", "rejected"):
                key = (split, r.get("question_id"), r["prompt"], r[side])
                entry = completions.setdefault(key, {"question_id": r.get("question_id"), "split": split,
                                                     "level": r.get(f"{side}_level"), "prompt": r["prompt"],
                                                     "completion": r[side], "rationale_ids": []})
                rid = r.get(f"{side}_id")
                if rid is not None and rid not in entry["rationale_ids"]:
                    entry["rationale_ids"].append(rid)
    items = list(completions.values())
    values = scorer.score([c["prompt"] for c in items], [c["completion"] for c in items], batch_size=batch_size)
    score_of = {key: v for key, v in zip(completions, values)}

    def won(split: str, r: dict[str, Any]) -> bool:
        return (score_of[(split, r.get("question_id"), r["prompt"], r["chosen"])]
                > score_of[(split, r.get("question_id"), r["prompt"], r["rejected"])])

    def accuracy(split: str, rows: list[dict[str, Any]]) -> float | None:
        return sum(won(split, r) for r in rows) / len(rows) if rows else None

    def interval(split: str, rows: list[dict[str, Any]]) -> list[float] | None:
        """95 % CI of the pairwise accuracy, resampling questions (a question's pairs are not independent)."""
        if not rows:
            return None
        wins: dict[Any, list[float]] = defaultdict(list)
        for r in rows:
            wins[r.get("question_id")].append(float(won(split, r)))
        _, lo, hi = cluster_bootstrap(list(wins.values()))
        return [lo, hi]

    def accuracy_by_levels(split: str, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Pairwise accuracy per (chosen level > rejected level), e.g. "2>0": high over low."""
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            groups[f"{r.get('chosen_level')}>{r.get('rejected_level')}"].append(r)
        return {key: {"n": len(group), "accuracy": accuracy(split, group)} for key, group in sorted(groups.items())}

    train_scores = [v for c, v in zip(items, values) if c["split"] == "train"]
    by_level: dict[str, list[float]] = defaultdict(list)
    heldout_by_level: dict[str, list[float]] = defaultdict(list)
    for c, v in zip(items, values):
        by_level[str(c["level"])].append(v)
        if c["split"] == "heldout":
            heldout_by_level[str(c["level"])].append(v)
    overall = _stats(train_scores)
    metrics = {
        "train_pairs": len(train_rows), "heldout_pairs": len(heldout_rows),
        "heldout_accuracy": accuracy("heldout", heldout_rows), "train_accuracy": accuracy("train", train_rows),
        "heldout_accuracy_ci": interval("heldout", heldout_rows),
        "heldout_questions": len({r.get("question_id") for r in heldout_rows}),
        "heldout_accuracy_by_levels": accuracy_by_levels("heldout", heldout_rows),
        "score_mean": overall["mean"], "score_std": overall["std"], "scored_completions": len(items),
        "levels": {level: {**_stats(vs), "scores": vs}
                   for level, vs in sorted(by_level.items(), key=lambda kv: kv[0], reverse=True)},
        # The same on held-out questions only (the RM never trained on them).
        "heldout_levels": {level: _stats(vs)
                           for level, vs in sorted(heldout_by_level.items(), key=lambda kv: kv[0], reverse=True)},
    }
    if not heldout_rows:
        metrics["heldout_note"] = ("no held-out pairs (collect.heldout_fraction is 0 or too few questions): "
                                   "heldout accuracy is not measured")
    # rationale_ids: the judged.jsonl rows with this completion (what `smlearn view` shows the score of).
    scores = [{"question_id": c["question_id"], "split": c["split"], "level": c["level"], "score": v,
               "rationale_ids": c["rationale_ids"]} for c, v in zip(items, values)]
    return metrics, scores
