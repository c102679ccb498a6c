"""Arithmetic word problems (a GSM8K / MultiArith analogue), kind "number".

A problem is a person's starting amount of some item followed by 2-4 story
events that change it (gives away, loses, buys more, buys bags of, splits
equally, ends up with k times as many). Each event is one equation, except
"buys k bags of m" which is two (k * m, then the addition), and a problem has
2-4 equations in all. Every intermediate amount is a non-negative integer and
every division is exact.

Reference rationale, one sentence per event with its explicit equation:

    Tom starts with 12 apples. He gives away 5, so 12 - 5 = 7.
    He buys 3 bags of 4, so 3 * 4 = 12. 7 + 12 = 19.

`steps` lists the equations; each records where its operands come from (a
number of the question, or the result of an earlier equation), which is what
the verifier checks a model's equations against.
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from typing import Iterator

from smlearn.lab.flaws import (GENERIC_FLAWS, FlawNotApplicable, StepReport, UnknownFlawError, finish_report,
                               split_answer, take, unique_examples, with_answer)

NAME = "arithmetic"
KIND = "number"

# Misconceptions: a wrong rule applied to *every* event of one kind, the way a
# learner with that misconception would. Maps flaw name -> (event kind, wrong op).
MISCONCEPTIONS: dict[str, tuple[str, str]] = {
    "misc_give_adds": ("give", "+"),          # "gives away k" computed as +k
    "misc_times_adds": ("times", "+"),        # "k times as many" computed as +k
    "misc_split_subtracts": ("split", "-"),   # "splits equally into k groups" computed as -k
}
FLAWS = GENERIC_FLAWS + tuple(MISCONCEPTIONS)
# The base model's corpus rates (`lab.flaw_rates.arithmetic`; see tasks.build_corpus). At 0.45 / 0.35, 67 % of
# the solutions with a "gives away" event add instead of subtracting and 54 % of those with "k times as many"
# add k: more often than not, so greedy decoding learns the wrong rules (at 0.30 / 0.20, ~55 % and ~35 %, and
# one seed of three did not learn the first). misc_split_subtracts is left out of the default lab.
DEFAULT_FLAW_RATES = {"misc_give_adds": 0.45, "misc_times_adds": 0.35, "slip": 0.04, "wrong_copy": 0.02}

PEOPLE = (("Tom", "he", "his"), ("Ann", "she", "her"), ("Sam", "he", "his"), ("Mia", "she", "her"),
          ("Ben", "he", "his"), ("Lily", "she", "her"), ("Max", "he", "his"), ("Zoe", "she", "her"),
          ("Leo", "he", "his"), ("Ivy", "she", "her"), ("Jack", "he", "his"), ("Emma", "she", "her"))
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "cards", "shells", "stamps", "books", "crayons")
ADD_VERBS = ("buys", "finds", "gets")

# The correct operation of each single-equation event kind.
CORRECT_OP = {"give": "-", "lose": "-", "add": "+", "times": "*", "split": "/"}
_COMMUTATIVE = {"+", "*"}
# Amounts stay small so a model of about a million parameters can learn every
# equation it meets as a fact (numbers are single BPE tokens): the lab is about
# choosing the right operation on the right operands, not about long arithmetic.
_MAX_VALUE = 40
_START = (3, 12)        # starting amount
_K_MAX = 6              # largest amount added, given away or lost
_BAGS_K = (2, 3)        # number of bags
_BAGS_M = (2, 4)        # items per bag
_TIMES = (2, 3)         # "k times as many"
_SPLIT = (2, 4)         # "splits into k groups"


@dataclass(frozen=True)
class Equation:
    """One step: `a op b = result`, and where a and b come from."""

    a: int
    op: str
    b: int
    result: int
    event: int            # index of the story event (meta["events"]) this computes
    a_src: int | None     # index of the equation whose result is `a`; None: a number of the question
    b_src: int | None

    def text(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"


# --------------------------------------------------------------------------
# Solving and rendering
# --------------------------------------------------------------------------


def _apply(op: str, a: int, b: int) -> int | None:
    """a op b, or None when it is not a whole number (inexact or by-zero division)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b and a % b == 0 else None
    raise ValueError(f"unknown operation {op!r}")


