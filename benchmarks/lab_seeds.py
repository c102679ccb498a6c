"""Reasoning lab over several seeds: mean ± sd test accuracy per stage and task (a benchmark, not a test).

    python benchmarks/lab_seeds.py --seeds 0 1 2 --out runs/lab-seeds [lab.n_train=300 ...]

Each seed builds its own data and base model (cached under $SMLEARN_CACHE), runs
the whole lab, and the table is printed and written to <out>/seeds.md and
<out>/seeds.json. Numbers come from each run's lab_metrics.json.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from smlearn.evaluate.intervals import bootstrap_difference, seeds_mean_text
from smlearn.io import read_json, read_jsonl, write_json, write_text
from smlearn.lab.analysis import (heldout_level_gaps, hint_use_by_task, judged_items,
                                  step_fraction_gaps_within_question)
from smlearn.lab.default import run_lab
from smlearn.lab.report import format_level_gaps
from smlearn.rundir import Run

STAGES = ["base", "sft", "rl", "oracle"]


def table(per_seed: dict[int, dict]) -> str:
    tasks = next(iter(per_seed.values()))["tasks"] + ["all"]
    lines = ["| stage | " + " | ".join(tasks) + " |", "| --- |" + " --- |" * len(tasks)]
    for stage in STAGES:
        cells = []
        for task in tasks:
            values = [m["accuracy"][stage][task]["accuracy"] for m in per_seed.values() if stage in m["accuracy"]]
            if not values:
                cells.append("n/a")
                continue
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {sd:.4f}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _level_means(levels: dict | None, digits: int = 3) -> str:
    if not levels:
        return "n/a"
    return " / ".join(f"{levels[k]['mean']:.{digits}f}" if k in levels and levels[k].get("mean") is not None
                      else "n/a" for k in ("2", "1", "0"))


def _ci(found: dict | None) -> str:
    """' [lo, hi]': the held-out accuracy's 95 % CI, questions resampled (lab_metrics' heldout_interval)."""
    return f" [{found['ci'][0]:.2f}, {found['ci'][1]:.2f}]" if found else ""


def _ordered(levels: dict | None) -> bool | None:
    """high > mid > low on these level means; None when a level has no score."""
    levels = levels or {}
    if not all(k in levels and levels[k].get("mean") is not None for k in ("2", "1", "0")):
        return None
    return levels["2"]["mean"] > levels["1"]["mean"] > levels["0"]["mean"]


def _get(found: dict | None, *path: str) -> Any:
    """found[path[0]][path[1]]..., None where a key is missing or a value on the way is None."""
    for key in path:
        found = (found or {}).get(key)
    return found


def mid_low_over_seeds(per_seed: dict[int, dict]) -> str:
    """mid − low over the seeds (mean, 95 % t-interval, seeds as the unit): the RM's held-out gap pooled and
    inside questions, and the verifier's valid-step share inside questions (every judged question)."""
    paths = {"RM held-out score, pooled": ("heldout_level_gaps", "1-0", "gap"),
             "RM held-out score, within question": ("heldout_level_gaps", "1-0", "within_question", "gap"),
             "verifier valid-step share, within question, all tasks":
                 ("step_fraction_gaps_within_question", "all", "1-0", "gap")}
    rows = {name: [_get(m.get("rm"), *path) for m in per_seed.values()] for name, path in paths.items()}
    lines = []
    for name, values in rows.items():
        values = [v for v in values if v is not None]
        if values:
            fmt = "+.3f" if name.startswith("verifier") else "+.2f"
            lines.append(f"- mid − low, {name}: " + " ".join(seeds_mean_text(values, fmt)) + f" over {len(values)} seeds"
                         f" (above zero on {sum(v > 0 for v in values)})")
    return "\n".join(lines)


def _within(rm: dict, gap: str) -> bool | None:
    """Whether the held-out gap inside questions (heldout_level_gaps' within_question) is above zero."""
    found = _get(rm, "heldout_level_gaps", gap, "within_question", "gap")
    return None if found is None else found > 0


