"""Reasoning-lab analysis: what a finished lab run learned, checked step by step.

Runs after the pipeline on a run directory whose dataset mixes the lab's task
families (ids start with the family name: "arithmetic-test-..."):

    metrics = analyze(run)               # writes lab_metrics.json, metrics.json["lab"], plots/*.png
    write_lab_report(run, metrics)       # appends (or replaces) the lab section of report.md

`analyze` computes, from the run's artifacts only:

1. ``accuracy``: test accuracy per stage and task (eval/<stage>/predictions.jsonl);
2. ``validity``: per stage and task, the fraction of test completions the step
   verifier accepts (every step valid and the final answer follows), and of the
   correct answers, the fraction reached by an invalid rationale ("right for
   the wrong reason"), and the invalid ones counted by the kind of their first
   error (misread / wrong_rule / computation / structure / final_answer, see
   flaws.ERROR_KINDS): which failures a stage removed;
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

import math
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from smlearn.collect.levels import pair_answer
from smlearn.io import read_json, read_jsonl, write_json, write_text
from smlearn.lab.tasks import TASKS, get_task
from smlearn.lab.flaws import ERROR_KINDS
from smlearn.prompts import PromptBuilder, completion_text, truncate_at_stop
from smlearn.rundir import MODEL_LABELS, MODELS

LEVEL_NAMES = {"2": "high", "1": "mid", "0": "low"}
ALL = "all"                       # the row/column of every task together
RL_KEYS = ("reward_mean", "kl_mean", "response_length_mean", "correct_mean", "rm_score_mean", "eval_accuracy",
           "initial_eval_accuracy")
MARKER_BEGIN = "<!-- smlearn-lab-analysis:begin -->"
MARKER_END = "<!-- smlearn-lab-analysis:end -->"
PLOT_FILES = ("accuracy_by_task.png", "validity_by_task.png", "rm_scores_by_level.png",
              "rm_score_vs_validity.png", "rl_curves.png")


# --------------------------------------------------------------------------
# Small statistics (ranks, ROC AUC, Spearman), no scipy/sklearn needed
# --------------------------------------------------------------------------

def rankdata(values: Sequence[float]) -> list[float]:
    """1-based ranks; ties get the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[bool | int]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting 1/2.

    Mann-Whitney form from ranks. None when either class is empty.
    """
    if len(scores) != len(labels):
        raise ValueError(f"roc_auc: {len(scores)} scores but {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of tie-averaged ranks); None when undefined."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return None
    rx, ry = rankdata(x), rankdata(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def roc_curve(scores: Sequence[float], labels: Sequence[bool | int]) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates), thresholds from high to low (ties stepped together)."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    pairs = sorted(zip(scores, labels), key=lambda p: -p[0])
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0
    for i, (s, y) in enumerate(pairs):
        tp += bool(y)
        fp += not y
        if i + 1 == len(pairs) or pairs[i + 1][0] != s:
            fpr.append(fp / n_neg if n_neg else 0.0)
            tpr.append(tp / n_pos if n_pos else 0.0)
    return fpr, tpr


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


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
        name = run.config.data.train_split if split == "train" else run.config.data.test_split
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
        out[task] = {"accuracy": _rate(correct, len(sel)), "correct": correct, "n": len(sel)}
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
            "n": n, "valid": valid, "valid_rate": _rate(valid, n),
            "all_steps_valid_rate": _rate(sum(rep.all_steps_valid for _, rep in sel), n),
            "final_follows_rate": _rate(sum(rep.final_follows for _, rep in sel), n),
            "correct": correct, "correct_invalid": correct_invalid,
            "right_wrong_reason_rate": _rate(correct_invalid, correct),
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


def rm_analysis(run, scorer=None, max_rationales: int = 600, seed: int = 0) -> tuple[dict, dict]:
    """(metrics, plot data): RM levels/accuracy from rm/metrics.json, and RM score vs verifier validity."""
    trigger = run.config.prompts.trigger
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
    level_scores = {k: list(v.get("scores") or []) for k, v in (rm.get("levels") or {}).items()}
    plot: dict[str, Any] = {"level_scores": level_scores, "scored": []}

    judged_path = run.path("judged.jsonl")
    if not judged_path.exists():
        return out, plot
    examples = raw_rows(run, "train")
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
        items.append({"task": task_of(ex["id"]), "level": j.get("level"), "valid": report.valid,
                      "step_fraction": _step_fraction(report), "completion": completion,
                      "prompt": prompts.get(j["question_id"], zero_shot.cot(ex["question"]))})

    # Verifier validity per collection level, over every judged rationale (the verifier is cheap), and the
    # share of valid steps: how much better, step by step, one level's rationales are than another's. A
    # level order the verifier does not see (e.g. mid vs low) is not one a reward model can learn from text.
    by_level: dict[str, list[dict]] = defaultdict(list)
    by_task_level: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        by_level[str(it["level"])].append(it)
        by_task_level[it["task"]][str(it["level"])].append(it["step_fraction"])

    out["validity_by_level"] = {
        k: {"n": len(v), "valid": sum(it["valid"] for it in v), "valid_rate": _rate(sum(it["valid"] for it in v), len(v)),
            "step_fraction_mean": _mean([it["step_fraction"] for it in v])}
        for k, v in sorted(by_level.items(), reverse=True)}
    out["step_fraction_by_task_level"] = {
        task: {k: {"n": len(v), "mean": _mean(v)} for k, v in sorted(levels.items(), reverse=True)}
        for task, levels in sorted(by_task_level.items())}

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
                "score_mean_valid": _mean(s for s, v in zip(sc, va) if v),
                "score_mean_invalid": _mean(s for s, v in zip(sc, va) if not v)}

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
# Plots (matplotlib's object API on Agg: no global pyplot state)
# --------------------------------------------------------------------------

def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (8, 4.5)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str,
                  ylim: tuple[float, float] | None = (0, 1.2)) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width=width, label=label)
        for bar, v in zip(bars, values):
            ax.annotate("n/a" if v is None else f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
        ax.set_yticks([i / 5 for i in range(6)])
    ax.grid(axis="y", alpha=0.3)
    if series:
        # One row above the bars (ylim leaves room over 1.0), so a full bar is never hidden.
        ax.legend(fontsize=8, ncols=len(series), loc="upper center")


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return f"plots/{path.name}"


def _plot_accuracy(metrics: dict, tasks: list[str], out: Path) -> str:
    groups = tasks + [ALL]
    fig, axes = _figure()
    series = {f"{MODEL_LABELS.get(s, s)}": [metrics["accuracy"][s][g]["accuracy"] for g in groups]
              for s in metrics["stages"]}
    _grouped_bars(axes[0][0], groups, series, "test accuracy", "Test accuracy by task and stage")
    return _save(fig, out / "accuracy_by_task.png")


def _plot_validity(metrics: dict, tasks: list[str], out: Path) -> str:
    groups = tasks + [ALL]
    fig, axes = _figure(1, 2, size=(12, 4.5))
    stages = [s for s in metrics["stages"] if s in metrics["validity"]]
    _grouped_bars(axes[0][0], groups,
                  {MODEL_LABELS.get(s, s): [metrics["validity"][s][g]["valid_rate"] for g in groups] for s in stages},
                  "fraction of test completions", "Verifier-valid rationales (all steps valid, answer follows)")
    _grouped_bars(axes[0][1], groups,
                  {MODEL_LABELS.get(s, s): [metrics["validity"][s][g]["right_wrong_reason_rate"] for g in groups]
                   for s in stages},
                  "fraction of correct answers", "Right for the wrong reason (correct, invalid rationale)")
    return _save(fig, out / "validity_by_task.png")


def _plot_rm_levels(level_scores: dict[str, list[float]], out: Path) -> str:
    fig, axes = _figure()
    ax = axes[0][0]
    keys = [k for k in ("2", "1", "0") if level_scores.get(k)] + \
        [k for k in level_scores if k not in ("2", "1", "0") and level_scores[k]]
    if keys:
        data = [level_scores[k] for k in keys]
        box = ax.boxplot(data, tick_labels=[f"{LEVEL_NAMES.get(k, k)} (n={len(level_scores[k])})" for k in keys],
                         showmeans=True)
        box["medians"][0].set_label("median (box: quartiles)")
        box["means"][0].set_label("mean")
        for i, vs in enumerate(data, start=1):
            jitter = random.Random(i)
            ax.scatter([i + jitter.uniform(-0.12, 0.12) for _ in vs], vs, s=6, alpha=0.3, color="gray",
                       label="completion" if i == 1 else None)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no RM scores per level", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("quality level of the completion (collection)")
    ax.set_ylabel("reward-model score")
    ax.set_title("RM score by quality level (completions of the preference pairs)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "rm_scores_by_level.png")


def _plot_rm_validity(scored: list[dict], vs: dict | None, out: Path) -> str:
    fig, axes = _figure(1, 2, size=(12, 4.5))
    ax, ax_roc = axes[0][0], axes[0][1]
    if scored:
        valid = [it["score"] for it in scored if it["valid"]]
        invalid = [it["score"] for it in scored if not it["valid"]]
        all_scores = valid + invalid
        lo, hi = min(all_scores), max(all_scores)
        bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 10
        ax.hist(invalid, bins=bins, alpha=0.6, label=f"invalid (n={len(invalid)})", color="tab:red")
        ax.hist(valid, bins=bins, alpha=0.6, label=f"verifier-valid (n={len(valid)})", color="tab:green")
        ax.legend(fontsize=8)
        fpr, tpr = roc_curve([it["score"] for it in scored], [it["valid"] for it in scored])
        auc = vs.get("auc") if vs else None
        ax_roc.plot(fpr, tpr, label=f"RM score (AUC {'n/a' if auc is None else f'{auc:.3f}'})")
        ax_roc.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no scored rationales", ha="center", va="center", transform=ax.transAxes)
    ax_roc.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("judged training rationales")
    ax.set_title("RM score of verifier-valid vs invalid rationales")
    ax_roc.set_xlabel("false positive rate (invalid scored above threshold)")
    ax_roc.set_ylabel("true positive rate (valid scored above threshold)")
    ax_roc.set_title("ROC: RM score as a detector of valid rationales")
    ax_roc.set_xlim(0, 1)
    ax_roc.set_ylim(0, 1.02)
    return _save(fig, out / "rm_score_vs_validity.png")


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_rl(log: list[dict], out: Path) -> str:
    """RL curves, each with a moving average over ~1/10 of the steps (a single step's rollout batch is
    noisy), and the greedy accuracy on held-out RL questions where it was logged (step 0: the SFT model)."""
    fig, axes = _figure(2, 3, size=(15, 7.5))
    panels = [("reward_mean", "mean reward", "Reward"),
              ("correct_mean", "fraction correct", "Rollout accuracy (T = 1)"),
              ("rm_score_mean", "standardised RM score", "RM score of rollouts"),
              ("kl_mean", "mean KL to reference", "KL"), ("response_length_mean", "tokens", "Response length")]
    window = max(1, len(log) // 10)
    flat = [a for row in axes for a in row]
    for ax, (key, ylabel, title) in zip(flat, panels):
        pts = [(r.get("step", i), r[key]) for i, r in enumerate(log) if r.get(key) is not None]
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, alpha=0.35, label=key)
            ax.plot(xs, moving_average(ys, window), label=f"moving average ({window} steps)")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax = flat[5]
    pts = [(0, r["initial_eval_accuracy"]) for r in log if r.get("initial_eval_accuracy") is not None][:1]
    pts += [(r.get("step", i), r["eval_accuracy"]) for i, r in enumerate(log) if r.get("eval_accuracy") is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    else:
        ax.text(0.5, 0.5, "not logged (rl.eval_every = 0)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("RL step")
    ax.set_ylabel("greedy accuracy")
    ax.set_title("Held-out RL questions (greedy)")
    ax.grid(alpha=0.3)
    fig.suptitle("RL training curves (rl/log.jsonl)")
    return _save(fig, out / "rl_curves.png")


# --------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------

def analyze(run, models: Sequence[str] = MODELS, scorer=None, max_rm_rationales: int = 600,
            plots: bool = True) -> dict:
    """Compute the lab metrics of a finished run; write lab_metrics.json, metrics.json["lab"] and plots/.

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
    metrics["flips"] = ({"from": "sft", "to": "rl", **flip_table(preds["sft"], preds["rl"], tasks)}
                        if "sft" in preds and "rl" in preds else None)
    log_path = run.path("rl", "log.jsonl")
    log = read_jsonl(log_path) if log_path.exists() else []
    metrics["rl"] = rl_summary(log)

    plot_paths: list[str] = []
    if plots:
        out = run.path("plots")
        plot_paths.append(_plot_accuracy(metrics, tasks, out))
        if metrics["validity"]:
            plot_paths.append(_plot_validity(metrics, tasks, out))
        plot_paths.append(_plot_rm_levels(rm_plot["level_scores"] or _levels_from_scored(rm_plot["scored"]), out))
        plot_paths.append(_plot_rm_validity(rm_plot["scored"], metrics["rm"]["vs_validity"], out))
        if log:
            plot_paths.append(_plot_rl(log, out))
    metrics["plots"] = plot_paths

    write_json(run.path("lab_metrics.json"), metrics)
    top_path = run.path("metrics.json")
    top = read_json(top_path) if top_path.exists() else {}
    eval_path = run.path("eval", "metrics.json")
    if eval_path.exists():
        top["accuracy"] = read_json(eval_path)
    top["lab"] = metrics
    write_json(top_path, top)
    return metrics