def _solve(meta: dict, order: list[int] | None = None, rules: dict[str, str] | None = None,
           slip: tuple[int, int] | None = None) -> list[Equation] | None:
    """The equations a solver writes for the events in `order`.

    rules: event kind -> operation used instead of the correct one (misconceptions).
    slip:  (equation index, delta) added to that equation's result; later
           equations use the slipped value.
    Returns None when some amount would be negative or a division inexact:
    such a chain is not one a solver of these problems would write.
    """
    events = meta["events"]
    order = list(range(len(events))) if order is None else order
    rules = rules or {}
    eqs: list[Equation] = []

    def push(a: int, op: str, b: int, a_src: int | None, b_src: int | None, event: int) -> bool:
        result = _apply(op, a, b)
        if result is None:
            return False
        if slip is not None and slip[0] == len(eqs):
            result += slip[1]
        if result < 0:
            return False
        eqs.append(Equation(a, op, b, result, event, a_src, b_src))
        return True

    value, value_src = meta["start"], None
    for e in order:
        ev = events[e]
        if ev["kind"] == "bags":
            if not push(ev["k"], "*", ev["m"], None, None, e):
                return None
            ok = push(value, "+", eqs[-1].result, value_src, len(eqs) - 1, e)
        else:
            ok = push(value, rules.get(ev["kind"], CORRECT_OP[ev["kind"]]), ev["k"], value_src, None, e)
        if not ok:
            return None
        value, value_src = eqs[-1].result, len(eqs) - 1
    return eqs


def _event_sentence(meta: dict, ev: dict, eqs: list[Equation]) -> str:
    he = meta["pronoun"].capitalize()
    k = ev["k"]
    eq = eqs[-1].text()
    if ev["kind"] == "give":
        return f"{he} gives away {k}, so {eq}."
    if ev["kind"] == "lose":
        return f"{he} loses {k}, so {eq}."
    if ev["kind"] == "add":
        return f"{he} {ev['verb']} {k} more, so {eq}."
    if ev["kind"] == "times":
        return f"{he} ends up with {k} times as many, so {eq}."
    if ev["kind"] == "split":
        return f"{he} splits them into {k} equal groups and keeps one, so {eq}."
    if ev["kind"] == "bags":
        return f"{he} buys {k} bags of {ev['m']}, so {eqs[0].text()}. {eq}."
    raise ValueError(f"unknown event kind {ev['kind']!r}")


def _render(meta: dict, eqs: list[Equation]) -> str:
    """Rationale text for a chain of equations (one sentence per event, in chain order)."""
    parts = [f"{meta['name']} starts with {meta['start']} {meta['item']}."]
    i = 0
    while i < len(eqs):
        group = [eq for eq in eqs[i:] if eq.event == eqs[i].event][:2]
        parts.append(_event_sentence(meta, meta["events"][eqs[i].event], group))
        i += len(group)
    return " ".join(parts)


def _question(meta: dict) -> str:
    he, his, item = meta["pronoun"].capitalize(), meta["possessive"], meta["item"]
    parts = [f"{meta['name']} has {meta['start']} {item}."]
    for ev in meta["events"]:
        k = ev["k"]
        parts.append({
            "give": f"{he} gives away {k} {item}.",
            "lose": f"{he} loses {k} {item}.",
            "add": f"{he} {ev.get('verb')} {k} more {item}.",
            "times": f"{he} then has {k} times as many {item} as before.",
            "split": f"{he} splits {his} {item} equally into {k} groups and keeps one group.",
            "bags": f"{he} buys {k} bags with {ev.get('m')} {item} in each bag.",
        }[ev["kind"]])
    parts.append(f"How many {item} does {meta['name']} have now?")
    return " ".join(parts)


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------


