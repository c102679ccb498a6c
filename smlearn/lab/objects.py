"""Tracking shuffled objects (a BIG-bench analogue), kind "choice".

Three people each hold an item; 2-3 times two of them swap (the question says
"swap", "trade" or "switch"); the question asks what one person holds at the
end. The choices are the three items in the order they were first handed out.

Reference rationale, one sentence per state:

    At the start, Alice has the red ball, Bob has the blue ball, and Claire has
    the green ball. After Alice and Bob swap, Alice has the blue ball, Bob has
    the red ball, and Claire has the green ball. [...] At the end, Bob has the
    green ball.

`steps` is that sequence as data: a start state, one state per swap, the end.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Iterator

from smlearn.lab.flaws import (GENERIC_FLAWS, FlawNotApplicable, StepReport, UnknownFlawError, finish_report,
                               sentences, split_answer, take, unique_examples, with_answer)

NAME = "objects"
KIND = "choice"

# Misconceptions, each a wrong rule applied to every swap it concerns:
#   misc_trade_ignored  "X and Y trade" is read as no exchange at all (the
#                       state is copied unchanged), while "swap"/"switch" are
#                       done right.
#   misc_switch_one_way "X and Y switch" is done in one direction only: X takes
#                       Y's item and Y keeps it too.
MISCONCEPTIONS = ("misc_trade_ignored", "misc_switch_one_way")
FLAWS = GENERIC_FLAWS + MISCONCEPTIONS
# The base model's corpus rates (`lab.flaw_rates.objects`; see tasks.build_corpus).
DEFAULT_FLAW_RATES = {"misc_trade_ignored": 0.30, "misc_switch_one_way": 0.15, "slip": 0.04}

PEOPLE = ("Alice", "Bob", "Claire", "Dave", "Eve", "Fred", "Gina", "Hank", "Ivy", "Jack", "Kate", "Leo")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown")
THINGS = (("ball", "balls"), ("present", "presents"), ("hat", "hats"))
VERBS = ("swap", "trade", "switch")
N_SWAPS = (2, 3)   # swaps per game: every one restates all three holders, so rationales grow fast
LETTERS = "ABC"
_ORDINALS = {2: ("First", "Finally"), 3: ("First", "Then", "Finally"), 4: ("First", "Then", "Then", "Finally")}

State = list[str]   # item held by each person, indexed like meta["people"]


# --------------------------------------------------------------------------
# Solving and rendering
# --------------------------------------------------------------------------


def _exchange(state: State, i: int, j: int, rule: str) -> State:
    """State after persons i and j exchange under `rule` ("swap", "ignore" or "one_way")."""
    state = list(state)
    if rule == "swap":
        state[i], state[j] = state[j], state[i]
    elif rule == "one_way":
        state[i] = state[j]
    elif rule != "ignore":
        raise ValueError(f"unknown rule {rule!r}")
    return state


def _solve(meta: dict, order: list[int] | None = None, rule: Callable[[str], str] = lambda verb: "swap",
           slip: tuple[int, tuple[int, int]] | None = None) -> list[dict]:
    """The steps a solver writes doing the swaps in `order`.

    rule:  verb -> how that swap is done (misconceptions change it).
    slip:  (position, pair): at that position the solver names the right pair
           but actually exchanges `pair`; later swaps start from that state.
    """
    people, swaps = meta["people"], meta["swaps"]
    order = list(range(len(swaps))) if order is None else order
    state = list(meta["items"])
    steps = [{"type": "start", "state": dict(zip(people, state))}]
    for pos, s in enumerate(order):
        i, j, verb = swaps[s]
        done_i, done_j = slip[1] if slip is not None and slip[0] == pos else (i, j)
        state = _exchange(state, done_i, done_j, rule(verb))
        steps.append({"type": "swap", "people": [people[i], people[j]], "verb": verb,
                      "state": dict(zip(people, state))})
    target = people[meta["target"]]
    steps.append({"type": "end", "person": target, "item": state[meta["target"]]})
    return steps


def _state_text(state: dict[str, str]) -> str:
    held = [f"{person} has the {item}" for person, item in state.items()]
    return ", ".join(held[:-1]) + f", and {held[-1]}."


def _render(steps: list[dict]) -> str:
    parts = []
    for step in steps:
        if step["type"] == "start":
            parts.append("At the start, " + _state_text(step["state"]))
        elif step["type"] == "swap":
            a, b = step["people"]
            parts.append(f"After {a} and {b} {step['verb']}, " + _state_text(step["state"]))
        else:
            parts.append(f"At the end, {step['person']} has the {step['item']}.")
    return " ".join(parts)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _question(meta: dict) -> str:
    people, items, noun = meta["people"], meta["items"], meta["noun"]
    held = [f"{p} has {_article(it)} {it}" for p, it in zip(people, items)]
    parts = [f"{people[0]}, {people[1]}, and {people[2]} are playing a game.",
             f"At the start, {held[0]}, {held[1]}, and {held[2]}."]
    for ordinal, (i, j, verb) in zip(_ORDINALS[len(meta["swaps"])], meta["swaps"]):
        parts.append(f"{ordinal}, {people[i]} and {people[j]} {verb} {noun}.")
    choices = ", ".join(f"({letter}) {item}" for letter, item in zip(LETTERS, items))
    parts.append(f"At the end of the game, what does {people[meta['target']]} have? Answer choices: {choices}.")
    return " ".join(parts)


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------


def _random_meta(rng: random.Random) -> dict:
    singular, plural = rng.choice(THINGS)
    pairs = [(0, 1), (0, 2), (1, 2)]
    swaps = []
    for _ in range(rng.randint(*N_SWAPS)):
        i, j = rng.choice(pairs)
        if rng.random() < 0.5:   # either person may be named first
            i, j = j, i
        swaps.append([i, j, rng.choice(VERBS)])
    return {"people": rng.sample(PEOPLE, 3), "items": [f"{c} {singular}" for c in rng.sample(COLORS, 3)],
            "noun": plural, "swaps": swaps, "target": rng.randrange(3)}


def _choices(meta: dict) -> dict[str, str]:
    return dict(zip(LETTERS, meta["items"]))


def _letter(meta: dict, item: str) -> str | None:
    return next((k for k, v in _choices(meta).items() if v == item), None)


def _make_example(rng: random.Random) -> dict:
    meta = _random_meta(rng)
    steps = _solve(meta)
    return {"question": _question(meta), "answer": _letter(meta, steps[-1]["item"]), "kind": KIND,
            "choices": _choices(meta), "rationale": _render(steps), "steps": steps, "meta": meta}


def iter_examples(seed: int, split: str, stream: str = "") -> Iterator[dict]:
    return unique_examples(NAME, seed, split, _make_example, stream)


def generate(n: int, seed: int, split: str) -> list[dict]:
    """n distinct questions of `split`, deterministic in (seed, split)."""
    return take(iter_examples(seed, split), n)


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------

_START_RE = re.compile(r"At the start,?\s*(.*)", re.IGNORECASE)
_SWAP_RE = re.compile(r"After (\w+) and (\w+) \w+,?\s*(.*)", re.IGNORECASE)
_END_RE = re.compile(r"At the end,?\s*(\w+) has (?:the |an? )?(.+?)\.?$", re.IGNORECASE)
_HOLDS_RE = re.compile(r"(\w+) has (?:the |an? )?(.+?)(?=,| and \w+ has\b|\.|$)")


def _parse_state(text: str) -> dict[str, str]:
    return {person: item.strip().lower() for person, item in _HOLDS_RE.findall(text)}


def _parse_steps(body: str) -> list[dict]:
    """The recognisable steps of a rationale, in order; other sentences are ignored."""
    steps = []
    for sentence in sentences(body):
        if m := _START_RE.match(sentence):
            steps.append({"type": "start", "state": _parse_state(m.group(1)), "text": sentence})
        elif m := _SWAP_RE.match(sentence):
            steps.append({"type": "swap", "people": [m.group(1), m.group(2)],
                          "state": _parse_state(m.group(3)), "text": sentence})
        elif m := _END_RE.match(sentence):
            steps.append({"type": "end", "person": m.group(1), "item": m.group(2).strip().lower(),
                          "text": sentence})
    return steps


def _check_step(meta: dict, ref: dict, step: dict, before: dict[str, str]) -> list[tuple[str, str]]:
    """(error kind, reason) per problem with one stated step, given the state stated before it."""
    people = meta["people"]
    if step["type"] != ref["type"]:
        return [("structure", f"expected the {ref['type']} step here, found: {step['text']!r}")]
    if ref["type"] == "start":
        initial = dict(zip(people, meta["items"]))
        return [] if step["state"] == initial else [("misread", f"wrong starting state: {step['text']!r}")]
    if ref["type"] == "swap":
        problems = []
        if sorted(step["people"]) != sorted(ref["people"]):
            problems.append(("misread", f"names {' and '.join(step['people'])} but the question's swap here is "
                                        f"{' and '.join(ref['people'])}"))
        a, b = people.index(ref["people"][0]), people.index(ref["people"][1])
        after = dict(zip(people, _exchange([before[p] for p in people], a, b, "swap")))
        if step["state"] != after:
            problems.append(("wrong_rule", f"state is not the result of the swap: {step['text']!r}"))
        return problems
    if step["person"] != ref["person"]:
        return [("misread", f"concludes about {step['person']}, the question asks about {ref['person']}")]
    if step["item"] != before[step["person"]]:
        return [("final_answer", f"conclusion contradicts the last state: {step['text']!r}")]
    return []


def verify(example: dict, rationale_text: str) -> StepReport:
    """Check the start state, each swap's state (against the question's swap,
    applied to the previously stated state) and the conclusion, in order."""
    meta, refs = example["meta"], example["steps"]
    body, stated = split_answer(rationale_text, KIND, example["choices"])
    steps = _parse_steps(body)
    people = meta["people"]
    before = dict(zip(people, meta["items"]))   # last stated complete state
    problems: list[tuple[str, str]] = []
    n_valid = 0
    derived_item = None
    for i, step in enumerate(steps):
        if i >= len(refs):
            problems.append(("structure", f"step {i + 1}: extra step {step['text']!r}"))
            continue
        found = _check_step(meta, refs[i], step, before)
        problems += [(kind, f"step {i + 1}: {text}") for kind, text in found]
        n_valid += not found
        if "state" in step and set(step["state"]) == set(people):
            before = step["state"]
        if step["type"] == "end":
            derived_item = step["item"]
    if steps and derived_item is None:   # no conclusion: read the answer off the last state
        derived_item = before[people[meta["target"]]]
    derived = _letter(meta, derived_item) if derived_item else None
    return finish_report(n_steps=len(steps), n_valid=n_valid, n_expected=len(refs), derived=derived,
                         stated=stated, gold=example["answer"], problems=problems)


# --------------------------------------------------------------------------
# Flaws
# --------------------------------------------------------------------------


# misconception -> (the verb it misreads, the rule it applies instead of a swap)
_MISREAD = {"misc_trade_ignored": ("trade", "ignore"), "misc_switch_one_way": ("switch", "one_way")}


def _flawed_solutions(meta: dict, flaw: str) -> list[list[dict]]:
    """Every solution realising `flaw` on this question (empty: not applicable)."""
    swaps = meta["swaps"]
    order = list(range(len(swaps)))
    if flaw == "slip":
        # The right pair is named but the exchange involves the third person.
        return [_solve(meta, slip=(pos, (k, third)))
                for pos, (i, j, _) in enumerate(swaps) for third in [3 - i - j] for k in (i, j)]
    if flaw == "skip":
        return [_solve(meta, [o for o in order if o != s]) for s in order]
    if flaw == "swap":
        return [_solve(meta, order[:s] + [s + 1, s] + order[s + 2:]) for s in order[:-1]
                if sorted(swaps[s][:2]) != sorted(swaps[s + 1][:2])]
    if flaw in _MISREAD:
        verb, wrong = _MISREAD[flaw]
        applies = any(v == verb for _, _, v in swaps)
        return [_solve(meta, rule=lambda v: wrong if v == verb else "swap")] if applies else []
    raise UnknownFlawError(flaw, NAME, FLAWS)


def flaw_applies(example: dict, flaw: str) -> bool:
    return flaw == "wrong_copy" or bool(_flawed_solutions(example["meta"], flaw))


def flawed_rationale(example: dict, rng: random.Random, flaw: str) -> tuple[str, str]:
    """(rationale text ending with "The answer is X.", X) with `flaw` planted.

    The answer is the letter of the item the flawed steps conclude with, except
    for wrong_copy whose steps are right and whose letter is another option
    (the asked person's starting item when that differs from the answer).
    Raises FlawNotApplicable when the question has no place for the flaw.
    """
    meta = example["meta"]
    if flaw == "wrong_copy":
        steps = _solve(meta)
        start_letter = LETTERS[meta["target"]]
        others = [k for k in LETTERS if k != example["answer"]]
        answer = start_letter if start_letter in others else rng.choice(others)
    else:
        solutions = _flawed_solutions(meta, flaw)
        if not solutions:
            raise FlawNotApplicable(f"{flaw} does not apply to {example['id']}")
        steps = rng.choice(solutions)
        answer = _letter(meta, steps[-1]["item"])
    return with_answer(_render(steps), answer), answer
