"""SmolLM2-135M-Instruct on real benchmarks: base few-shot CoT vs SFT vs SML, over seeds, with 95 % CIs.

    OMP_NUM_THREADS=1 python benchmarks/smollm2.py [key=value ...] --out runs/smollm2 --tasks coin_flip --seeds 0 1 2
    python benchmarks/smollm2.py --out runs/smollm2 --summarize-only          # the tables, from the runs alone
    python benchmarks/smollm2.py data.test_limit=null --base-only --out runs/smollm2    # the base model alone

For each task and seed it runs `configs/smollm2_<task>.yaml` through every stage into
<out>/<task>/seed<N>/ (generate.seed, sft.seed, rm.seed and rl.seed set to N; resumable: a stopped run
continues where it stopped, finished stages are skipped), then writes <out>/smollm2.md and
<out>/smollm2.json:

- test accuracy of base / SFT / SML: mean over seeds with a 95 % CI (a two-level bootstrap over seeds and
  test questions, `smlearn.evaluate.intervals`; with one seed, the Wilson interval), and per seed;
- SML − SFT and SFT − base: the paired difference with its 95 % CI (the same questions, the same seeds);
- the collection statistics (rationales per level, yield, SFT examples, pairs), the reward model's held-out
  pairwise accuracy and its number of pairs, and the wall time of every stage;
- with `rounds=2` (or more), one row per round: round k's rationales were written by round k-1's model
  (smlearn.rounds), so "SML, round 2" against "SML, round 1" is what another round adds.

Every number is read from the run directories (manifest.json, eval/*/predictions.jsonl, rm/metrics.json),
never typed in. `key=value` overrides apply to every task and seed (e.g. data.train_limit=200).

The issue-sized experiment (>= 200 training questions, the full test split, 3 seeds, RL sized as in the lab:
GRPO on the engine with thousands of rollouts) is a GPU job; see docs/smollm2.md, "At scale".
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import smlearn
from smlearn import pipeline
from smlearn.config import load_config
from smlearn.evaluate.intervals import bootstrap_difference, bootstrap_mean, wilson
from smlearn.io import read_json, read_jsonl, write_json, write_text
from smlearn.rundir import Run

TASKS = {"coin_flip": "smollm2_coin_flip.yaml", "last_letter": "smollm2_last_letter.yaml",
         "multiarith": "smollm2_multiarith.yaml", "commonsense_qa": "smollm2_commonsense_qa.yaml",
         "strategy_qa": "smollm2_strategy_qa.yaml"}
STAGES = {"base": "base", "sft": "SFT", "rl": "SML"}
TIMED_STAGES = ["generate", "collect", "sft", "rm", "rl", "eval"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {cpu})"
    return f"{device}, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"


def seed_overrides(seed: int) -> list[str]:
    return [f"generate.seed={seed}", f"sft.seed={seed}", f"rm.seed={seed}", f"rl.seed={seed}"]


def correctness(run_dir: Path, stage: str) -> dict[str, float]:
    """Question id -> 1.0 / 0.0 for one evaluated model of one run."""
    return {str(r["id"]): float(bool(r["correct"]))
            for r in read_jsonl(run_dir / "eval" / stage / "predictions.jsonl")}


def summarize_seed(run_dir: Path) -> dict:
    """Everything the tables need, read from one finished run directory."""
    manifest = read_json(run_dir / "manifest.json")
    accuracy = read_json(run_dir / "eval" / "metrics.json")
    rm = read_json(run_dir / "rm" / "metrics.json")
    collect = manifest["collect"]["summary"]
    return {
        "accuracy": {s: {"accuracy": m["accuracy"], "correct": m["correct"], "n": m["total"]}
                     for s, m in accuracy.items()},
        "train_questions": manifest["generate"]["summary"]["questions"],
        "collect": {k: collect[k] for k in ("rationales", "high", "mid", "low", "sft_examples", "pairs",
                                            "yield_per_question")},
        "rm_heldout_accuracy": rm["heldout_accuracy"],
        "rm_heldout_pairs": rm["heldout_pairs"],
        "rl_steps": manifest["rl"]["summary"].get("steps"),
        "rl_rollouts": manifest["rl"]["summary"].get("rollouts"),
        "seconds": {**{s: manifest[s]["summary"].get("seconds") for s in TIMED_STAGES if s != "eval"},
                    "eval": sum(m.get("seconds", 0.0) for m in accuracy.values())},
    }


def run_dirs(task_dir: Path, round_k: int | None = None) -> dict[int, Path]:
    """Seed -> its finished run directory (of round `round_k` in a run of several rounds)."""
    out = {}
    for d in task_dir.glob("seed*"):
        run_dir = d if round_k is None else d / f"round-{round_k}"
        if d.name[4:].isdigit() and (run_dir / "eval" / "metrics.json").exists():
            out[int(d.name[4:])] = run_dir
    return dict(sorted(out.items()))


def rounds_in(task_dir: Path) -> list[int]:
    """The rounds finished by every seed of a task (runs with `rounds` > 1 keep one round-k/ folder each)."""
    found = {int(p.name[6:]) for p in task_dir.glob("seed*/round-*") if p.name[6:].isdigit()}
    seeds = len(list(task_dir.glob("seed*")))
    return sorted(k for k in found if len(run_dirs(task_dir, k)) == seeds)


def stage_vectors(dirs: list[Path], stage: str) -> list[list[float]]:
    """Per run directory (seed), 1.0 / 0.0 per test question of one model, questions in one order."""
    maps = [correctness(d, stage) for d in dirs]
    ids = sorted(set.intersection(*(set(m) for m in maps)))
    if any(len(m) != len(ids) for m in maps):
        raise SystemExit(f"{dirs[0].parent.parent}: the seeds were evaluated on different test questions ({stage})")
    return [[m[i] for i in ids] for m in maps]


def summarize_task(task_dir: Path, round_k: int | None = None) -> dict | None:
    """Per seed (every finished seed<N>/ folder, or its round-k/) and across seeds: accuracy with CIs, paired
    differences."""
    found = run_dirs(task_dir, round_k)
    if not found:
        return None
    seeds, dirs = list(found), list(found.values())
    per_seed = {s: summarize_seed(d) for s, d in zip(seeds, dirs)}
    vectors = {stage: stage_vectors(dirs, stage) for stage in STAGES}
    accuracy = {}
    for stage, v in vectors.items():
        point, lo, hi = bootstrap_mean(v)
        if len(v) == 1:
            lo, hi = wilson(int(sum(v[0])), len(v[0]))
        accuracy[stage] = {"mean": point, "ci95": [lo, hi], "n_questions": len(v[0]),
                           "sd_over_seeds": statistics.stdev([sum(x) / len(x) for x in v]) if len(v) > 1 else None,
                           "per_seed": [sum(x) / len(x) for x in v]}
    differences = {}
    for a, b in (("rl", "sft"), ("sft", "base"), ("rl", "base")):
        point, lo, hi = bootstrap_difference(vectors[a], vectors[b])
        differences[f"{a}-{b}"] = {"mean": point, "ci95": [lo, hi]}
    return {"seeds": seeds, "accuracy": accuracy, "differences": differences, "per_seed": per_seed}


def base_accuracy(task: str, out: Path, overrides: list[str]) -> dict:
    """Few-shot CoT accuracy of the base model alone on the test split (no training): the first measurement
    of a task, to pick tasks where the base model is not at zero. Into <out>/<task>/base/ (resumable)."""
    run_dir = out / task / "base"
    if not (run_dir / "eval" / "base" / "predictions.jsonl").exists():
        config = load_config(CONFIGS / TASKS[task], [*overrides, "eval.stages=[base]"])
        Run.create(run_dir, config)
        pipeline.evaluate(run_dir, ["base"])
    m = read_json(run_dir / "eval" / "metrics.json")["base"]
    lo, hi = wilson(m["correct"], m["total"])
    return {"accuracy": m["accuracy"], "correct": m["correct"], "n": m["total"], "ci95": [lo, hi],
            "seconds": m.get("seconds")}


def base_table(results: dict[str, dict]) -> str:
    lines = ["| task | base few-shot CoT [95 % Wilson CI] | correct / test questions | seconds |",
             "| --- | --- | --- | --- |"]
    for task, r in results.items():
        lo, hi = r["ci95"]
        lines.append(f"| {task} | {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {r['correct']}/{r['n']} | "
                     f"{r['seconds'] or 0:.0f} |")
    return "\n".join(lines)


def _ci(cell: dict) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def _signed_ci(cell: dict) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def table(results: dict[str, dict]) -> str:
    lines = ["| task | seeds | test q | base | SFT | SML | SML − SFT | SFT − base |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, r in results.items():
        a, d = r["accuracy"], r["differences"]
        lines.append(f"| {task} | {len(r['seeds'])} | {a['base']['n_questions']} | {_ci(a['base'])} | "
                     f"{_ci(a['sft'])} | {_ci(a['rl'])} | {_signed_ci(d['rl-sft'])} | {_signed_ci(d['sft-base'])} |")
    later = {task: r["differences"]["rl-rl_round1"] for task, r in results.items() if "rl-rl_round1" in r["differences"]}
    if later:
        lines += ["", "| task | SML of this round − SML of round 1 (paired, 95 % CI) |", "| --- | --- |"]
        lines += [f"| {task} | {_signed_ci(d)} |" for task, d in later.items()]
    lines += ["", "| task | seed | base | SFT | SML | train q | high / mid / low | yield | SFT ex. | pairs | "
              "RM held-out (pairs) | RL steps (rollouts) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, r in results.items():
        for seed, s in r["per_seed"].items():
            a, c = s["accuracy"], s["collect"]
            cells = [f"{a[k]['correct']}/{a[k]['n']}" for k in STAGES]
            rm = s["rm_heldout_accuracy"]
            lines.append(f"| {task} | {seed} | " + " | ".join(cells) + f" | {s['train_questions']} | "
                         f"{c['high']} / {c['mid']} / {c['low']} | {c['yield_per_question']:.3f} | "
                         f"{c['sft_examples']} | {c['pairs']} | "
                         f"{'n/a' if rm is None else f'{rm:.3f}'} ({s['rm_heldout_pairs']}) | "
                         f"{s['rl_steps']} ({s['rl_rollouts']}) |")
    lines += ["", "| task | seed | " + " | ".join(TIMED_STAGES) + " | total |",
              "| --- | --- |" + " --- |" * (len(TIMED_STAGES) + 1)]
    for task, r in results.items():
        for seed, s in r["per_seed"].items():
            secs = [s["seconds"][k] or 0.0 for k in TIMED_STAGES]
            lines.append(f"| {task} | {seed} | " + " | ".join(f"{x:.0f} s" for x in secs) + f" | {sum(secs):.0f} s |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/smollm2")
    p.add_argument("--force", action="store_true", help="redo stages whose config changed (smlearn run --force)")
    p.add_argument("--summarize-only", action="store_true",
                   help="run nothing: tabulate every finished <task>/seed<N> folder under --out")
    p.add_argument("--base-only", action="store_true",
                   help="evaluate the base model alone on each task's test split, into <out>/<task>/base/")
    p.add_argument("overrides", nargs="*", help="config overrides for every task and seed, key=value")
    args = p.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.base_only:
        base = {task: base_accuracy(task, Path(args.out), args.overrides) for task in args.tasks}
        md = f"Machine: {machine()}. Overrides: {' '.join(args.overrides) or '(none)'}.\n\n{base_table(base)}\n"
        write_text(Path(args.out) / "base.md", md)
        write_json(Path(args.out) / "base.json", {"machine": machine(), "overrides": args.overrides, "results": base})
        print(md)
        return
    if not args.summarize_only:
        for task in args.tasks:
            for seed in args.seeds:
                t0 = time.time()
                smlearn.run(CONFIGS / TASKS[task], Path(args.out) / task / f"seed{seed}",
                            overrides=[*seed_overrides(seed), *args.overrides], force=args.force)
                print(f"[smollm2] {task} seed {seed} finished in {time.time() - t0:.0f} s", flush=True)
    results = {}
    for task in args.tasks:
        task_dir = Path(args.out) / task
        rounds = rounds_in(task_dir)
        for k in rounds or [None]:
            if (r := summarize_task(task_dir, k)) is not None:
                results[task if k is None else f"{task}, round {k}"] = r
            if k is not None and k > 1:         # what round k adds: its SML model against round 1's, paired
                point, lo, hi = bootstrap_difference(stage_vectors(list(run_dirs(task_dir, k).values()), "rl"),
                                                     stage_vectors(list(run_dirs(task_dir, 1).values()), "rl"))
                r["differences"]["rl-rl_round1"] = {"mean": point, "ci95": [lo, hi]}
    overrides = "(see each run's config.yaml)" if args.summarize_only else " ".join(args.overrides) or "(none)"
    md = (f"Machine: {machine()}. Overrides: {overrides}. Accuracy: mean over seeds [95 % CI: bootstrap over "
          f"seeds and test questions; Wilson for one seed]; differences paired by seed and question.\n\n"
          f"{table(results)}\n")
    write_text(Path(args.out) / "smollm2.md", md)
    write_json(Path(args.out) / "smollm2.json", {"machine": machine(), "overrides": args.overrides,
                                                  "results": results})
    print(md)


if __name__ == "__main__":
    main()
