"""Reasoning-lab analysis: what a finished lab run learned, checked step by step.

Runs after the pipeline on a run directory whose dataset mixes the lab's task
families (ids start with the family name: "arithmetic-test-..."):

    metrics = analyze(run)               # the numbers below, and plots/*.png (plots.py)
    write_metrics(run, metrics)          # lab_metrics.json and metrics.json["lab"] (their one writer)
    write_lab_report(run, metrics)       # the lab section of report.md (report.py)

`analyze` computes, from the run's artifacts only (statistics in stats.py):

1. ``accuracy``: test accuracy per model and task (eval/<model>/predictions.jsonl);
2. ``validity``: per model and task, the fraction of test completions the step
   verifier accepts (every step valid and the final answer follows), and of the
   correct answers, the fraction reached by an invalid rationale ("right for
   the wrong reason"), and the invalid ones counted by the kind of their first
   error (misread / wrong_rule / computation / structure / final_answer, see
   flaws.ERROR_KINDS): which failures a model's training removed;
3. ``rm``: the reward model's score distribution per quality level and its
   held-out pairwise accuracy (rm/metrics.json), the verifier-validity rate of
   the judged training rationales per level, and how the RM's score tracks
   validity on (at most `max_rm_rationales`) judged rationales: ROC AUC of the
   score for predicting verifier-valid and Spearman rho of the score with the
   0/1 verdict and with the fraction of valid steps;
4. ``flips``: SFT → RL on the test set: fixed (wrong→right), broken
   (right→wrong), kept right, kept wrong, per task and in all;
5. ``rl``: first/last/min/max of the PPO log's curves (plotted in full).

Every rate comes with the counts it was computed from. Missing artifacts
(no oracle, no RL yet) leave their part out (or None) instead of failing.
"""
from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from smlearn.evaluate.intervals import cluster_bootstrap, cluster_mean_difference
from smlearn.collect import levels as collect_levels
from smlearn.collect.levels import hint_use_stats, pair_answer
from smlearn.io import read_json, read_jsonl, write_json
from smlearn.lab.flaws import ERROR_KINDS
from smlearn.lab.stats import mean, rate, roc_auc, spearman
from smlearn.lab.tasks import TASKS, get_task
from smlearn.prompts import PromptBuilder, completion_text, truncate_at_stop
from smlearn.rundir import MODELS

ALL = "all"                       # the row/column of every task together
# Level keys as the metrics hold them (JSON keys: "2", "1", "0") -> names.
LEVEL_NAMES = {str(level): name for level, name in collect_levels.LEVEL_NAMES.items()}
RL_KEYS = ("reward_mean", "kl_mean", "response_length_mean", "correct_mean", "rm_score_mean", "eval_accuracy",
           "initial_eval_accuracy")


# --------------------------------------------------------------------------
# Reading the run
# --------------------------------------------------------------------------

def task_of(example_id: str) -> str:
    """The task family of a lab example id ("arithmetic-test-abc" → "arithmetic")."""
    return str(example_id).split("-", 1)[0]


def _data_file(run, split: str) -> Path | None:
    source = Path(run.config.data.source).expanduser()
    if source.is_file():
        return source
    if source.is_dir():
        name = {"train": run.config.data.train_split, "test": run.config.data.test_split}.get(split, split)
        for candidate in (f"{name}.jsonl", f"{name}.json", f"{split}.jsonl"):
            if (source / candidate).exists():
                return source / candidate
    return None


def raw_rows(run, split: str) -> dict[str, dict]:
    """The dataset's raw dict rows of `split` (with `steps`, `meta` for the verifier), by id."""
    path = _data_file(run, split)
    return {str(r["id"]): r for r in read_jsonl(path)} if path is not None else {}


def verify_text(example: dict, text: str):
    """The verifier's StepReport for `text` (raw model output, cut where evaluation cuts it)."""
    return get_task(task_of(example["id"])).verify(example, truncate_at_stop(text))


def _load_predictions(run, models: Sequence[str]) -> dict[str, list[dict]]:
    out = {}
    for name in models:
        path = run.path("eval", name, "predictions.jsonl")
        if path.exists():
            out[name] = read_jsonl(path)
    return out


def _tasks_in(rows: Iterable[dict]) -> list[str]:
    found = {task_of(r["id"]) for r in rows}
    known = [t for t in TASKS if t in found]
    return known + sorted(found - set(known))


# --------------------------------------------------------------------------
# 1. accuracy, 2. validity
# --------------------------------------------------------------------------

