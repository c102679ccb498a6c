"""Stage 7, report — `report.md` from the run's artifacts (numbers read from them, never typed in); and the
report of a run of several rounds (`rounds_report`: one row per round, from smlearn.rounds' rounds.json)."""
from __future__ import annotations

from pathlib import Path

from ..io import read_json, read_jsonl, write_text
from ..rundir import Run

MODEL_DESCRIPTIONS = {"base": "base (CoT)", "sft": "SFT (self-generated rationales)", "rl": "SML (SFT + RL)"}


def _maybe_json(path: Path):
    return read_json(path) if path.exists() else None


def accuracy_table(metrics: dict) -> list[str]:
    lines = ["| model | accuracy | correct / total | prompting |", "| --- | --- | --- | --- |"]
    for model in ("base", "sft", "rl"):
        if model in metrics:
            m = metrics[model]
            lines.append(f"| {MODEL_DESCRIPTIONS[model]} | {m['accuracy']:.4f} | {m['correct']} / {m['total']} | "
                         f"{'few-shot' if m.get('few_shot') else 'zero-shot'} |")
    return lines


def collection_section(stats: dict) -> list[str]:
    lv = stats["levels"]
    leak = stats.get("hint_leak")   # absent from runs collected before hint leaks were counted
    leak_lines = [f"- hint leaks (hinted rationales naming the hint or restating the answer; not in SFT or pairs): "
                  f"{leak['count']} (rate {leak['rate']:.4f})"] if leak else []
    use = stats.get("hint_use")   # absent from runs collected before hint use was measured
    use_lines = [f"- hint use: {describe_hint_use(use)}"] if use else []
    lines = [f"- questions: {stats['questions']}, rationales judged: {stats['rationales']}",
             f"- levels: high {lv['high']}, mid {lv['mid']}, low {lv['low']}", *leak_lines, *use_lines,
             f"- questions with at least one high rationale: {stats['questions_with_high']} "
             f"(yield {stats['yield_per_question']:.4f}); high per question {stats['high_per_question_mean']:.2f}",
             f"- SFT examples: {stats['sft_examples']}; preference pairs: {stats['pairs']} "
             f"(train {stats['pairs_train']}, held-out {stats['pairs_heldout']})", *_rm_question_lines(stats), "",
             "| source | high | mid | low |", "| --- | --- | --- | --- |"]
    for source, counts in sorted(stats["levels_by_source"].items()):
        lines.append(f"| {source} | {counts['high']} | {counts['mid']} | {counts['low']} |")
    return lines


def describe_hint_use(hint_use: dict) -> str:
    """One line for reports: the shares right per source and the gold-hint lift, read plainly."""
    rates = ", ".join(f"{src} {v['rate']:.2f} ({v['high']}/{v['n']})" for src, v in hint_use["right_rate"].items())
    lift = hint_use.get("gold_lift")
    if lift is None:
        return f"share of rationales reaching the gold answer: {rates}"
    lo, hi = lift["ci95"]
    reading = ("no measurable effect of the hint (the interval holds zero): hinted rationales look like free "
               "samples, and mid and low rationales may not differ" if lo <= 0 <= hi else
               "the gold hint raises it: the model uses the hint" if lo > 0 else "the gold hint lowers it")
    return (f"share of rationales reaching the gold answer: {rates}; gold-hinted minus free "
            f"{lift['points']:+.1f} points [{lo:+.1f}, {hi:+.1f}]: {reading}")


def _rm_question_lines(stats: dict) -> list[str]:
    """The reward model's own questions (generate.rm_questions): not in the counts above but in the pairs."""
    rq = stats.get("rm_questions")
    if not rq:
        return []
    lv = rq["levels"]
    return [f"- the reward model's own questions ({rq['split']} split; no SFT, no RL): {rq['questions']}, "
            f"rationales judged {rq['rationales']} (high {lv['high']}, mid {lv['mid']}, low {lv['low']}); "
            f"their pairs {rq['pairs']} (train {rq['pairs_train']}, held-out {rq['pairs_heldout']}), "
            f"counted in the preference pairs above"]


