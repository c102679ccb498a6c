"""Probe a lab base model: greedy accuracy and step validity per task, and its hinted rationalizations.

    python benchmarks/lab_probe.py [--n 60] [lab.pretrain.steps=900 lab.model.hidden_size=160 ...]

Pretrains (or reuses from $SMLEARN_CACHE) the base model for the given lab
settings, then prints per task: greedy CoT accuracy, the fraction of greedy
rationales the step verifier accepts, how often the rationale's first sentence
copies the question's numbers / names right, and the same for rationales
written with the gold answer as a hint (what SFT will learn from). This is the
calibration loop for the lab: the base model must copy and compute well enough
that its gold-hinted rationales are valid, and make learned (misconception)
errors on 20-60 % of free CoT questions.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from smlearn.generate.engine import SamplingParams, generate_texts
from smlearn.lab.analysis import verify_text
from smlearn.lab.default import ensure_base_model, split_overrides
from smlearn.lab.tasks import get_task
from smlearn.models import load_causal_lm, load_tokenizer
from smlearn.prompts import PromptBuilder
from smlearn.prompts.templates import STOP_STRINGS, split_rationale


def probe(model, tokenizer, examples: list[dict], hinted: bool, max_new_tokens: int) -> dict:
    builder = PromptBuilder(exemplars=[], n_shots=0)
    prompts = [builder.hint(e["question"], e["answer"]) if hinted else builder.cot(e["question"]) for e in examples]
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_strings=tuple(STOP_STRINGS))
    outs = generate_texts(model, tokenizer, prompts, params, batch_size=64, progress=False)
    correct = valid = first_ok = 0
    for e, out in zip(examples, outs):
        rationale, stated = split_rationale(out, builder.trigger)
        correct += stated is not None and stated.strip().upper() == e["answer"].upper()
        valid += verify_text(e, out).valid
        first_ref = e["rationale"].split(". ")[0]
        first_ok += rationale.split(". ")[0] == first_ref
    n = len(examples)
    return {"accuracy": correct / n, "valid": valid / n, "first_sentence_copied": first_ok / n, "sample": outs[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="test questions per task")
    p.add_argument("--max-new-tokens", type=int, default=150)
    p.add_argument("overrides", nargs="*", help="lab.* settings")
    args = p.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    settings, _ = split_overrides(args.overrides)
    t0 = time.time()
    folder = ensure_base_model(settings)
    print(f"base model {folder} ({time.time() - t0:.0f} s)")
    model, tokenizer = load_causal_lm(str(folder), device="cpu").eval(), load_tokenizer(str(folder))
    for task in settings.tasks:
        examples = get_task(task).generate(args.n, settings.seed, "test")
        for hinted in (False, True):
            r = probe(model, tokenizer, examples, hinted, args.max_new_tokens)
            print(f"{task:10s} {'gold-hinted' if hinted else 'free CoT   '} accuracy {r['accuracy']:.3f} "
                  f"valid {r['valid']:.3f} first-sentence copied {r['first_sentence_copied']:.3f}")
        print("   e.g.", repr(r["sample"][:300]))


if __name__ == "__main__":
    main()