def accuracy_by_task(rows: list[dict], tasks: Sequence[str]) -> dict[str, dict]:
    out = {}
    for task in list(tasks) + [ALL]:
        sel = [r for r in rows if task == ALL or task_of(r["id"]) == task]
        correct = sum(bool(r.get("correct")) for r in sel)
        out[task] = {"accuracy": rate(correct, len(sel)), "correct": correct, "n": len(sel)}
    return out


def validity_by_task(rows: list[dict], tasks: Sequence[str], examples: dict[str, dict]) -> dict[str, dict]:
    """Verifier verdicts on one stage's test completions, per task and in all."""
    per_row = []
    for r in rows:
        ex = examples.get(str(r["id"]))
        if ex is None or task_of(r["id"]) not in TASKS:
            continue
        report = verify_text(ex, r.get("completion") or "")
        per_row.append((task_of(r["id"]), bool(r.get("correct")), report))
    out = {}
    for task in list(tasks) + [ALL]:
        sel = [(c, rep) for t, c, rep in per_row if task == ALL or t == task]
        n = len(sel)
        valid = sum(rep.valid for _, rep in sel)
        correct = sum(c for c, _ in sel)
        correct_invalid = sum(c and not rep.valid for c, rep in sel)
        first_errors = {kind: sum(rep.first_error_kind == kind for _, rep in sel) for kind in ERROR_KINDS}
        out[task] = {
            "n": n, "valid": valid, "valid_rate": rate(valid, n),
            "all_steps_valid_rate": rate(sum(rep.all_steps_valid for _, rep in sel), n),
            "final_follows_rate": rate(sum(rep.final_follows for _, rep in sel), n),
            "correct": correct, "correct_invalid": correct_invalid,
            "right_wrong_reason_rate": rate(correct_invalid, correct),
            "first_error": first_errors,   # invalid rationales by where they first go wrong
        }
    return out


# --------------------------------------------------------------------------
# 3. the reward model against the verifier
# --------------------------------------------------------------------------

def _default_scorer(run):
    path = run.path("rm", "model")
    if not path.exists():
        return None
    from smlearn.train.reward_scorer import RewardScorer

    cfg = run.config.model
    return RewardScorer.load(path, device=cfg.device, trust_remote_code=cfg.trust_remote_code)


def _step_fraction(report) -> float:
    return report.n_valid / report.n_steps if report.n_steps else 0.0


def _heldout_wins(run) -> list[tuple[str, bool]] | None:
    """(question id, chosen scored above rejected) for each held-out pair, from pairs.jsonl and
    rm/scores.jsonl (the RM stage's own scores, by rationale id); None when the run has no RM scores."""
    pairs_path, scores_path = run.path("pairs.jsonl"), run.path("rm", "scores.jsonl")
    if not pairs_path.exists() or not scores_path.exists():
        return None
    score_of = {(row["split"], rid): row["score"] for row in read_jsonl(scores_path)
                for rid in row.get("rationale_ids") or []}
    out = []
    for p in read_jsonl(pairs_path):
        chosen, rejected = score_of.get(("heldout", p.get("chosen_id"))), score_of.get(("heldout", p.get("rejected_id")))
        if p.get("split") == "heldout" and chosen is not None and rejected is not None:
            out.append((p["question_id"], chosen > rejected))
    return out


def heldout_accuracy_by_task(run) -> dict[str, dict] | None:
    """The RM's held-out pairwise accuracy per task: one task whose pairs the RM cannot rank (e.g. coins on
    one seed) moves the overall figure by its share of the held-out pairs."""
    found = _heldout_wins(run)
    if found is None:
        return None
    wins: dict[str, list[bool]] = defaultdict(list)
    for qid, win in found:
        wins[task_of(qid)].append(win)
    return {task: {"n": len(w), "accuracy": sum(w) / len(w)} for task, w in sorted(wins.items())}


def _heldout_scores_by_question(run) -> dict[str, dict[str, list[float]]] | None:
    """{question id: {level: the RM's scores}} for the held-out questions, from rm/scores.jsonl (None when
    the run has no RM scores)."""
    path = run.path("rm", "scores.jsonl")
    if not path.exists():
        return None
    by_question: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in read_jsonl(path):
        if row.get("split") == "heldout" and row.get("level") is not None:
            by_question[str(row["question_id"])][str(row["level"])].append(float(row["score"]))
    return by_question


def heldout_level_means_by_task(run) -> dict[str, dict] | None:
    """The RM's mean score per task and level (high 2 / mid 1 / low 0) on held-out questions, from
    rm/scores.jsonl. The overall level means mix tasks whose scores sit on different levels (coins' wrong
    rationales far below arithmetic's), so an overall mid-over-low can come from the task mix alone; per task
    it cannot."""
    by_question = _heldout_scores_by_question(run)
    if by_question is None:
        return None
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for qid, levels in by_question.items():
        for level, values in levels.items():
            scores[task_of(qid)][level].extend(values)
    return {task: {level: {"n": len(v), "mean": mean(v)} for level, v in sorted(levels.items(), reverse=True)}
            for task, levels in sorted(scores.items())}