def rm_section(rm: dict) -> list[str]:
    acc = rm.get("heldout_accuracy")
    lines = [f"- held-out pairwise accuracy: {acc:.4f} ({rm.get('heldout_pairs', 0)} pairs)" if acc is not None
             else "- held-out pairwise accuracy: n/a (no held-out pairs)",
             f"- train pairwise accuracy: {rm['train_accuracy']:.4f}" if rm.get("train_accuracy") is not None else ""]
    lines = [line for line in lines if line]
    per_level = rm.get("levels") or {}
    if per_level:
        lines += ["", "RM score per quality level (unique completions of all pairs):", "",
                  "| level | n | mean score | std |", "| --- | --- | --- | --- |"]
        for key, name in (("2", "high"), ("1", "mid"), ("0", "low")):
            if key in per_level:
                s = per_level[key]
                lines.append(f"| {name} | {s['n']} | {s['mean']:.4f} | {s['std']:.4f} |")
    return lines


def rl_section(log: list[dict]) -> list[str]:
    if not log:
        return ["- no RL steps logged"]
    first, last = log[0], log[-1]
    keys = [k for k in ("reward_mean", "rm_score_mean", "correct_mean", "kl_mean", "response_length_mean")
            if k in last]
    lines = ["| metric | first step | last step |", "| --- | --- | --- |"]
    lines += [f"| {k} | {first.get(k, float('nan')):.4f} | {last[k]:.4f} |" for k in keys]
    return [f"- steps: {len(log)}", ""] + lines


def report(run: Run) -> Path:
    parts = [f"# smlearn report: {run.root.name}", "",
             f"- model: `{run.config.model.name_or_path}`", f"- data: `{run.config.data.source}`"]
    r = run.config.round
    if r.generator:
        parts += [f"- round {r.index}: rationales generated and judged by `{r.generator}` "
                  f"(fingerprint {r.generator_fingerprint}); SFT starts from "
                  f"{f'`{r.init}`' if r.init else 'the base model'}"]
    parts += [""]
    metrics = _maybe_json(run.path("eval", "metrics.json"))
    parts += ["## Test accuracy (greedy chain of thought)", ""]
    parts += accuracy_table(metrics) if metrics else ["(not evaluated yet)"]
    stats = _maybe_json(run.path("collect_stats.json"))
    parts += ["", "## Rationale collection", ""] + (collection_section(stats) if stats else ["(not collected yet)"])
    rm = _maybe_json(run.path("rm", "metrics.json"))
    parts += ["", "## Reward model", ""] + (rm_section(rm) if rm else ["(not trained yet)"])
    log_path = run.path("rl", "log.jsonl")
    parts += ["", f"## Reinforcement learning ({run.config.rl.algorithm})", ""]
    parts += rl_section(read_jsonl(log_path)) if log_path.exists() else ["(not trained yet)"]
    path = run.path("report.md")
    write_text(path, "\n".join(parts) + "\n")
    run.mark_done("report", {"path": str(path)})
    return path


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


_SHORT = {"base": "base", "sft": "SFT", "rl": "SML"}


def rounds_report(out: Path, summary: dict) -> Path:
    """<out>/report.md of a run of several rounds: per round, the models it started from, the rationale yield,
    the RM's held-out pairwise accuracy and each model's test accuracy ("—": not there yet)."""
    rows = summary["per_round"]
    models = [m for m in ("base", "sft", "rl") if any(m in r["accuracy"] for r in rows)]
    lines = [f"# smlearn report: {out.name} ({summary['rounds']} rounds, rounds_init: {summary['rounds_init']})", "",
             f"- model: `{summary['model']}`", "- each round's rationales are generated and judged by the model in "
             "its *rationales by* column; its training starts from the one in *training from*", "",
             "| round | rationales by | training from | yield | SFT examples | pairs | RM held-out accuracy | "
             + " | ".join(f"{_SHORT[m]} test accuracy" for m in models) + " |",
             "| --- " * (7 + len(models)) + "|"]
    for r in rows:
        cells = [r["round"], f"`{r['generator']}`", f"`{r['init']}`", _cell(r["yield_per_question"]),
                 _cell(r["sft_examples"]), _cell(r["pairs"]), _cell(r["rm_heldout_accuracy"]),
                 *(_cell(r["accuracy"].get(m)) for m in models)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Each round's own report: " + ", ".join(f"[round {r['round']}]({r['dir']}/report.md)" for r in rows)]
    path = out / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