def _step_share(rm: dict) -> dict | None:
    """The step verifier's mean valid-step share per level over every judged rationale (lab_metrics'
    validity_by_level), as level -> {"mean"}, the shape `_ordered` and `_level_means` read."""
    by_level = rm.get("validity_by_level")
    if not by_level:
        return None
    return {k: {"mean": v.get("step_fraction_mean"), "n": v.get("n")} for k, v in by_level.items()}


def per_seed_table(per_seed: dict[int, dict]) -> str:
    """Per seed: SML - SFT (arithmetic, all), RM held-out pairwise accuracy (per level pair), RM mean score
    high / mid / low on held-out and on all scored completions, RL's held-out greedy accuracy first -> last."""
    lines = ["| seed | SML − SFT arithmetic | SML − SFT all | RM held-out accuracy [95 % CI] (pairs; 2>0, 2>1, 1>0) | "
             "RM held-out by task (pairs) | RM mean high / mid / low, held-out | same, all | RL held-out greedy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, m in per_seed.items():
        acc = m["accuracy"]
        delta = {t: acc["rl"][t]["accuracy"] - acc["sft"][t]["accuracy"] for t in ("arithmetic", "all")}
        rm = m.get("rm") or {}
        by = rm.get("heldout_accuracy_by_levels") or {}
        pairs = ", ".join(f"{by[k]['accuracy']:.2f}" if k in by and by[k]["accuracy"] is not None else "n/a"
                          for k in ("2>0", "2>1", "1>0"))
        by_task = rm.get("heldout_accuracy_by_task") or {}
        tasks = ", ".join(f"{t} {v['accuracy']:.2f} ({v['n']})" for t, v in by_task.items()) or "n/a"
        held = rm.get("heldout_accuracy")
        n_held = rm.get("heldout_pairs")
        rl = m.get("rl") or {}
        ev = rl.get("eval_accuracy") or {}
        first = (rl.get("initial_eval_accuracy") or {}).get("first")
        greedy = f"{first:.3f} → {ev['last']:.3f}" if first is not None and ev else "n/a"
        lines.append(f"| {seed} | {delta['arithmetic']:+.2f} | {delta['all']:+.4f} | "
                     f"{held:.3f}{_ci(rm.get('heldout_interval'))} ({n_held}; {pairs}) | {tasks} | {_level_means(rm.get('heldout_levels'))} | "
                     f"{_level_means(rm.get('levels'))} | {greedy} |" if held is not None else
                     f"| {seed} | {delta['arithmetic']:+.2f} | {delta['all']:+.4f} | n/a | n/a | n/a | n/a | {greedy} |")
    return "\n".join(lines)


def step_fraction_table(per_seed: dict[int, dict]) -> str:
    """Per seed: the step verifier's share of valid steps in the judged rationales, high / mid / low, per task.

    A reward model reading the text can rank two levels only as far as their rationales differ; where mid and
    low have the same share of valid steps, "mid above low" is not a property of the text. The all-task columns
    pool every judged rationale as the RM's level means pool its scores, so the tasks' mix weighs in the same way
    (objects' right answers are mostly guesses with few valid steps). The last column takes mid − low inside each
    question holding both, which no mix of questions or tasks moves."""
    tasks = next(iter(per_seed.values()))["tasks"]
    lines = ["| seed | " + " | ".join(f"{t}: high / mid / low" for t in tasks) + " | all tasks: high / mid / low | "
             "all tasks: mid − low | mid − low within question [95 % CI]: "
             + "; ".join(tasks + ["all"]) + " |", "| --- |" + " --- |" * (len(tasks) + 3)]
    for seed, m in per_seed.items():
        by_task = (m.get("rm") or {}).get("step_fraction_by_task_level") or {}
        cells = [" / ".join(f"{by_task[t][k]['mean']:.2f}" if t in by_task and k in by_task[t] else "n/a"
                            for k in ("2", "1", "0")) for t in tasks]
        share = _step_share(m.get("rm") or {}) or {}
        gap = (f"{share['1']['mean'] - share['0']['mean']:+.3f}"
               if all(share.get(k, {}).get("mean") is not None for k in ("1", "0")) else "n/a")
        within = (m.get("rm") or {}).get("step_fraction_gaps_within_question") or {}
        paired = "; ".join("n/a" if not (g := (within.get(t) or {}).get("1-0")) else
                           f"{g['gap']:+.3f} [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}]" for t in tasks + ["all"])
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {_level_means(share, digits=3)} | {gap} | {paired} |")
    return "\n".join(lines)


def hint_use_table(per_seed: dict[int, dict], tasks: list[str]) -> str:
    """Per seed and task: the share of judged rationales reaching the gold answer, gold-hinted / free /
    wrong-hinted, and gold-hinted minus free in points with its 95 % interval (questions resampled;
    lab_metrics' hint_use). Where the interval holds zero there is
    no measurable hint use in that task, and its mid and low rationales may not differ."""
    lines = ["| seed | " + " | ".join(f"{t}: gold / free / wrong; gold − free [95 % CI]" for t in tasks) + " |",
             "| --- |" + " --- |" * len(tasks)]
    for seed, m in per_seed.items():
        by_task = m.get("hint_use")
        if not by_task:
            continue
        cells = []
        for t in tasks:
            use = by_task.get(t) or {"right_rate": {}, "gold_lift": None}
            rate = use["right_rate"]
            lift = use["gold_lift"]
            cells.append(" / ".join(f"{rate[s]['rate']:.2f}" if s in rate else "n/a" for s in ("gold", "free", "wrong"))
                         + ("; n/a" if lift is None else
                            f"; {lift['points']:+.1f} [{lift['ci95'][0]:+.1f}, {lift['ci95'][1]:+.1f}]"))
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def level_means_by_task_table(per_seed: dict[int, dict]) -> str:
    """Per seed: the RM's mean score high / mid / low on held-out questions, per task (n in brackets), and
    whether high > mid > low holds overall and within each task that has all three levels, and the overall
    gaps high − mid and mid − low with their 95 % CIs (lab_metrics' heldout_level_gaps)."""
    tasks = next(iter(per_seed.values()))["tasks"]
    lines = ["| seed | " + " | ".join(f"{t}: high / mid / low (n)" for t in tasks)
             + " | order holds: overall; per task | held-out gaps [95 % CI, questions resampled] "
             "| mid − low = within tasks + task mix |",
             "| --- |" + " --- |" * (len(tasks) + 3)]

    for seed, m in per_seed.items():
        rm = m.get("rm") or {}
        by_task = rm.get("heldout_levels_by_task") or {}
        cells = []
        for t in tasks:
            lv = by_task.get(t) or {}
            cells.append(f"{_level_means(lv, digits=2)} (" + "/".join(str(lv[k]["n"]) if k in lv else "0"
                                                                    for k in ("2", "1", "0")) + ")")
        overall = _ordered(rm.get("heldout_levels"))
        per_task = ", ".join(f"{t} {'yes' if o else 'no'}" for t in tasks
                             if (o := _ordered(by_task.get(t))) is not None)
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {'n/a' if overall is None else ('yes' if overall else 'no')}; "
                     f"{per_task or 'n/a'} | {format_level_gaps(rm.get('heldout_level_gaps'))} | "
                     f"{_mid_low_split(rm)} |")
    return "\n".join(lines)


