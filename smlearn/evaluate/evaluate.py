"""Evaluation: greedy chain-of-thought accuracy on the test split, per model stage.

The base model is prompted few-shot (as in the paper's few-shot CoT baseline);
trained models zero-shot, in the format they were trained on. Generation is
kept apart from scoring (lm-evaluation-harness style): raw completions are
written first, then scored by `score.py`, so they can be re-scored later.
"""
from __future__ import annotations

import time

from .. import context, dist
from ..generate.engine import SamplingParams, generate_texts
from ..io import read_json, write_json, write_jsonl
from ..prompts import STOP_STRINGS
from ..rundir import Run
from .score import score_predictions

STAGE_REQUIRES = {"base": None, "sft": "sft", "rl": "rl"}


def evaluate_stage(run: Run, stage: str, progress: bool = True) -> dict:
    """Greedy CoT on the test split with the `stage` model; writes eval/<stage>/."""
    cfg = run.config.eval
    items = context.examples(run, "test")
    model, tokenizer = context.load_model(run, stage)
    builder = context.prompt_builder(run, tokenizer, context.dataset_kind(items))
    few_shot = (stage == "base" or run.config.prompts.eval_few_shot_after_training) and run.config.prompts.n_shots > 0
    prompts = [builder.cot(e.question, few_shot=few_shot) for e in items]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=False, stop_strings=tuple(STOP_STRINGS))
    t0 = time.time()
    completions = generate_texts(model, tokenizer, prompts, params, batch_size=cfg.batch_size,
                                 labels=[f"test question id {e.id}" for e in items],
                                 desc=f"eval {stage}", progress=progress, options=context.engine_options(run),
                                 shard=dist.shard())
    # Several processes (smlearn.dist): each generated its share of the batches; all get every completion.
    dist.say_share(f"eval {stage}", sum(c is not None for c in completions), len(items), "questions")
    completions = dist.merge_shards(completions)
    seconds = time.time() - t0
    result = score_predictions(items, {e.id: c for e, c in zip(items, completions)}, trigger=builder.trigger)
    rows = [{"id": s.id, "completion": c, "prediction": s.prediction, "gold": s.gold, "correct": s.correct}
            for s, c in zip(result.per_example, completions)]
    write_jsonl(run.path("eval", stage, "predictions.jsonl"), rows)
    metrics = {"accuracy": result.accuracy, "correct": result.correct, "total": result.total,
               "few_shot": few_shot, "seconds": round(seconds, 1)}
    write_json(run.path("eval", stage, "metrics.json"), metrics)
    return metrics


def evaluate(run: Run, stages: list[str] | None = None, progress: bool = True) -> dict:
    """Evaluate each configured stage; writes eval/metrics.json with all of them."""
    stages = stages or run.config.eval.stages
    for stage in stages:
        if STAGE_REQUIRES[stage]:
            run.require(STAGE_REQUIRES[stage], f"eval {stage}")
    metrics_path = run.path("eval", "metrics.json")
    metrics = read_json(metrics_path) if metrics_path.exists() and run.is_current("eval") else {}
    for stage in stages:
        metrics[stage] = evaluate_stage(run, stage, progress)
        write_json(metrics_path, metrics)
    run.mark_done("eval", {s: round(m["accuracy"], 4) for s, m in metrics.items()})
    return metrics