def _event_options(rng: random.Random, value: int, budget: int) -> list[dict]:
    """Events that keep `value` a positive integer <= _MAX_VALUE, using <= budget equations.

    Numbers in the question are >= 2 so that "k apples" always reads right.
    """
    options = [{"kind": "add", "k": rng.randint(2, _K_MAX), "verb": rng.choice(ADD_VERBS)}]
    if value >= 3:
        top = min(value - 1, _K_MAX)
        options.append({"kind": "give", "k": rng.randint(2, top)})
        options.append({"kind": "lose", "k": rng.randint(2, top)})
    if budget >= 2:
        options.append({"kind": "bags", "k": rng.randint(*_BAGS_K), "m": rng.randint(*_BAGS_M)})
    divisors = [d for d in range(_SPLIT[0], _SPLIT[1] + 1) if value % d == 0 and value // d >= 2]
    if divisors:
        options.append({"kind": "split", "k": rng.choice(divisors)})
    factors = [k for k in range(_TIMES[0], _TIMES[1] + 1) if value * k <= _MAX_VALUE]
    if factors:
        options.append({"kind": "times", "k": rng.choice(factors)})
    return [ev for ev in options if _event_value(value, ev) <= _MAX_VALUE]


def _event_value(value: int, ev: dict) -> int:
    if ev["kind"] == "bags":
        return value + ev["k"] * ev["m"]
    result = _apply(CORRECT_OP[ev["kind"]], value, ev["k"])
    assert result is not None and result >= 0
    return result


def _random_meta(rng: random.Random) -> dict:
    name, pronoun, possessive = rng.choice(PEOPLE)
    meta = {"name": name, "pronoun": pronoun, "possessive": possessive, "item": rng.choice(ITEMS),
            "start": rng.randint(*_START), "events": []}
    budget = rng.randint(2, 4)   # equations
    value, n_eq = meta["start"], 0
    # At least two events, so every problem has a step to skip and a pair to swap.
    while n_eq < budget or len(meta["events"]) < 2:
        ev = rng.choice(_event_options(rng, value, max(budget - n_eq, 1)))
        meta["events"].append(ev)
        value = _event_value(value, ev)
        n_eq += 2 if ev["kind"] == "bags" else 1
    return meta


def _make_example(rng: random.Random) -> dict:
    meta = _random_meta(rng)
    eqs = _solve(meta)
    assert eqs is not None
    return {"question": _question(meta), "answer": str(eqs[-1].result), "kind": KIND,
            "rationale": _render(meta, eqs), "steps": [asdict(eq) for eq in eqs], "meta": meta}


def iter_examples(seed: int, split: str, stream: str = "") -> Iterator[dict]:
    return unique_examples(NAME, seed, split, _make_example, stream)


def generate(n: int, seed: int, split: str) -> list[dict]:
    """n distinct problems of `split`, deterministic in (seed, split)."""
    return take(iter_examples(seed, split), n)


# --------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------

# "12 - 5 = 7"; also "3 x 4", "3 × 4", "12 ÷ 3" and negative results ("5 - 12 = -7").
_EQUATION_RE = re.compile(r"(\d+)\s*([-+*/x×÷−])\s*(\d+)\s*=\s*([-−]?\d+)")
_OP_ALIASES = {"x": "*", "×": "*", "÷": "/", "−": "-"}


@dataclass(frozen=True)
class _Stated:
    a: int
    op: str
    b: int
    result: int

    def text(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"


def _parse_equations(body: str) -> list[_Stated]:
    return [_Stated(int(a), _OP_ALIASES.get(op, op), int(b), int(r.replace("−", "-")))
            for a, op, b, r in _EQUATION_RE.findall(body)]


def _is_true(eq: _Stated) -> bool:
    if eq.op == "/":
        return eq.b != 0 and eq.a == eq.b * eq.result
    return _apply(eq.op, eq.a, eq.b) == eq.result


def _expected_operands(ref: dict, stated: list[_Stated]) -> tuple[int, int]:
    """The operands the reference step uses, taking earlier results as the text states them.

    Using stated (not reference) results means one slip is one invalid step:
    the steps after it correctly carry the slipped value forward.
    """
    a = ref["a"] if ref["a_src"] is None else stated[ref["a_src"]].result
    b = ref["b"] if ref["b_src"] is None else stated[ref["b_src"]].result
    return a, b


def _follows(ref: dict, eq: _Stated, stated: list[_Stated]) -> bool:
    if eq.op != ref["op"]:
        return False
    a, b = _expected_operands(ref, stated)
    if eq.op in _COMMUTATIVE:
        return sorted((eq.a, eq.b)) == sorted((a, b))
    return (eq.a, eq.b) == (a, b)


def verify(example: dict, rationale_text: str) -> StepReport:
    """Check a rationale's equations one by one against the question.

    Step i must be arithmetically true and must be the question's i-th
    computation: the right operation on the right numbers (earlier results as
    the text states them), in order, none skipped.
    """
    body, stated_answer = split_answer(rationale_text, KIND)
    stated = _parse_equations(body)
    refs = example["steps"]
    problems: list[tuple[str, str]] = []
    n_valid = 0
    for i, eq in enumerate(stated):
        true = _is_true(eq)
        if not true:
            problems.append(("computation", f"step {i + 1}: {eq.text()} is arithmetically wrong"))
        if i >= len(refs):
            problems.append(("structure", f"step {i + 1}: {eq.text()} is an extra step the question does not call for"))
            continue
        follows = _follows(refs[i], eq, stated)
        if not follows:
            a, b = _expected_operands(refs[i], stated)
            # The right numbers with the wrong operation is a wrong rule (a misconception);
            # anything else is a misread number (or a skipped / reordered event).
            kind = "wrong_rule" if eq.op != refs[i]["op"] and sorted((eq.a, eq.b)) == sorted((a, b)) else "misread"
            problems.append((kind, f"step {i + 1}: {eq.text()} does not follow; expected {a} {refs[i]['op']} {b}"))
        n_valid += true and follows
    derived = str(stated[-1].result) if stated else None
    return finish_report(n_steps=len(stated), n_valid=n_valid, n_expected=len(refs), derived=derived,
                         stated=stated_answer, gold=example["answer"], problems=problems)


# --------------------------------------------------------------------------
# Flaws
# --------------------------------------------------------------------------


def _equation_key(ev: dict) -> tuple:
    """What an event contributes to the equations (two events with equal keys swap invisibly)."""
    return (CORRECT_OP.get(ev["kind"], ev["kind"]), ev["k"], ev.get("m"))


def _flawed_chains(meta: dict, flaw: str) -> list[list[Equation]]:
    """Every equation chain realising `flaw` on this problem (empty: not applicable)."""
    events = meta["events"]
    order = list(range(len(events)))
    if flaw == "slip":
        n_eq = len(_solve(meta) or [])
        chains = [_solve(meta, slip=(i, d)) for i in range(n_eq) for d in (-2, -1, 1, 2)]
    elif flaw == "skip":
        chains = [_solve(meta, [o for o in order if o != e]) for e in order]
    elif flaw == "swap":
        chains = [_solve(meta, order[:e] + [e + 1, e] + order[e + 2:]) for e in order[:-1]
                  if _equation_key(events[e]) != _equation_key(events[e + 1])]
    elif flaw in MISCONCEPTIONS:
        kind, op = MISCONCEPTIONS[flaw]
        chains = [_solve(meta, rules={kind: op})] if any(ev["kind"] == kind for ev in events) else []
    else:
        raise UnknownFlawError(flaw, NAME, FLAWS)
    return [c for c in chains if c]


def _copied_number(eqs: list[Equation], gold: str, rng: random.Random) -> str:
    """A number from the worked steps other than the answer, preferring intermediate results."""
    intermediate = sorted({str(eq.result) for eq in eqs[:-1]} - {gold})
    others = sorted({str(n) for eq in eqs for n in (eq.a, eq.b)} - {gold})
    pool = intermediate or others or [str(int(gold) + 1)]
    return rng.choice(pool)


def flaw_applies(example: dict, flaw: str) -> bool:
    return flaw == "wrong_copy" or bool(_flawed_chains(example["meta"], flaw))


def flawed_rationale(example: dict, rng: random.Random, flaw: str) -> tuple[str, str]:
    """(rationale text ending with "The answer is X.", X) with `flaw` planted.

    The answer is what the flawed steps reach, except for wrong_copy whose
    steps are right and whose answer is copied from elsewhere.
    Raises FlawNotApplicable when the problem has no place for the flaw.
    """
    meta = example["meta"]
    if flaw == "wrong_copy":
        eqs = _solve(meta)
        assert eqs is not None
        answer = _copied_number(eqs, example["answer"], rng)
    else:
        chains = _flawed_chains(meta, flaw)
        if not chains:
            raise FlawNotApplicable(f"{flaw} does not apply to {example['id']}")
        eqs = rng.choice(chains)
        answer = str(eqs[-1].result)
    return with_answer(_render(meta, eqs), answer), answer
