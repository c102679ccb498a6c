"""What every reasoning-lab family shares: flaw names, step reports, answers, splits.

The lab's families (arithmetic, objects, coins) each know how to write a clean
worked solution, how to plant flaws in it and how to check a rationale step by
step. This module holds the parts that are the same for all of them, so that
a flaw means the same thing and a check reports the same way in every family:

- the generic flaw names (`GENERIC_FLAWS`) and `FlawNotApplicable`;
- `StepReport`, the verdict of a step-by-step check, and `finish_report`,
  which turns per-step results into one;
- the answer sentence ("The answer is X.", as the pipeline writes it) and the
  verifier's reading of it;
- the seeded, hash-partitioned train/val/test/pretrain splits.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from smlearn.answers import answer_text_after, cut_at_next_question
from smlearn.errors import SmlearnError
from smlearn.prompts import DEFAULT_TRIGGER, answer_sentence

# --------------------------------------------------------------------------
# Flaw names
# --------------------------------------------------------------------------

# Flaws every family plants (each family adds its own misconceptions, named
# "misc_*"):
#   slip       one step's result is wrong (arithmetic: off by 1-2); later steps
#              are computed correctly from the wrong value, as a person would.
#   skip       one step of the question is left out; the rest carry on without it.
#   swap       two steps are done in the wrong order.
#   wrong_copy every step is right, but the final answer copies another
#              number/state than the one the steps reach.
GENERIC_FLAWS = ("slip", "skip", "swap", "wrong_copy")


class FlawNotApplicable(SmlearnError, ValueError):
    """The flaw cannot change this example's rationale (e.g. no "gives away" step)."""


class UnknownFlawError(SmlearnError, ValueError):
    """A flaw name the family does not plant."""

    def __init__(self, flaw: str, family: str, valid: tuple[str, ...]):
        super().__init__(f"unknown flaw {flaw!r} for task {family!r} (valid: {', '.join(valid)})")


# --------------------------------------------------------------------------
# Step reports
# --------------------------------------------------------------------------


@dataclass
class StepReport:
    """The verdict of checking one rationale step by step.

    n_steps:         steps recognised in the text (equations / state updates).
    n_valid:         of those, steps that are true AND follow from the question
                     and the previous stated steps.
    all_steps_valid: every step valid and none missing or extra.
    final_follows:   the stated answer is what the steps reach (vacuously true
                     when no answer is stated but the steps reach a result).
    answer_correct:  the stated answer equals gold; None when none is stated.
    errors:          human-readable reasons, one per problem found.
    error_kinds:     the ERROR_KINDS category of each error, in the same order.
    """

    n_steps: int
    n_valid: int
    all_steps_valid: bool
    final_follows: bool
    answer_correct: bool | None
    errors: list[str] = field(default_factory=list)
    error_kinds: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.all_steps_valid and self.final_follows

    @property
    def first_error_kind(self) -> str | None:
        """Where the rationale first goes wrong (None when it is valid)."""
        return None if self.valid else (self.error_kinds[0] if self.error_kinds else "structure")


# Why a step is wrong, the same categories for every task, so that stages can be
# compared on *how* they fail: SFT and RL can remove a learned wrong rule (a
# misconception), but not a skill the model lacks (misreading, computation).
ERROR_KINDS = {
    "misread": "a step misreads the question (wrong number, name, action or starting state)",
    "wrong_rule": "a step applies the wrong rule to the right facts (wrong operation or state update)",
    "computation": "a step's arithmetic is wrong",
    "structure": "steps missing, extra or out of order, or no result reached",
    "final_answer": "the final answer does not follow from the steps",
}


def finish_report(*, n_steps: int, n_valid: int, n_expected: int, derived: str | None,
                  stated: "StatedAnswer", gold: str, problems: list[tuple[str, str]]) -> StepReport:
    """Combine per-step results with the answer checks into a StepReport.

    `derived` is the answer the stated steps lead to (None when they lead
    nowhere, e.g. no step could be read). `problems`: (ERROR_KINDS key, reason)
    per problem found in the steps, in order.
    """
    problems = list(problems)
    if n_steps < n_expected:
        problems.append(("structure", f"{n_expected - n_steps} step(s) missing: expected {n_expected}, found {n_steps}"))
    all_steps_valid = n_expected > 0 and n_steps == n_expected and n_valid == n_steps

    if derived is None:
        final_follows = False
        problems.append(("structure", "the steps do not reach a result"))
    elif not stated.present:
        final_follows = True
    elif stated.value is None:
        final_follows = False
        problems.append(("final_answer", f"unreadable final answer {stated.raw!r}"))
    else:
        final_follows = stated.value == derived
        if not final_follows:
            problems.append(("final_answer",
                             f"final answer {stated.value!r} does not follow from the steps (they give {derived!r})"))

    unknown = {kind for kind, _ in problems} - set(ERROR_KINDS)
    assert not unknown, f"unknown error kinds {unknown}"
    answer_correct = None if not stated.present else stated.value == gold
    return StepReport(n_steps=n_steps, n_valid=n_valid, all_steps_valid=all_steps_valid,
                      final_follows=final_follows, answer_correct=answer_correct,
                      errors=[text for _, text in problems], error_kinds=[kind for kind, _ in problems])


