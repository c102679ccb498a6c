"""Registry of the reasoning-lab task families and the worked-solution corpus builder.

    family = get_task("arithmetic")
    train = family.generate(1000, seed=0, split="train")
    report = family.verify(train[0], model_rationale)
    corpus = build_corpus("arithmetic", 20_000, seed=0,
                          flaw_rates={"slip": 0.1, "misc_give_adds": 0.3})

The corpus is what a tiny model is pretrained on: worked solutions, some with
planted flaws, so that the model inherits those flaws at controlled rates and
can later unlearn them by learning from its own (verified) rationales.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterator

from smlearn.errors import ConfigError, SmlearnError
from smlearn.lab import arithmetic, coins, objects
from smlearn.lab.flaws import StepReport, with_answer
from smlearn.prompts import PromptBuilder


@dataclass(frozen=True)
class TaskFamily:
    """One family's generator, verifier and flaw injector (see the family modules)."""

    name: str
    kind: str                       # answer kind: "number" | "choice" | "yes_no"
    flaws: tuple[str, ...]          # every flaw name it plants, misconceptions included
    misconceptions: tuple[str, ...]
    default_flaw_rates: dict[str, float]   # the default lab's corpus rates (lab.flaw_rates.<name>)
    generate: Callable[[int, int, str], list[dict]]
    iter_examples: Callable[..., Iterator[dict]]
    verify: Callable[[dict, str], StepReport]
    flawed_rationale: Callable[[dict, random.Random, str], tuple[str, str]]
    flaw_applies: Callable[[dict, str], bool]

    @classmethod
    def from_module(cls, module: ModuleType) -> "TaskFamily":
        return cls(name=module.NAME, kind=module.KIND, flaws=tuple(module.FLAWS),
                   misconceptions=tuple(module.MISCONCEPTIONS), default_flaw_rates=dict(module.DEFAULT_FLAW_RATES),
                   generate=module.generate,
                   iter_examples=module.iter_examples, verify=module.verify,
                   flawed_rationale=module.flawed_rationale, flaw_applies=module.flaw_applies)

    def reference_solution(self, example: dict) -> str:
        """The clean worked solution: reference rationale + "The answer is X."."""
        return with_answer(example["rationale"], example["answer"])


TASKS: dict[str, TaskFamily] = {m.NAME: TaskFamily.from_module(m) for m in (arithmetic, objects, coins)}


def get_task(name: str) -> TaskFamily:
    if name not in TASKS:
        raise ConfigError(f"unknown lab task {name!r} (valid: {', '.join(TASKS)})")
    return TASKS[name]


# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------

# The lab's runs prompt zero-shot (`prompts.n_shots: 0`): its documents are these prompts and a solution.
_ZERO_SHOT = PromptBuilder(exemplars=[], n_shots=0)


def document(question: str, solution: str, hint: str | None = None) -> str:
    """A pretraining document in the pipeline's format: the prompt `PromptBuilder.cot(question)` (or
    `.hint(question, hint)`: answer-hinted rationalization), a space, the worked solution."""
    prompt = _ZERO_SHOT.cot(question) if hint is None else _ZERO_SHOT.hint(question, hint)
    return f"{prompt} {solution}"


# Draws of examples a flaw may pass over looking for one it applies to (e.g.
# a "gives away" step for misc_give_adds) before we call its rate unreachable.
_MAX_SKIPPED = 10_000


def check_flaw_rates(family: TaskFamily, flaw_rates: dict[str, float], where: str = "flaw_rates") -> None:
    """Known flaws, rates in [0, 1], at most 1 in all; errors name the rate as `<where>.<flaw>`."""
    for flaw, rate in flaw_rates.items():
        if flaw not in family.flaws:
            raise ConfigError(f"{where}.{flaw}: unknown flaw for task {family.name!r} "
                              f"(valid: {', '.join(family.flaws)})")
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{where}.{flaw}: must be in [0, 1], got {rate}")
    if sum(flaw_rates.values()) > 1.0 + 1e-9:
        raise ConfigError(f"{where}: rates sum to {sum(flaw_rates.values()):.3f} > 1 "
                          "(an example carries at most one flaw)")


def _draw_flaw(rng: random.Random, flaw_rates: dict[str, float]) -> str | None:
    """One categorical draw: flaw f with probability flaw_rates[f], None (clean) otherwise."""
    u = rng.random()
    for flaw, rate in flaw_rates.items():
        if u < rate:
            return flaw
        u -= rate
    return None


def build_corpus(family: str | TaskFamily, n: int, seed: int, flaw_rates: dict[str, float] | None = None,
                 split: str = "pretrain") -> list[dict]:
    """n worked solutions of `split` questions, each flawed with its configured rate.

    Each example independently gets flaw f with probability flaw_rates[f] (at
    most one flaw each, so the rates must sum to <= 1) and is clean otherwise.
    A flaw that needs a particular step (a misconception's trigger) is planted
    in the next question that has one, so its rate holds as configured.

    Each entry: id, family, question, rationale (ending "The answer is X."),
    answer (the X it states), gold, correct (answer == gold), flaw (name or
    None), text (the unhinted `document`, as the model reads it).
    The default split "pretrain" never shares questions with train/val/test.
    """
    fam = get_task(family) if isinstance(family, str) else family
    flaw_rates = dict(flaw_rates or {})
    check_flaw_rates(fam, flaw_rates)
    rng = random.Random(f"smlearn.lab.corpus:{fam.name}:{seed}:{split}")
    stream = fam.iter_examples(seed, split, stream="corpus")
    corpus = []
    for _ in range(n):
        flaw = _draw_flaw(rng, flaw_rates)
        example = _next_applicable(fam, stream, flaw)
        if flaw is None:
            rationale, answer = fam.reference_solution(example), example["answer"]
        else:
            rationale, answer = fam.flawed_rationale(example, rng, flaw)
        corpus.append({"id": example["id"], "family": fam.name, "question": example["question"],
                       "rationale": rationale, "answer": answer, "gold": example["answer"],
                       "correct": answer == example["answer"], "flaw": flaw,
                       "text": document(example["question"], rationale)})
    return corpus


def _next_applicable(fam: TaskFamily, stream: Iterator[dict], flaw: str | None) -> dict:
    for _ in range(_MAX_SKIPPED):
        example = next(stream)
        if flaw is None or fam.flaw_applies(example, flaw):
            return example
    raise SmlearnError(f"{fam.name}: no question found that {flaw!r} applies to")