LEVEL_GAPS = (("2", "1"), ("1", "0"))      # high - mid, mid - low: the two steps of "high > mid > low"


def heldout_level_gaps(run) -> dict[str, dict | None] | None:
    """The RM's held-out mean score of one level minus the next (high - mid, mid - low), each with a 95 % CI
    resampling held-out questions: the mid and low means rest on 10-25 rationales a seed (sd ~2), so the
    sign of a gap says little without its interval. None for a gap whose levels are not both held out.

    Each gap also has `within_question`: the same difference taken inside each held-out question that has
    both levels (its mean score of one minus the other), averaged over those questions, with its 95 % CI
    (questions resampled). The pooled gap also moves with which questions and tasks the two levels come from
    (scores sit on a level of their own per question and per task, and the pairwise loss fixes only
    differences within a question); the within-question gap does not. None when fewer than two questions
    have both levels."""
    by_question = _heldout_scores_by_question(run)
    if by_question is None:
        return None
    out: dict[str, dict | None] = {}
    for a, b in LEVEL_GAPS:
        clusters = [(levels.get(a, []), levels.get(b, [])) for levels in by_question.values()]
        n_a, n_b = sum(len(x) for x, _ in clusters), sum(len(y) for _, y in clusters)
        if not n_a or not n_b:
            out[f"{a}-{b}"] = None
            continue
        gap, lo, hi = cluster_mean_difference(clusters)
        out[f"{a}-{b}"] = {"gap": gap, "ci": [lo, hi], "n": [n_a, n_b],
                           "questions": sum(1 for x, y in clusters if x or y),
                           "within_question": _within_question(by_question, a, b)}
    return out


def heldout_accuracy_interval(run) -> dict[str, Any] | None:
    """The RM's held-out pairwise accuracy with its 95 % CI, resampling questions: the held-out pairs come
    from a few dozen questions, several pairs each, so the binomial interval over pairs is too narrow."""
    found = _heldout_wins(run)
    if not found:
        return None
    by_question: dict[str, list[float]] = defaultdict(list)
    for qid, win in found:
        by_question[qid].append(float(win))
    point, lo, hi = cluster_bootstrap(list(by_question.values()))
    return {"accuracy": point, "ci": [lo, hi], "pairs": len(found), "questions": len(by_question)}


def hint_use_by_task(judged: list[dict]) -> dict[str, dict]:
    """Per task, `hint_use_stats` over its judged rationales (training and RM questions): does the model use the
    answer hint there? Where it does not, that task's mid and low rationales are draws from one distribution."""
    tasks = [t for t in TASKS if any(task_of(r["question_id"]) == t for r in judged)]
    return {t: hint_use_stats([r for r in judged if task_of(r["question_id"]) == t]) for t in tasks}


def judged_items(run) -> list[dict] | None:
    """Every judged rationale of a training or RM question with the step verifier's verdict: task, question id,
    level, valid, step_fraction, and the prompt and completion the RM read (None when the run has no
    judged.jsonl)."""
    judged_path = run.path("judged.jsonl")
    if not judged_path.exists():
        return None
    trigger = run.config.prompts.trigger
    examples = raw_rows(run, "train")
    if run.config.generate.rm_split and run.config.generate.rm_questions:   # the RM's extra questions' rationales
        examples = {**raw_rows(run, run.config.generate.rm_split), **examples}
    prompts = {}
    pairs_path = run.path("pairs.jsonl")
    if pairs_path.exists():
        for p in read_jsonl(pairs_path):
            prompts.setdefault(p["question_id"], p["prompt"])
    zero_shot = PromptBuilder(exemplars=[], trigger=trigger, n_shots=0)
    items = []
    for j in read_jsonl(judged_path):
        ex = examples.get(str(j["question_id"]))
        if ex is None or task_of(ex["id"]) not in TASKS:
            continue
        # The text the RM saw in the pairs (the model's own final answer), never a made-up placeholder.
        answer = pair_answer(j) if "final_output" in j else j.get("final_answer")
        if answer is None:
            continue
        completion = completion_text(j.get("rationale") or "", answer, trigger)
        report = verify_text(ex, completion)
        items.append({"task": task_of(ex["id"]), "question_id": str(j["question_id"]), "level": j.get("level"),
                      "valid": report.valid, "step_fraction": _step_fraction(report), "completion": completion,
                      "prompt": prompts.get(j["question_id"], zero_shot.cot(ex["question"]))})
    return items