def _mid_low_split(rm: dict) -> str:
    """The held-out mid − low gap of pooled means, split in two: within tasks (each mid rationale against the low
    ones of its own task, weighted by the tasks' share of mid rationales) and the rest, which only the tasks' mix
    makes (mid and low drawn from the tasks in other proportions, on task scales that differ)."""
    levels, by_task = rm.get("heldout_levels") or {}, rm.get("heldout_levels_by_task") or {}
    if not all(levels.get(k, {}).get("mean") is not None for k in ("1", "0")):
        return "n/a"
    both = {t: lv for t, lv in by_task.items() if all(lv.get(k, {}).get("mean") is not None for k in ("1", "0"))}
    n_mid = sum(lv["1"]["n"] for lv in by_task.values() if "1" in lv)
    if not both or not n_mid:
        return "n/a"
    gap = levels["1"]["mean"] - levels["0"]["mean"]
    within = sum(lv["1"]["n"] / n_mid * (lv["1"]["mean"] - lv["0"]["mean"]) for lv in both.values())
    return f"{gap:+.2f} = {within:+.2f} {gap - within:+.2f}"


def over_seeds_table(per_seed: dict[int, dict]) -> str:
    """Per task and over all tasks: mean accuracy over seeds of SFT, SML and the oracle, and SML − SFT with a
    95 % t-interval over the per-seed differences (seeds as the unit), then each seed's difference."""
    tasks = next(iter(per_seed.values()))["tasks"] + ["all"]
    lines = ["| task | SFT | SML | oracle | SML − SFT, points, mean [95 % t-CI over seeds] | per seed |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    for task in tasks:
        def acc(stage: str) -> list[float]:
            return [m["accuracy"][stage][task]["accuracy"] for m in per_seed.values() if stage in m["accuracy"]]
        diffs = [100 * (m["accuracy"]["rl"][task]["accuracy"] - m["accuracy"]["sft"][task]["accuracy"])
                 for m in per_seed.values()]
        mean, interval = seeds_mean_text(diffs)
        ci = f"**{mean}** {interval}"
        means = " | ".join(f"{statistics.fmean(v):.4f}" if (v := acc(stage)) else "n/a"
                           for stage in ("sft", "rl", "oracle"))
        lines.append(f"| {task} | {means} | {ci} | " + " / ".join(f"{d:+.1f}" for d in diffs) + " |")
    return "\n".join(lines)


def rm_targets(per_seed: dict[int, dict], threshold: float = 0.70) -> str:
    """How many seeds meet the RM targets: held-out pairwise accuracy >= threshold, and mean score
    high > mid > low on the held-out questions' rationales and on all scored ones; the misses named."""
    def count(name: str, passed: dict[int, bool | None]) -> str:
        known = {s: p for s, p in passed.items() if p is not None}
        misses = [str(s) for s, p in known.items() if not p]
        return (f"- {name}: **{sum(known.values())} of {len(known)}** seeds"
                + (f" (misses: seed {', '.join(misses)})" if misses else ""))
    rms = {s: m.get("rm") or {} for s, m in per_seed.items()}
    held = {s: (None if rm.get("heldout_accuracy") is None else rm["heldout_accuracy"] >= threshold)
            for s, rm in rms.items()}
    return "\n".join([count(f"RM held-out pairwise accuracy ≥ {threshold:.2f}", held),
                      count("RM mean score high > mid > low, held-out questions",
                            {s: _ordered(rm.get("heldout_levels")) for s, rm in rms.items()}),
                      count("RM mean score high > mid > low, every scored rationale",
                            {s: _ordered(rm.get("levels")) for s, rm in rms.items()}),
                      count("RM mean score mid > low within each held-out question (mean over the questions "
                            "that hold both)", {s: _within(rm, "1-0") for s, rm in rms.items()}),
                      count("for reference, the step verifier's valid-step share high > mid > low, every judged "
                            "rationale (the lab's ground truth of rationale quality, not the RM)",
                            {s: _ordered(_step_share(rm)) for s, rm in rms.items()})])


def _correct(run_dir: Path, model: str) -> dict[str, float] | None:
    path = run_dir / "eval" / model / "predictions.jsonl"
    return {r["id"]: float(bool(r["correct"])) for r in read_jsonl(path)} if path.exists() else None


def difference_table(out: Path, seeds: list[int], tasks: list[str], a: str = "rl", b: str = "sft") -> str:
    """SML − SFT per task and over all tasks, mean over seeds, with a 95 % CI from a two-level bootstrap
    (seeds, then questions; paired: both models on the same questions of a seed)."""
    loaded = [(_correct(out / f"seed{seed}", a), _correct(out / f"seed{seed}", b)) for seed in seeds]
    if any(ca is None or cb is None for ca, cb in loaded):
        return "(no per-question predictions: the paired CI is not computed)"
    cells = []
    for task in tasks + ["all"]:
        va, vb = [], []
        for ca, cb in loaded:
            ids = sorted(i for i in ca if i in cb and (task == "all" or i.split("-")[0] == task))
            va.append([ca[i] for i in ids])
            vb.append([cb[i] for i in ids])
        try:
            point, lo, hi = bootstrap_difference(va, vb)
        except ValueError:       # seeds with different numbers of test questions
            cells.append("n/a")
            continue
        cells.append(f"{100 * point:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    return "\n".join(["| SML − SFT, points [95 % CI] | " + " | ".join(tasks + ["all"]) + " |",
                      "| --- |" + " --- |" * (len(tasks) + 1), "| " + f"seeds {', '.join(map(str, seeds))} | "
                      + " | ".join(cells) + " |"])


