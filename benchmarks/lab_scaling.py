"""How the lab pipeline's time grows with the number of training questions (a benchmark, not a test).

    python benchmarks/lab_scaling.py --base-questions 25 --scales 1 2 4 --out runs/lab-scaling

Runs the reasoning lab with lab.n_train = base × scale per task (the base model
is pretrained once and cached; it does not depend on n_train), then prints the
seconds of each stage per scale and each stage's time per training question,
which should stay flat if the stage is linear in the dataset size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from smlearn.io import read_json, write_json, write_text
from smlearn.lab.default import run_lab

STAGES = ["generate", "collect", "sft", "rm", "rl"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-questions", type=int, default=25, help="training questions per task at scale 1")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", default="runs/lab-scaling")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    rows = {}
    for scale in args.scales:
        n = args.base_questions * scale
        out = Path(args.out) / f"x{scale}"
        run_lab(out, [f"lab.n_train={n}", *args.overrides])
        manifest = read_json(out / "manifest.json")
        rows[scale] = {"questions": n * 3, **{s: manifest[s]["summary"].get("seconds") for s in STAGES}}
    lines = ["| scale | training questions | " + " | ".join(STAGES) + " | s per question (generate, collect, sft, rm) |",
             "| --- | --- |" + " --- |" * (len(STAGES) + 1)]
    for scale, r in rows.items():
        per_q = ", ".join(f"{r[s] / r['questions']:.3f}" for s in STAGES[:4])
        lines.append(f"| {scale}x | {r['questions']} | " + " | ".join(f"{r[s]:.1f}" for s in STAGES) + f" | {per_q} |")
    table = "\n".join(lines) + "\n\nPPO runs a fixed number of steps (rl.steps), so its time does not grow with the dataset.\n"
    write_text(Path(args.out) / "scaling.md", table)
    write_json(Path(args.out) / "scaling.json", rows)
    print(table)


if __name__ == "__main__":
    main()
