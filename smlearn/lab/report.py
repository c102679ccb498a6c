"""The lab analysis's section of report.md: every number as in lab_metrics.json, plots linked.

    write_lab_report(run, metrics)       # appends (or replaces) the lab section of report.md
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from smlearn.io import write_text
from smlearn.lab.analysis import ALL, LEVEL_NAMES, RL_KEYS
from smlearn.lab.flaws import ERROR_KINDS
from smlearn.rundir import MODEL_LABELS

MARKER_BEGIN = "<!-- smlearn-lab-analysis:begin -->"
MARKER_END = "<!-- smlearn-lab-analysis:end -->"


def fmt(value: Any) -> str:
    """A number as the report prints it: floats with 4 decimals, ints as they are, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _interval(found: dict | None) -> str:
    """' [95 % CI lo–hi, N questions resampled]' for a held-out accuracy whose pairs were resampled by question."""
    if not found:
        return ""
    lo, hi = found["ci"]
    return f" [95 % CI {lo:.2f}–{hi:.2f}, {found['questions']} questions resampled]"


def format_level_gaps(gaps: dict | None) -> str:
    """'high − mid +1.23 [+0.40, +2.01] (within question +0.90 [+0.20, +1.60], 30 q), mid − low ...': held-out
    mean-score gaps with their CIs, and the same gap inside the questions that hold both levels when measured."""
    if not gaps:
        return "n/a"
    names = {"2-1": "high − mid", "1-0": "mid − low"}

    def one(g: dict | None) -> str:
        if not g:
            return "n/a"
        text = f"{g['gap']:+.2f} [{g['ci'][0]:+.2f}, {g['ci'][1]:+.2f}]"
        if w := g.get("within_question"):
            text += f" (within question {w['gap']:+.2f} [{w['ci'][0]:+.2f}, {w['ci'][1]:+.2f}], {w['questions']} q)"
        return text
    return ", ".join(f"{names.get(k, k)} {one(g)}" for k, g in gaps.items())


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return lines


def _within_question_section(gaps: dict | None) -> list[str]:
    """The verifier's valid-step share, one level minus the next inside each question holding both (mean over
    those questions, 95 % CI), per task and over all: the ground truth beside the RM's within-question gaps."""
    if not gaps:
        return []

    def cell(g: dict | None) -> str:
        return "n/a" if not g else f"{fmt(g['gap'])} [{fmt(g['ci'][0])}, {fmt(g['ci'][1])}] ({fmt(g['questions'])} q)"
    rows = [[t, cell(v.get("2-1")), cell(v.get("1-0"))] for t, v in gaps.items()]
    return ["", "Valid-step fraction inside each question: one level minus the next, mean over the questions "
            "holding both [95 % CI, questions resampled] (where mid − low holds zero, mid and low rationales are "
            "equally valid question by question):", ""] + _table(["task", "high − mid", "mid − low"], rows)


def _hint_use_section(hint_use: dict | None) -> list[str]:
    """Per task: the share of judged rationales reaching the gold answer by source, and gold-hinted minus free
    and free minus wrong-hinted in points with their 95 % intervals (questions resampled)."""
    if not hint_use:
        return []

    def diff(d: dict | None) -> str:
        return "n/a" if d is None else f"{fmt(d['points'])} [{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}]"

    def share(rates: dict, source: str) -> str:
        v = rates.get(source)
        return "n/a" if v is None else f"{fmt(v['rate'])} ({v['high']}/{v['n']})"

    rows = [[t, share(u["right_rate"], "gold"), share(u["right_rate"], "free"), share(u["right_rate"], "wrong"),
             diff(u["gold_lift"]), diff(u["wrong_pull"])] for t, u in hint_use.items()]
    return ["", "Hint use, per task: the share of judged rationales whose hint-free answer is the gold one, by what "
            "they were written for; where gold − free holds zero there is no measurable hint use in that task, and its "
            "mid and low rationales may not differ:", ""] + _table(
        ["task", "gold-hinted", "free", "wrong-hinted", "gold − free, points [95 % CI]",
         "free − wrong, points [95 % CI]"], rows)


def _first_error_section(validity: dict, models: list[str], tasks: list[str]) -> list[str]:
    """Invalid test rationales counted by the kind of their first error: which failures training removed."""
    rows = [[MODEL_LABELS.get(s, s), t, validity[s][t]["n"] - validity[s][t]["valid"]]
            + [validity[s][t]["first_error"].get(kind, 0) for kind in ERROR_KINDS]
            for s in models for t in tasks
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
    models = lab.get("stages") or []
    plots = set(lab.get("plots") or [])
    parts = ["## Reasoning lab: per-task analysis", ""]

    def image(name: str, alt: str) -> list[str]:
        rel = f"plots/{name}"
        return ["", f"![{alt}]({rel})", ""] if rel in plots else []

    parts += ["### Test accuracy by task", "",
              "Accuracy (correct / n) of each stage's greedy answers on the test questions.", ""]
    rows = [[MODEL_LABELS.get(s, s)] + [f"{fmt(lab['accuracy'][s][t]['accuracy'])} "
                                         f"({lab['accuracy'][s][t]['correct']}/{lab['accuracy'][s][t]['n']})"
                                         for t in tasks] for s in models]
    parts += _table(["stage"] + tasks, rows) if rows else ["(no predictions)"]
    parts += image("accuracy_by_task.png", "test accuracy by task and stage")

    validity = lab.get("validity") or {}
    parts += ["### Rationale validity (step verifier)", "",
              "valid: every step valid and the final answer follows from the steps; "
              "right for the wrong reason: correct answers whose rationale is invalid, "
              "as a fraction of correct answers.", ""]
    rows = []
    for s in models:
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
    parts += _first_error_section(validity, models, tasks)

    rm = lab.get("rm") or {}
    parts += ["### Reward model vs. the verifier", "",
              f"- held-out pairwise accuracy: {fmt(rm.get('heldout_accuracy'))}{_interval(rm.get('heldout_interval'))} "
              f"({fmt(rm.get('heldout_pairs'))} pairs); train: {fmt(rm.get('train_accuracy'))}",
              "- held-out pairwise accuracy by task: " + (", ".join(
                  f"{task} {fmt(v['accuracy'])} ({v['n']} pairs)"
                  for task, v in (rm.get("heldout_accuracy_by_task") or {}).items()) or "n/a"),
              "- held-out mean-score gaps between levels (95 % CI, questions resampled): "
              + format_level_gaps(rm.get("heldout_level_gaps")),
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
    parts += _within_question_section(rm.get("step_fraction_gaps_within_question"))
    parts += _hint_use_section(lab.get("hint_use"))
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