def with_current_analysis(run_dir: Path, metrics: dict) -> dict:
    """A run analysed before hint use and the within-question level gaps were measured gets them computed
    from its judged.jsonl and rm/scores.jsonl by the functions the analysis runs (hint_use_by_task,
    heldout_level_gaps, step_fraction_gaps_within_question); the other metrics are as the run wrote them."""
    judged_path = run_dir / "judged.jsonl"
    if metrics.get("hint_use") is None and judged_path.exists():
        metrics["hint_use"] = hint_use_by_task(read_jsonl(judged_path))
    rm = metrics.get("rm")
    if not rm:
        return metrics
    run = Run.open(run_dir)
    gaps = rm.get("heldout_level_gaps")
    if gaps and any(g is not None and "within_question" not in g for g in gaps.values()):
        rm["heldout_level_gaps"] = heldout_level_gaps(run)
    if "step_fraction_gaps_within_question" not in rm and (items := judged_items(run)):
        rm["step_fraction_gaps_within_question"] = step_fraction_gaps_within_question(items)
    return metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/lab-seeds")
    p.add_argument("--summarize-only", action="store_true",
                   help="only build the tables from the finished runs in <out>/seed<N> (e.g. runs made elsewhere)")
    p.add_argument("overrides", nargs="*", help="lab.* and run-config overrides for every seed")
    args = p.parse_args()
    per_seed, seconds = {}, {}
    for seed in args.seeds:
        t0 = time.time()
        out = Path(args.out) / f"seed{seed}"
        if not args.summarize_only:
            run_lab(out, [f"lab.seed={seed}", f"generate.seed={seed}", f"sft.seed={seed}", f"rm.seed={seed}",
                          f"rl.seed={seed}", *args.overrides])
        per_seed[seed] = with_current_analysis(out, read_json(out / "lab_metrics.json"))
        seconds[seed] = round(time.time() - t0, 1)
    tasks = next(iter(per_seed.values()))["tasks"]
    md = (f"Seeds {args.seeds}; test accuracy mean ± sd over seeds (n per task per seed: "
          f"{next(iter(per_seed.values()))['accuracy']['base']['all']['n']} in all)\n\n{table(per_seed)}\n\n"
          f"{difference_table(Path(args.out), args.seeds, next(iter(per_seed.values()))['tasks'])}\n\n"
          f"Over the seeds (seeds as the unit):\n\n{over_seeds_table(per_seed)}\n\n{rm_targets(per_seed)}\n"
          f"{mid_low_over_seeds(per_seed)}\n\n"
          f"{per_seed_table(per_seed)}\n\nValid-step fraction of the judged rationales (step verifier), "
          f"per task and level:\n\n{step_fraction_table(per_seed)}\n\nRM mean score on held-out questions, per task "
          f"and level:\n\n{level_means_by_task_table(per_seed)}\n\nHint use: share of judged rationales reaching the gold "
          f"answer by source, per task:\n\n{hint_use_table(per_seed, tasks)}\n")
    write_text(Path(args.out) / "seeds.md", md)
    write_json(Path(args.out) / "seeds.json", {"seeds": args.seeds, "seconds": seconds,
                                               "accuracy": {s: m["accuracy"] for s, m in per_seed.items()}})
    print(md)


if __name__ == "__main__":
    main()