def _levels_from_scored(scored: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for it in scored:
        out[str(it["level"])].append(it["score"])
    return dict(out)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def fmt(value: Any) -> str:
    """A number as the report prints it: floats with 4 decimals, ints as they are, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return lines


def _first_error_section(validity: dict, stages: list[str], tasks: list[str]) -> list[str]:
    """Invalid test rationales counted by the kind of their first error: which failures a stage removed."""
    rows = [[MODEL_LABELS.get(s, s), t, validity[s][t]["n"] - validity[s][t]["valid"]]
            + [validity[s][t]["first_error"].get(kind, 0) for kind in ERROR_KINDS]
            for s in stages for t in tasks
            if s in validity and t in validity[s] and "first_error" in validity[s][t]]
    if not rows:
        return []
    legend = "; ".join(f"{kind}: {text}" for kind, text in ERROR_KINDS.items())
    return ["#### Where invalid rationales first go wrong", "",
            f"Count of invalid test rationales by the kind of their first error ({legend}).", ""] + \
        _table(["stage", "task", "invalid"] + list(ERROR_KINDS), rows) + [""]


def report_section(lab: dict) -> str:
    """Markdown for the lab analysis: every number as in lab_metrics.json (4 decimals), plots linked."""
    tasks = list(lab.get("tasks") or []) + [ALL]
    stages = lab.get("stages") or []
    plots = set(lab.get("plots") or [])
    parts = ["## Reasoning lab: per-task analysis", ""]

    def image(name: str, alt: str) -> list[str]:
        rel = f"plots/{name}"
        return ["", f"![{alt}]({rel})", ""] if rel in plots else []

    parts += ["### Test accuracy by task", "",
              "Accuracy (correct / n) of each stage's greedy answers on the test questions.", ""]
    rows = [[MODEL_LABELS.get(s, s)] + [f"{fmt(lab['accuracy'][s][t]['accuracy'])} "
                                         f"({lab['accuracy'][s][t]['correct']}/{lab['accuracy'][s][t]['n']})"
                                         for t in tasks] for s in stages]
    parts += _table(["stage"] + tasks, rows) if rows else ["(no predictions)"]
    parts += image("accuracy_by_task.png", "test accuracy by task and stage")

    validity = lab.get("validity") or {}
    parts += ["### Rationale validity (step verifier)", "",
              "valid: every step valid and the final answer follows from the steps; "
              "right for the wrong reason: correct answers whose rationale is invalid, "
              "as a fraction of correct answers.", ""]
    rows = []
    for s in stages:
        for t in tasks:
            if s in validity and t in validity[s]:
                v = validity[s][t]
                rows.append([MODEL_LABELS.get(s, s), t, v["n"], v["valid"], v["valid_rate"],
                             v["all_steps_valid_rate"], v["final_follows_rate"], v["correct"],
                             v["correct_invalid"], v["right_wrong_reason_rate"]])
    parts += _table(["stage", "task", "n", "valid", "valid rate", "all steps valid", "final follows",
                     "correct", "correct & invalid", "right for wrong reason"], rows) if rows \
        else ["(no verifier results: test data rows not found)"]
    parts += image("validity_by_task.png", "verifier validity by task and stage")
    parts += _first_error_section(validity, stages, tasks)

    rm = lab.get("rm") or {}
    parts += ["### Reward model vs. the verifier", "",
              f"- held-out pairwise accuracy: {fmt(rm.get('heldout_accuracy'))} "
              f"({fmt(rm.get('heldout_pairs'))} pairs); train: {fmt(rm.get('train_accuracy'))}",
              f"- RM score over the training completions: mean {fmt(rm.get('score_mean'))}, "
              f"std {fmt(rm.get('score_std'))}", ""]
    levels = rm.get("levels") or {}
    by_level = rm.get("validity_by_level") or {}
    keys = [k for k in ("2", "1", "0") if k in levels or k in by_level] + \
        sorted(k for k in set(levels) | set(by_level) if k not in ("2", "1", "0"))
    if keys:
        rows = [[LEVEL_NAMES.get(k, k), levels.get(k, {}).get("n"), levels.get(k, {}).get("mean"),
                 levels.get(k, {}).get("std"), by_level.get(k, {}).get("n"), by_level.get(k, {}).get("valid"),
                 by_level.get(k, {}).get("valid_rate"), by_level.get(k, {}).get("step_fraction_mean")] for k in keys]
        parts += _table(["level", "RM n", "RM mean score", "RM std", "judged n", "verifier-valid",
                         "valid rate", "valid-step fraction"], rows)
    by_task = rm.get("step_fraction_by_task_level") or {}
    if by_task:
        parts += ["", "Valid-step fraction of the judged rationales, per task and level (what a reward model "
                  "reading the text could tell apart):", ""]
        parts += _table(["task"] + [LEVEL_NAMES.get(k, k) for k in ("2", "1", "0")],
                        [[t] + [(v.get(k) or {}).get("mean") for k in ("2", "1", "0")] for t, v in by_task.items()])
    parts += image("rm_scores_by_level.png", "RM score by quality level")
    vs = rm.get("vs_validity")
    if vs:
        parts += ([] if parts[-1] == "" else [""]) + [
            f"RM score as a predictor of verifier validity, on {vs['n']} of {vs['judged_total']} "
            "judged training rationales:", ""]
        rows = [[ALL, vs["n"], vs["n_valid"], vs["auc"], vs["spearman_valid"], vs["spearman_step_fraction"],
                 vs["score_mean_valid"], vs["score_mean_invalid"]]]
        rows += [[t, v["n"], v["n_valid"], v["auc"], v["spearman_valid"], v["spearman_step_fraction"],
                  v["score_mean_valid"], v["score_mean_invalid"]] for t, v in (vs.get("by_task") or {}).items()]
        parts += _table(["task", "n", "valid", "ROC AUC", "Spearman (valid)", "Spearman (valid-step fraction)",
                         "mean score valid", "mean score invalid"], rows)
    else:
        parts += ["", "- RM score vs validity: n/a (no reward model or no judged rationales)"]
    parts += image("rm_score_vs_validity.png", "RM score vs verifier validity")

    flips = lab.get("flips")
    parts += ["### SFT → RL flips on the test set", ""]
    if flips:
        rows = [[t, flips[t]["fixed"], flips[t]["broken"], flips[t]["kept_right"], flips[t]["kept_wrong"],
                 flips[t]["n"]] for t in tasks if t in flips]
        parts += _table(["task", "fixed (wrong→right)", "broken (right→wrong)", "kept right", "kept wrong", "n"],
                        rows)
    else:
        parts += ["(needs both SFT and RL predictions)"]

    rl = lab.get("rl")
    parts += ["", "### RL curves", ""]
    if rl:
        rows = [[k, rl[k]["first"], rl[k]["last"], rl[k]["min"], rl[k]["max"]] for k in RL_KEYS if k in rl]
        parts += [f"- steps: {rl['steps']}", ""] + _table(["metric", "first", "last", "min", "max"], rows)
    else:
        parts += ["(no RL log)"]
    parts += image("rl_curves.png", "RL training curves")
    return "\n".join(parts).rstrip() + "\n"


def write_lab_report(run, lab_metrics: dict) -> Path:
    """Append the lab section to report.md, replacing an earlier one (between marker comments)."""
    path = run.path("report.md")
    text = path.read_text() if path.exists() else ""
    text = re.sub(re.escape(MARKER_BEGIN) + r".*?" + re.escape(MARKER_END) + r"\n?", "", text, flags=re.S)
    text = text.rstrip("\n")
    section = f"{MARKER_BEGIN}\n{report_section(lab_metrics)}{MARKER_END}\n"
    write_text(path, (text + "\n\n" if text else "") + section)
    return path