# --------------------------------------------------------------------------
# The answer sentence (written as the pipeline writes it: smlearn.prompts)
# --------------------------------------------------------------------------

# The trigger ("The answer is") in any case and spacing, and a colon after it.
_TRIGGER_RE = re.compile(r"\b" + r"\s+".join(map(re.escape, DEFAULT_TRIGGER.split())) + r"\b\s*:?", re.IGNORECASE)


@dataclass(frozen=True)
class StatedAnswer:
    """The final answer a rationale states: present?, its raw text, its value (`stated_value`)."""

    present: bool
    raw: str | None = None
    value: str | None = None


def with_answer(rationale: str, answer: str) -> str:
    """A worked solution: the rationale followed by its answer sentence."""
    return f"{rationale.strip()} {answer_sentence(answer)}"


def split_answer(text: str, kind: str, choices: dict[str, str] | None = None) -> tuple[str, StatedAnswer]:
    """Split a rationale into (reasoning body, stated answer).

    Like the pipeline's extractor (smlearn.answers), a hallucinated "\\nQ:" ends
    the text and the first "The answer is" counts.
    """
    text = cut_at_next_question(text)
    match = _TRIGGER_RE.search(text)
    if match is None:
        return text, StatedAnswer(present=False)
    raw = answer_text_after(text, match.end())
    return text[: match.start()], StatedAnswer(True, raw, stated_value(raw, kind, choices))


def stated_value(raw: str, kind: str, choices: dict[str, str] | None = None) -> str | None:
    """The verifier's reading of a stated answer: "18", "C", "yes"/"no"; None when `raw` is not one.

    Narrower than the pipeline's `smlearn.answers.normalize_answer` on purpose: the
    lab's answers are integers, option letters and yes/no, and a step check reads
    only the forms its solutions use (a number is the first integer; an option
    its "(C)" label or its option text; yes/no the first word), with none of the
    extractor's fallbacks.
    """
    raw = raw.strip()
    if kind == "number":
        match = re.search(r"(?<![\w)])-?\d[\d,]*", raw)
        return str(int(match.group().replace(",", ""))) if match else None
    if kind == "choice":
        # "(C)", "(C) green ball", "C" or "C)"; a bare leading letter is not
        # enough ("a green ball" is not option A).
        match = re.fullmatch(r"\(([A-Fa-f])\).*|([A-Fa-f])\)?", raw)
        letter = match and (match.group(1) or match.group(2)).upper()
        if letter and (choices is None or letter in choices):
            return letter
        # "the green ball" names an option instead of its letter.
        named = [k for k, v in (choices or {}).items() if v.lower() in raw.lower()]
        return named[0] if len(named) == 1 else None
    if kind == "yes_no":
        match = re.match(r"(yes|no)\b", raw.lower())
        return match.group(1) if match else None
    raise ValueError(f"unknown answer kind {kind!r}")


def sentences(text: str) -> list[str]:
    """Split reasoning text into sentences (our items and numbers contain no periods)."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


# --------------------------------------------------------------------------
# Seeded splits
# --------------------------------------------------------------------------

# Every question belongs to exactly one split, decided by a hash of its text,
# so splits are disjoint whatever the seed: test questions never appear in any
# train set or pretraining corpus. The rng only decides which questions of the
# split are drawn.
SPLIT_BUCKETS: dict[str, range] = {
    "pretrain": range(0, 4),   # worked-solution corpus the tiny model is pretrained on
    "train": range(4, 7),      # questions the model learns from its own rationales on
    "val": range(7, 8),
    "test": range(8, 10),
}
_N_BUCKETS = 10
# Consecutive rejected draws before we decide a split's question space is used up.
_MAX_MISSES = 20_000


def question_split(question: str) -> str:
    bucket = int(hashlib.sha256(question.encode()).hexdigest(), 16) % _N_BUCKETS
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def check_split(split: str) -> None:
    if split not in SPLIT_BUCKETS:
        raise SmlearnError(f"unknown split {split!r} (valid: {', '.join(SPLIT_BUCKETS)})")


def unique_examples(family: str, seed: int, split: str, make: Callable[[random.Random], dict],
                    stream: str = "") -> Iterator[dict]:
    """Endless stream of distinct examples of one split, deterministic in (seed, split, stream).

    `make(rng)` draws one example (without id); those whose question hashes to
    another split, or repeats, are dropped. `stream` gives independent streams
    of the same split (e.g. the corpus builder's).
    """
    check_split(split)
    rng = random.Random(f"smlearn.lab:{family}:{seed}:{split}:{stream}")
    seen: set[str] = set()
    misses = 0
    while True:
        example = make(rng)
        question = example["question"]
        if question in seen or question_split(question) != split:
            misses += 1
            if misses > _MAX_MISSES:
                raise SmlearnError(f"{family}: ran out of distinct {split} questions after {len(seen)}")
            continue
        misses = 0
        seen.add(question)
        digest = hashlib.sha256(question.encode()).hexdigest()[:12]
        yield {"id": f"{family}-{split}-{digest}", **example}


def take(stream: Iterator[dict], n: int) -> list[dict]:
    if n < 0:
        raise SmlearnError(f"n must be >= 0, got {n}")
    return [next(stream) for _ in range(n)]
