"""What the reward model adds: RL variants on the lab, same seeds, same rollout budget (a benchmark).

    python benchmarks/lab_seeds.py --seeds 0 1 2 --out runs/lab-seeds        # first: the SML runs
    python benchmarks/lab_ablation.py --seeds 0 1 2 --runs runs/lab-seeds --out runs/lab-ablation
    python benchmarks/lab_ablation.py --seeds 0 1 2 3 --runs runs/lab-seeds --out runs/lab-ablation --summarize-only

Each variant starts from the seed's finished lab run (its config, SFT model and reward model), redoes only
the RL stage with the variant's overrides (rl.steps x rl.rollout_batch_size rollouts, as the default) and
evaluates the RL model on the test split. Variants:

- sft:       no RL (the SFT model of the run);
- gold_only: the default RL algorithm with the gold-answer reward alone (rl.rm_weight=0: right +1, wrong -1);
- rm_only:   the default RL algorithm with the RM alone (rl.correction.enabled=false);
- sml_ppo:   PPO (ours) with the SML reward (RM + gold correction);
- sml_grpo:  GRPO (TRL) with the SML reward: the default job's own RL model.

The tables go to <out>/ablation.md and .json: test accuracy per task (mean ± sd over each variant's seeds),
then each variant minus SML-GRPO (the default job's RL), paired by seed: mean points with a 95 % Student-t
interval over the seeds both have, and each seed's difference. A variant's seeds may be a superset of
another's (e.g. gold_only on more seeds than PPO); a later call with every seed reads the finished runs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from smlearn import pipeline
from smlearn.io import read_jsonl, write_json, write_text
from smlearn.lab.analysis import accuracy_by_task
from smlearn.config import load_config
from smlearn.evaluate.intervals import seeds_mean_text

TASKS = ["arithmetic", "objects", "coins"]
VARIANTS = {"sft": None, "gold_only": ["rl.rm_weight=0"], "rm_only": ["rl.correction.enabled=false"],
            "sml_ppo": ["rl.algorithm=ppo"], "sml_grpo": []}


def variant_accuracy(source: Path, out: Path, seed: int, name: str, extra: list[str],
                     run: bool = True) -> dict | None:
    """Test accuracy per task of one variant (reusing the source run where the variant is its own); with
    run=False, None where the variant's run is not finished instead of running it."""
    stage = "sft" if VARIANTS[name] is None else "rl"
    if VARIANTS[name] is None or not extra:          # SFT, or the default job's own RL model
        rows = read_jsonl(source / "eval" / stage / "predictions.jsonl")
    else:
        target = out / f"seed{seed}" / name
        if not (target / "eval" / "rl" / "predictions.jsonl").exists():
            if not run:
                return None
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("rl", "oracle", "*.png"))
            # The source run's own config (its data, models and settings), with the variant's RL overrides: the
            # stages before RL are unchanged, so the pipeline reuses them and redoes RL and its evaluation.
            config = load_config(source / "config.yaml", [*extra, "eval.stages=[rl]"])
            pipeline.run(config, target, force=True, until="eval")
        rows = read_jsonl(target / "eval" / "rl" / "predictions.jsonl")
    acc = accuracy_by_task(rows, TASKS)
    return {task: acc[task]["accuracy"] for task in [*TASKS, "all"]}


def table(results: dict[str, dict[int, dict]]) -> str:
    cols = [*TASKS, "all"]
    lines = ["| variant | seeds | " + " | ".join(cols) + " |", "| --- | --- |" + " --- |" * len(cols)]
    for name, per_seed in results.items():
        cells = []
        for task in cols:
            values = [acc[task] for acc in per_seed.values()]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {sd:.4f}")
        lines.append(f"| {name} | {len(per_seed)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(results: dict[str, dict[int, dict]], reference: str = "sml_grpo") -> str:
    """Each variant minus the reference, paired by seed (the seeds both have): mean points [95 % t-CI over
    seeds] per task, and each seed's difference in points."""
    cols = [*TASKS, "all"]
    lines = [f"| variant − {reference}, points | seeds | " + " | ".join(cols) + " |",
             "| --- | --- |" + " --- |" * len(cols)]
    for name, per_seed in results.items():
        seeds = sorted(set(per_seed) & set(results.get(reference, {})))
        if name == reference or not seeds:
            continue
        cells = []
        for task in cols:
            diffs = [100 * (per_seed[s][task] - results[reference][s][task]) for s in seeds]
            cells.append(" ".join(seeds_mean_text(diffs)) + " (" + " / ".join(f"{d:+.0f}" for d in diffs) + ")")
        lines.append(f"| {name} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", default="runs/lab-seeds", help="folder of lab_seeds.py's runs (seed<N>/)")
    p.add_argument("--out", default="runs/lab-ablation")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=None,
                   help="RL steps for every RL variant, the default job's RL included (re-run): a smaller equal budget")
    p.add_argument("--summarize-only", action="store_true",
                   help="run nothing: the tables over the variant runs already finished under --out")
    args = p.parse_args()
    if args.steps is not None:
        for name, extra in VARIANTS.items():
            if extra is not None:
                VARIANTS[name] = [*extra, f"rl.steps={args.steps}"]
    out = Path(args.out)
    results: dict[str, dict[int, dict]] = {name: {} for name in args.variants}
    seconds: dict[str, dict[int, float]] = {name: {} for name in args.variants}
    for seed in args.seeds:
        source = Path(args.runs) / f"seed{seed}"
        if not (source / "eval" / "rl" / "predictions.jsonl").exists():
            raise SystemExit(f"{source}: no finished lab run; run benchmarks/lab_seeds.py --seeds {seed} first")
        for name in args.variants:
            t0 = time.time()
            found = variant_accuracy(source, out, seed, name, VARIANTS[name] or [], run=not args.summarize_only)
            if found is None:
                continue
            results[name][seed] = found
            if not args.summarize_only:          # a re-read takes no time: keep the runs' own timings out of it
                seconds[name][seed] = round(time.time() - t0, 1)
            print(f"[ablation] seed {seed} {name}: {json.dumps(found)}"
                  + (f" ({seconds[name][seed]} s)" if seed in seconds[name] else ""), flush=True)
    results = {name: per_seed for name, per_seed in results.items() if per_seed}
    budget = f"{args.steps} RL steps" if args.steps else "the default job's RL budget"
    md = (f"Seeds {args.seeds}; test accuracy, mean ± sd over seeds; every RL variant has the same rollout "
          f"budget ({budget})\n\n{table(results)}\n")
    if "sml_grpo" in results and len(results) > 1:
        md += (f"\nPaired by seed against SML-GRPO (the default job's RL): mean [95 % t-CI over seeds] "
               f"(per seed)\n\n{paired_table(results)}\n")
    write_text(out / "ablation.md", md)
    summary = {"seeds": args.seeds, "accuracy": results}
    if not args.summarize_only:
        summary["seconds"] = seconds
    write_json(out / "ablation.json", summary)
    print(md)


if __name__ == "__main__":
    main()
