"""Stage 6, eval — greedy chain-of-thought accuracy on the test split, per model.

The base model is prompted few-shot (as in the paper's few-shot CoT baseline);
trained models zero-shot, in the format they were trained on. Generation is
kept apart from scoring (lm-evaluation-harness style): raw completions are
written first, then scored by `score.py`, so they can be re-scored later.
"""
from __future__ import annotations

import time

from .. import dist, stage_io
from ..generate.engine import SamplingParams, generate_texts
from ..io import read_json, write_json, write_jsonl
from ..prompts import STOP_STRINGS
from ..rundir import Run
from .score import score_predictions

# The stage that trains each model `eval.stages` may name (the base model needs none).
TRAINED_BY = {"base": None, "sft": "sft", "rl": "rl"}


def evaluate_model(run: Run, name: str, progress: bool = True) -> dict:
    """Greedy CoT on the test split with the model `name` (one of rundir.MODELS); writes eval/<name>/."""
    cfg = run.config.eval
    items = stage_io.examples(run, "test")
    model, tokenizer = stage_io.load_model(run, name)
    builder = stage_io.prompt_builder(run, tokenizer, stage_io.dataset_kind(items))
    few_shot = (name == "base" or run.config.prompts.eval_few_shot_after_training) and run.config.prompts.n_shots > 0
    prompts = [builder.cot(e.question, few_shot=few_shot) for e in items]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=False, stop_strings=tuple(STOP_STRINGS))
    t0 = time.time()
    completions = generate_texts(model, tokenizer, prompts, params, batch_size=cfg.batch_size,
                                 labels=[f"test question id {e.id}" for e in items],
                                 desc=f"eval {name}", progress=progress, options=stage_io.engine_options(run),
                                 shard=dist.shard())
    # Several processes (smlearn.dist): each generated its share of the batches; all get every completion.
    dist.say_share(f"eval {name}", sum(c is not None for c in completions), len(items), "questions")
    completions = dist.merge_shards(completions)
    seconds = time.time() - t0
    result = score_predictions(items, {e.id: c for e, c in zip(items, completions)}, trigger=builder.trigger)
    rows = [{"id": s.id, "completion": c, "prediction": s.prediction, "gold": s.gold, "correct": s.correct}
            for s, c in zip(result.per_example, completions)]
    write_jsonl(run.path("eval", name, "predictions.jsonl"), rows)
    metrics = {"accuracy": result.accuracy, "correct": result.correct, "total": result.total,
               "few_shot": few_shot, "seconds": round(seconds, 1)}
    write_json(run.path("eval", name, "metrics.json"), metrics)
    return metrics


def evaluate(run: Run, stages: list[str] | None = None, progress: bool = True) -> dict:
    """The eval stage: evaluate each model of `stages` (default `eval.stages`, model names despite the
    name); writes eval/metrics.json with all of them."""
    names = stages or run.config.eval.stages
    for name in names:
        if TRAINED_BY[name]:
            run.require(TRAINED_BY[name], f"eval {name}")
    metrics_path = run.path("eval", "metrics.json")
    metrics = read_json(metrics_path) if metrics_path.exists() and run.is_current("eval") else {}
    for name in names:
        metrics[name] = evaluate_model(run, name, progress)
        write_json(metrics_path, metrics)
    run.mark_done("eval", {s: round(m["accuracy"], 4) for s, m in metrics.items()})
    return metrics
