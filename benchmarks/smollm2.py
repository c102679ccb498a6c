"""SmolLM2-135M-Instruct on four real benchmarks: base few-shot CoT vs SFT vs SML (a benchmark, not a test).

    OMP_NUM_THREADS=1 python benchmarks/smollm2.py --out runs/smollm2 [--tasks coin_flip multiarith] [key=value ...]

For each task it runs `configs/smollm2_<task>.yaml` through every stage into
<out>/<task>/ (resumable: a stopped run continues where it stopped, finished
stages are skipped), then writes <out>/smollm2.md and <out>/smollm2.json: test
accuracy of base / SFT / SML with the test-set size, the collection statistics
(rationales per level, yield of questions with a high-quality rationale, SFT
examples, pairs), the reward model's held-out pairwise accuracy, and the wall
time of every stage. Every number is read from the run directories
(manifest.json, eval/metrics.json, rm/metrics.json), never typed in.

`key=value` overrides apply to every task (e.g. data.train_limit=32). Tasks
may be run in several invocations with different sizes; `--summarize-only`
then writes the table for every task folder found under <out>, from the
artifacts alone (sizes and RL steps come from each run's manifest).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import smlearn
from smlearn.io import read_json, write_json, write_text

TASKS = {"coin_flip": "smollm2_coin_flip.yaml", "last_letter": "smollm2_last_letter.yaml",
         "multiarith": "smollm2_multiarith.yaml", "commonsense_qa": "smollm2_commonsense_qa.yaml"}
TIMED_STAGES = ["generate", "collect", "sft", "rm", "rl", "eval"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {cpu})"
    return f"{device}, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"


def summarize(run_dir: Path) -> dict:
    """Everything the table needs, read from one finished run directory."""
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
        "seconds": {**{s: manifest[s]["summary"].get("seconds") for s in TIMED_STAGES if s != "eval"},
                    "eval": sum(m.get("seconds", 0.0) for m in accuracy.values())},
    }


def _acc(cell: dict) -> str:
    return f"{cell['accuracy']:.3f} ({cell['correct']}/{cell['n']})"


def table(results: dict[str, dict]) -> str:
    lines = ["| task | base | SFT | SML (RL) | train q | high / mid / low | yield | SFT ex. | pairs | RM held-out | RL steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for task, r in results.items():
        a, c = r["accuracy"], r["collect"]
        lines.append(f"| {task} | {_acc(a['base'])} | {_acc(a['sft'])} | {_acc(a['rl'])} | {r['train_questions']} | "
                     f"{c['high']} / {c['mid']} / {c['low']} | {c['yield_per_question']:.3f} | {c['sft_examples']} | "
                     f"{c['pairs']} | {r['rm_heldout_accuracy']:.3f} (n={r['rm_heldout_pairs']}) | {r['rl_steps']} |")
    lines += ["", "| task | " + " | ".join(TIMED_STAGES) + " | total |", "| --- |" + " --- |" * (len(TIMED_STAGES) + 1)]
    for task, r in results.items():
        secs = [r["seconds"][s] or 0.0 for s in TIMED_STAGES]
        lines.append(f"| {task} | " + " | ".join(f"{s:.0f} s" for s in secs) + f" | {sum(secs):.0f} s |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--out", default="runs/smollm2")
    p.add_argument("--force", action="store_true", help="redo stages whose config changed (smlearn run --force)")
    p.add_argument("--summarize-only", action="store_true",
                   help="run nothing: tabulate every finished task folder under --out")
    p.add_argument("overrides", nargs="*", help="config overrides for every task, key=value")
    args = p.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    results = {}
    for task in args.tasks:
        if args.summarize_only:
            if (Path(args.out) / task / "eval" / "metrics.json").exists():
                results[task] = summarize(Path(args.out) / task)
            continue
        t0 = time.time()
        run_dir = Path(args.out) / task
        smlearn.run(CONFIGS / TASKS[task], run_dir, overrides=args.overrides, force=args.force)
        results[task] = summarize(run_dir)
        print(f"[smollm2] {task} finished in {time.time() - t0:.0f} s", flush=True)
    overrides = "(see each run's config.yaml)" if args.summarize_only else " ".join(args.overrides) or "(none)"
    md = f"Machine: {machine()}. Overrides: {overrides}.\n\n{table(results)}\n"
    write_text(Path(args.out) / "smollm2.md", md)
    write_json(Path(args.out) / "smollm2.json", {"machine": machine(), "overrides": args.overrides,
                                                  "results": results})
    print(md)


if __name__ == "__main__":
    main()