def step_fraction_gaps_within_question(items: list[dict]) -> dict[str, dict[str, dict | None]]:
    """The step verifier's share of valid steps, one level minus the next (high - mid, mid - low) inside each
    question that holds both, averaged over those questions with a 95 % CI (questions resampled); per task and
    over all tasks ("all"). The ground truth beside the RM's `within_question` gaps: where it holds zero, the
    two levels' rationales are equally valid question by question, and an RM order between them is not one of
    step validity."""
    by_question: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for it in items:
        for task in (it["task"], "all"):
            by_question[task][it["question_id"]][str(it["level"])].append(it["step_fraction"])
    return {task: {f"{a}-{b}": _within_question(qs, a, b) for a, b in LEVEL_GAPS}
            for task, qs in sorted(by_question.items())}


def _within_question(by_question: dict[str, dict[str, list[float]]], a: str, b: str) -> dict | None:
    """Mean over the questions holding both levels of (their mean a value - their mean b value), with a 95 %
    CI resampling those questions; None when fewer than two questions hold both."""
    paired = [[sum(x) / len(x) - sum(y) / len(y)] for levels in by_question.values()
              if (x := levels.get(a)) and (y := levels.get(b))]
    if len(paired) < 2:
        return None
    gap, lo, hi = cluster_bootstrap(paired)
    return {"gap": gap, "ci": [lo, hi], "questions": len(paired)}


def rm_analysis(run, scorer=None, max_rationales: int = 600, seed: int = 0) -> tuple[dict, dict]:
    """(metrics, plot data): RM levels/accuracy from rm/metrics.json, and RM score vs verifier validity."""
    rm_path = run.path("rm", "metrics.json")
    rm = read_json(rm_path) if rm_path.exists() else {}
    levels = {k: {key: v.get(key) for key in ("mean", "std", "n")} for k, v in (rm.get("levels") or {}).items()}
    out: dict[str, Any] = {"heldout_accuracy": rm.get("heldout_accuracy"),
                           "heldout_pairs": rm.get("heldout_pairs"),
                           "train_accuracy": rm.get("train_accuracy"),
                           "score_mean": rm.get("score_mean"), "score_std": rm.get("score_std"),
                           "heldout_accuracy_by_levels": rm.get("heldout_accuracy_by_levels"),
                           "heldout_levels": rm.get("heldout_levels"),
                           "levels": levels, "validity_by_level": {}, "vs_validity": None}
    out["heldout_accuracy_by_task"] = heldout_accuracy_by_task(run)
    out["heldout_interval"] = heldout_accuracy_interval(run)
    out["heldout_levels_by_task"] = heldout_level_means_by_task(run)
    out["heldout_level_gaps"] = heldout_level_gaps(run)
    level_scores = {k: list(v.get("scores") or []) for k, v in (rm.get("levels") or {}).items()}
    plot: dict[str, Any] = {"level_scores": level_scores, "scored": []}

    items = judged_items(run)
    if items is None:
        return out, plot

    # Verifier validity per collection level, over every judged rationale (the verifier is cheap), and the
    # share of valid steps: how much better, step by step, one level's rationales are than another's. A
    # level order the verifier does not see (e.g. mid vs low) is not one a reward model can learn from text.
    by_level: dict[str, list[dict]] = defaultdict(list)
    by_task_level: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        by_level[str(it["level"])].append(it)
        by_task_level[it["task"]][str(it["level"])].append(it["step_fraction"])

    out["validity_by_level"] = {
        k: {"n": len(v), "valid": sum(it["valid"] for it in v), "valid_rate": rate(sum(it["valid"] for it in v), len(v)),
            "step_fraction_mean": mean([it["step_fraction"] for it in v])}
        for k, v in sorted(by_level.items(), reverse=True)}
    out["step_fraction_by_task_level"] = {
        task: {k: {"n": len(v), "mean": mean(v)} for k, v in sorted(levels.items(), reverse=True)}
        for task, levels in sorted(by_task_level.items())}
    out["step_fraction_gaps_within_question"] = step_fraction_gaps_within_question(items)

    if scorer is None:
        scorer = _default_scorer(run)
    if scorer is None or not items:
        return out, plot
    sample = items
    if len(items) > max_rationales:
        idx = sorted(random.Random(seed).sample(range(len(items)), max_rationales))
        sample = [items[i] for i in idx]
    scores = [float(s) for s in scorer.score([it["prompt"] for it in sample], [it["completion"] for it in sample])]
    for it, s in zip(sample, scores):
        it["score"] = s
    plot["scored"] = sample

    def summary(sel: list[dict]) -> dict:
        sc, va = [it["score"] for it in sel], [it["valid"] for it in sel]
        return {"n": len(sel), "n_valid": sum(va),
                "auc": roc_auc(sc, va),
                "spearman_valid": spearman(sc, [float(v) for v in va]),
                "spearman_step_fraction": spearman(sc, [it["step_fraction"] for it in sel]),
                "score_mean_valid": mean(s for s, v in zip(sc, va) if v),
                "score_mean_invalid": mean(s for s, v in zip(sc, va) if not v)}

    vs = summary(sample)
    vs["judged_total"] = len(items)
    vs["by_task"] = {t: summary([it for it in sample if it["task"] == t])
                     for t in _tasks_in({"id": it["task"]} for it in sample)}
    out["vs_validity"] = vs
    return out, plot


