"""Coin flips (the coin-flip symbolic-reasoning task analogue), kind "yes_no".

A coin starts heads (or tails) up; 2-4 people each flip it ("flips the coin",
"turns the coin over") or not ("does not flip the coin"); the question asks
whether it is still the side it started on.

Reference rationale, tracking the side after each person:

    The coin starts heads up. Ann flips the coin, so it is now tails up. Bob
    does not flip the coin, so it is still tails up. At the end, the coin is
    tails up, so it is no longer heads up.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Iterator

from smlearn.lab.flaws import (GENERIC_FLAWS, FlawNotApplicable, StepReport, UnknownFlawError, finish_report,
                               sentences, split_answer, take, unique_examples, with_answer)

NAME = "coins"
KIND = "yes_no"

# Misconceptions, each a wrong rule applied to every action it concerns:
#   misc_noflip_flips      "does not flip the coin" is treated as a flip.
#   misc_turnover_ignored  "turns the coin over" is not recognised as a flip.
MISCONCEPTIONS = ("misc_noflip_flips", "misc_turnover_ignored")
FLAWS = GENERIC_FLAWS + MISCONCEPTIONS
# The base model's corpus rates (`lab.flaw_rates.coins`; see tasks.build_corpus).
DEFAULT_FLAW_RATES = {"misc_noflip_flips": 0.35, "misc_turnover_ignored": 0.20, "slip": 0.04}

PEOPLE = ("Ann", "Bob", "Cal", "Dan", "Eva", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lee", "Mo", "Ned",
          "Oli", "Pam", "Ray", "Sue", "Tim", "Uma", "Vic", "Wes")
FLIP = "flips the coin"
TURN_OVER = "turns the coin over"
NO_FLIP = "does not flip the coin"
PHRASES = (FLIP, TURN_OVER, NO_FLIP)
SIDES = ("heads", "tails")
N_ACTIONS = (2, 4)   # people acting on the coin


def _other(side: str) -> str:
    return "tails" if side == "heads" else "heads"


def _flips(phrase: str) -> bool:
    return phrase != NO_FLIP


# --------------------------------------------------------------------------
# Solving and rendering
# --------------------------------------------------------------------------


def _solve(meta: dict, order: list[int] | None = None, rule: Callable[[str], bool] = _flips,
           slip: int | None = None) -> list[dict]:
    """The steps a solver writes for the actions in `order`.

    rule:  phrase -> whether the solver turns the coin (misconceptions change it).
    slip:  position whose resulting side is written wrong; later steps go on from it.
    """
    actions = meta["actions"]
    order = list(range(len(actions))) if order is None else order
    side = meta["start"]
    steps = [{"type": "start", "side": side}]
    for pos, a in enumerate(order):
        person, phrase = actions[a]
        if rule(phrase) != (pos == slip):
            side = _other(side)
        steps.append({"type": "action", "person": person, "phrase": phrase, "side": side})
    steps.append({"type": "end", "side": side, "same": side == meta["start"], "start": meta["start"]})
    return steps


def _render(steps: list[dict]) -> str:
    parts = []
    side = None
    for step in steps:
        if step["type"] == "start":
            parts.append(f"The coin starts {step['side']} up.")
        elif step["type"] == "action":
            change = "now" if step["side"] != side else "still"
            parts.append(f"{step['person']} {step['phrase']}, so it is {change} {step['side']} up.")
        else:
            relation = "still" if step["same"] else "no longer"
            parts.append(f"At the end, the coin is {step['side']} up, so it is {relation} {step['start']} up.")
        side = step.get("side")
    return " ".join(parts)


def _question(meta: dict) -> str:
    actions = " ".join(f"{person} {phrase}." for person, phrase in meta["actions"])
    return f"A coin is {meta['start']} up. {actions} Is the coin still {meta['start']} up?"


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------


def _random_meta(rng: random.Random) -> dict:
    people = rng.sample(PEOPLE, rng.randint(*N_ACTIONS))
    actions = [[p, rng.choices(PHRASES, weights=(0.35, 0.15, 0.5))[0]] for p in people]
    return {"start": rng.choice(SIDES), "actions": actions}


def _answer(steps: list[dict]) -> str:
    return "yes" if steps[-1]["same"] else "no"


def _make_example(rng: random.Random) -> dict:
    meta = _random_meta(rng)
    steps = _solve(meta)
    return {"question": _question(meta), "answer": _answer(steps), "kind": KIND,
            "rationale": _render(steps), "steps": steps, "meta": meta}


def iter_examples(seed: int, split: str, stream: str = "") -> Iterator[dict]:
    return unique_examples(NAME, seed, split, _make_example, stream)


def generate(n: int, seed: int, split: str) -> list[dict]:
    """n distinct questions of `split`, deterministic in (seed, split)."""
    return take(iter_examples(seed, split), n)


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------

_START_RE = re.compile(r"The coin starts (heads|tails) up", re.IGNORECASE)
_ACTION_RE = re.compile(r"(\w+) (flips the coin|turns the coin over|does not flip the coin)\b.*?\b(heads|tails) up",
                        re.IGNORECASE)
_END_RE = re.compile(r"At the end,? the coin is (heads|tails) up"
                     r"(?:, so it is (still|no longer) (heads|tails) up)?", re.IGNORECASE)


def _parse_steps(body: str) -> list[dict]:
    """The recognisable steps of a rationale, in order; other sentences are ignored."""
    steps = []
    for sentence in sentences(body):
        if m := _START_RE.match(sentence):
            steps.append({"type": "start", "side": m.group(1).lower(), "text": sentence})
        elif m := _END_RE.match(sentence):
            steps.append({"type": "end", "side": m.group(1).lower(), "text": sentence,
                          "same": None if m.group(2) is None else m.group(2).lower() == "still",
                          "start": (m.group(3) or "").lower() or None})
        elif m := _ACTION_RE.match(sentence):
            steps.append({"type": "action", "person": m.group(1), "phrase": m.group(2).lower(),
                          "side": m.group(3).lower(), "text": sentence})
    return steps


def _check_step(meta: dict, ref: dict, step: dict, before: str) -> list[tuple[str, str]]:
    """(error kind, reason) per problem with one stated step, given the side stated before it."""
    if step["type"] != ref["type"]:
        return [("structure", f"expected the {ref['type']} step here, found: {step['text']!r}")]
    if ref["type"] == "start":
        return [] if step["side"] == meta["start"] else [("misread", f"wrong starting side: {step['text']!r}")]
    if ref["type"] == "action":
        problems = []
        if step["person"] != ref["person"]:
            problems.append(("misread", f"names {step['person']} but the question's next action is {ref['person']}'s"))
        elif _flips(step["phrase"]) != _flips(ref["phrase"]):
            problems.append(("misread", f"misstates what {ref['person']} does: {step['text']!r}"))
        # The update must be the one the question describes, applied to the side stated before.
        after = _other(before) if _flips(ref["phrase"]) else before
        if step["side"] != after:
            problems.append(("wrong_rule",
                             f"side should be {after} after {ref['person']} {ref['phrase']}: {step['text']!r}"))
        return problems
    problems = []
    if step["side"] != before:
        problems.append(("final_answer", f"conclusion contradicts the last side: {step['text']!r}"))
    if step["same"] is not None and (step["start"] != meta["start"] or step["same"] != (step["side"] == meta["start"])):
        problems.append(("final_answer", f"wrong comparison with the starting side: {step['text']!r}"))
    return problems


def verify(example: dict, rationale_text: str) -> StepReport:
    """Check the start, each person's update (against the question's action,
    applied to the previously stated side) and the conclusion, in order."""
    meta, refs = example["meta"], example["steps"]
    body, stated = split_answer(rationale_text, KIND)
    steps = _parse_steps(body)
    before = meta["start"]   # last stated side
    problems: list[tuple[str, str]] = []
    n_valid = 0
    for i, step in enumerate(steps):
        if i >= len(refs):
            problems.append(("structure", f"step {i + 1}: extra step {step['text']!r}"))
            continue
        found = _check_step(meta, refs[i], step, before)
        problems += [(kind, f"step {i + 1}: {text}") for kind, text in found]
        n_valid += not found
        before = step["side"]
    derived = ("yes" if before == meta["start"] else "no") if steps else None
    return finish_report(n_steps=len(steps), n_valid=n_valid, n_expected=len(refs), derived=derived,
                         stated=stated, gold=example["answer"], problems=problems)


# --------------------------------------------------------------------------
# Flaws
# --------------------------------------------------------------------------


def _swap_positions(actions: list) -> list[int]:
    """Adjacent pairs to do in the wrong order; prefer a flip next to a non-flip (the sides differ)."""
    pairs = list(range(len(actions) - 1))
    mixed = [p for p in pairs if _flips(actions[p][1]) != _flips(actions[p + 1][1])]
    return mixed or pairs


def _flawed_solutions(meta: dict, flaw: str) -> list[list[dict]]:
    """Every solution realising `flaw` on this question (empty: not applicable)."""
    actions = meta["actions"]
    order = list(range(len(actions)))
    phrases = {phrase for _, phrase in actions}
    if flaw == "slip":
        return [_solve(meta, slip=pos) for pos in order]
    if flaw == "skip":
        return [_solve(meta, [o for o in order if o != a]) for a in order]
    if flaw == "swap":
        return [_solve(meta, order[:p] + [p + 1, p] + order[p + 2:]) for p in _swap_positions(actions)]
    if flaw == "misc_noflip_flips":
        return [_solve(meta, rule=lambda phrase: True)] if NO_FLIP in phrases else []
    if flaw == "misc_turnover_ignored":
        return [_solve(meta, rule=lambda phrase: phrase == FLIP)] if TURN_OVER in phrases else []
    raise UnknownFlawError(flaw, NAME, FLAWS)


def flaw_applies(example: dict, flaw: str) -> bool:
    return flaw == "wrong_copy" or bool(_flawed_solutions(example["meta"], flaw))


def flawed_rationale(example: dict, rng: random.Random, flaw: str) -> tuple[str, str]:
    """(rationale text ending with "The answer is X.", X) with `flaw` planted.

    The answer is what the flawed steps conclude, except for wrong_copy whose
    steps are right and whose answer is the opposite one.
    Raises FlawNotApplicable when the question has no place for the flaw.
    """
    meta = example["meta"]
    if flaw == "wrong_copy":
        steps = _solve(meta)
        answer = "no" if example["answer"] == "yes" else "yes"
    else:
        solutions = _flawed_solutions(meta, flaw)
        if not solutions:
            raise FlawNotApplicable(f"{flaw} does not apply to {example['id']}")
        steps = rng.choice(solutions)
        answer = _answer(steps)
    return with_answer(_render(steps), answer), answer