# --------------------------------------------------------------------------
# 4. flips, 5. RL curves
# --------------------------------------------------------------------------

def flip_table(before: list[dict], after: list[dict], tasks: Sequence[str]) -> dict[str, dict]:
    """Counts of fixed / broken / kept_right / kept_wrong between two stages' predictions (shared ids)."""
    prev = {str(r["id"]): bool(r.get("correct")) for r in before}
    rows = [(task_of(r["id"]), prev[str(r["id"])], bool(r.get("correct"))) for r in after if str(r["id"]) in prev]
    out = {}
    for task in list(tasks) + [ALL]:
        sel = [(a, b) for t, a, b in rows if task == ALL or t == task]
        out[task] = {"fixed": sum(not a and b for a, b in sel), "broken": sum(a and not b for a, b in sel),
                     "kept_right": sum(a and b for a, b in sel), "kept_wrong": sum(not a and not b for a, b in sel),
                     "n": len(sel)}
    return out


def rl_summary(log: list[dict]) -> dict | None:
    if not log:
        return None
    out: dict[str, Any] = {"steps": len(log)}
    for key in RL_KEYS:
        values = [float(r[key]) for r in log if r.get(key) is not None]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "min": min(values), "max": max(values)}
    return out


# --------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------

def analyze(run, models: Sequence[str] = MODELS, scorer=None, max_rm_rationales: int = 600,
            plots: bool = True) -> dict:
    """The lab metrics of a finished run (and its plots/, unless `plots` is off); `write_metrics` saves them.

    `models`: the models whose test predictions to read (those the run has; "stages" in the metrics).

    `scorer`: anything with `.score(prompts, completions) -> list[float]`; default: the run's
    rm/model (RewardScorer), or no RM-vs-validity analysis when the run has none.
    """
    preds = _load_predictions(run, models)
    present = [m for m in models if m in preds]
    tasks = _tasks_in(r for rows in preds.values() for r in rows)
    test_examples = raw_rows(run, "test")

    metrics: dict[str, Any] = {"stages": present, "tasks": tasks}
    metrics["accuracy"] = {s: accuracy_by_task(preds[s], tasks) for s in present}
    metrics["validity"] = {s: validity_by_task(preds[s], tasks, test_examples) for s in present} \
        if test_examples else {}
    metrics["rm"], rm_plot = rm_analysis(run, scorer=scorer, max_rationales=max_rm_rationales)
    judged_path = run.path("judged.jsonl")
    metrics["hint_use"] = hint_use_by_task(read_jsonl(judged_path)) if judged_path.exists() else None
    metrics["flips"] = ({"from": "sft", "to": "rl", **flip_table(preds["sft"], preds["rl"], tasks)}
                        if "sft" in preds and "rl" in preds else None)
    log_path = run.path("rl", "log.jsonl")
    log = read_jsonl(log_path) if log_path.exists() else []
    metrics["rl"] = rl_summary(log)

    if plots:
        from smlearn.lab.plots import draw_plots      # here: matplotlib loads only when plotting

        metrics["plots"] = draw_plots(run, metrics, rm_plot, log)
    else:
        metrics["plots"] = []
    return metrics


def write_metrics(run, metrics: dict) -> None:
    """The one writer of lab_metrics.json and of metrics.json (the eval stage's accuracy, and the lab's
    metrics under "lab")."""
    write_json(run.path("lab_metrics.json"), metrics)
    top_path = run.path("metrics.json")
    top = read_json(top_path) if top_path.exists() else {}
    eval_path = run.path("eval", "metrics.json")
    if eval_path.exists():
        top["accuracy"] = read_json(eval_path)
    top["lab"] = metrics
    write_json(top_path, top)
