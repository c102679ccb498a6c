"""Few-shot chain-of-thought exemplars: the project's own, per answer kind, and user files.

An exemplar is a question, a worked rationale, and the answer the rationale
reaches. A user file is JSON: either {key: "Q: ...\\nA: ... The answer is X.\\nQ: ..."}
(the Wei et al. prompt layout) or {key: [{"question", "rationale", "answer"}, ...]},
or a plain list of such objects.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, SmlearnError
from ..io import read_text_file


@dataclass(frozen=True)
class Exemplar:
    question: str
    rationale: str
    answer: str


def _ex(q: str, r: str, a: str) -> Exemplar:
    return Exemplar(q, r, a)


BUILTIN: dict[str, list[Exemplar]] = {
    "number": [
        _ex("A baker made 24 rolls in the morning and 18 in the afternoon. She sold 30 of them. How many rolls are left?",
            "She made 24 + 18 = 42 rolls. After selling 30, 42 - 30 = 12 rolls are left.", "12"),
        _ex("Each box holds 6 pencils. Tom has 5 boxes and gives 7 pencils to his sister. How many pencils does Tom have now?",
            "Tom has 5 * 6 = 30 pencils. He gives away 7, so 30 - 7 = 23.", "23"),
        _ex("A farmer splits 45 apples equally among 9 baskets, then adds 2 apples to each basket. How many apples are in each basket?",
            "Each basket first gets 45 / 9 = 5 apples. Then 5 + 2 = 7.", "7"),
        _ex("Mia reads 15 pages a day for 4 days and then 10 more pages. How many pages did she read in total?",
            "In 4 days she reads 4 * 15 = 60 pages. Then 60 + 10 = 70.", "70"),
    ],
    "choice": [
        _ex("Where would you most likely keep milk cold? Answer choices: (A) cupboard, (B) refrigerator, (C) oven, (D) mailbox, (E) garage.",
            "Milk must be kept cold. A refrigerator is the appliance that keeps food cold.", "B"),
        _ex("What do people usually use to write on paper? Answer choices: (A) spoon, (B) hammer, (C) pen, (D) pillow, (E) cup.",
            "Writing on paper needs something that leaves ink or graphite. A pen does that.", "C"),
        _ex("If you are tired at night, what are you likely to do? Answer choices: (A) go to sleep, (B) run a race, (C) eat breakfast, (D) mow the lawn, (E) start work.",
            "Being tired at night is a sign the body needs rest. People go to sleep to rest.", "A"),
        _ex("Where can you borrow books for free? Answer choices: (A) bakery, (B) bank, (C) stadium, (D) library, (E) pharmacy.",
            "A library lends books to its members at no cost.", "D"),
    ],
    "yes_no": [
        _ex("A coin is heads up. Ana flips the coin. Ben does not flip the coin. Is the coin still heads up?",
            "The coin was flipped by Ana. So the coin was flipped 1 time, which is an odd number. The coin started heads up, so after an odd number of flips, it will be tails up.", "no"),
        _ex("Can a penguin fly over a mountain?",
            "Penguins are birds that cannot fly. So a penguin cannot fly over a mountain.", "no"),
        _ex("Is water wet when it is liquid at room temperature?",
            "Liquid water makes things it touches wet, and water is liquid at room temperature.", "yes"),
        _ex("A coin is heads up. Cara flips the coin. Dan flips the coin. Is the coin still heads up?",
            "The coin was flipped by Cara and Dan. So the coin was flipped 2 times, which is an even number. The coin started heads up, so after an even number of flips, it will still be heads up.", "yes"),
    ],
    "text": [
        _ex('Take the last letters of each words in "Alan Mona" and concatenate them.',
            'The last letter of "Alan" is "n". The last letter of "Mona" is "a". Concatenating them is "na".', "na"),
        _ex('Take the last letters of each words in "Rita Joel Sam" and concatenate them.',
            'The last letter of "Rita" is "a". The last letter of "Joel" is "l". The last letter of "Sam" is "m". Concatenating them is "alm".', "alm"),
        _ex('Take the last letters of each words in "Lucy Omar" and concatenate them.',
            'The last letter of "Lucy" is "y". The last letter of "Omar" is "r". Concatenating them is "yr".', "yr"),
        _ex('Take the last letters of each words in "Ivan Bea Tom Kim" and concatenate them.',
            'The last letter of "Ivan" is "n". The last letter of "Bea" is "a". The last letter of "Tom" is "m". The last letter of "Kim" is "m". Concatenating them is "namm".', "namm"),
    ],
}

_QA = re.compile(r"Q:\s*(.*?)\nA:\s*(.*?)(?=\nQ:|\Z)", re.S)


def parse_wei_prompt(text: str, trigger: str, where: str) -> list[Exemplar]:
    """Split a "Q: ...\\nA: ... The answer is X." prompt into exemplars."""
    exemplars = []
    for q, a in _QA.findall(text.strip()):
        idx = a.rfind(trigger)
        if idx < 0:
            raise DataError(f"exemplar answer has no '{trigger}' sentence: {a[:60]!r}", where)
        answer = a[idx + len(trigger):].strip().rstrip(".").strip()
        exemplars.append(Exemplar(q.strip(), a[:idx].strip(), answer))
    if not exemplars:
        raise DataError("no 'Q: ... A: ...' exemplars found", where)
    return exemplars


def load_exemplars(source: str, key: str | None, kind: str, trigger: str) -> list[Exemplar]:
    """`builtin` → the project's exemplars for `kind`; else a JSON file (see module doc)."""
    if source == "builtin":
        if kind == "mixed":
            # A dataset of several answer kinds: interleave the kinds' exemplars.
            return [shots[i] for i in range(4) for shots in BUILTIN.values()]
        if kind not in BUILTIN:
            raise SmlearnError(f"no built-in exemplars for answer kind '{kind}'")
        return list(BUILTIN[kind])
    path = Path(source).expanduser()
    if not path.exists():
        raise SmlearnError(f"prompts.exemplars: file not found: {source}")
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path, e.lineno) from None
    if isinstance(data, dict):
        if key is None or key not in data:
            raise DataError(f"key '{key}' not found (available: {', '.join(sorted(data))}); "
                            "set prompts.exemplars_key", path, field="exemplars_key")
        data = data[key]
    where = f"{path}[{key}]" if key else str(path)
    if isinstance(data, str):
        return parse_wei_prompt(data, trigger, where)
    if isinstance(data, list):
        out = []
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise DataError("exemplar must be an object", where, i + 1)
            for f in ("question", "rationale", "answer"):
                if not isinstance(item.get(f), str) or not item[f].strip():
                    raise DataError("missing or empty", where, i + 1, f)
            out.append(Exemplar(item["question"].strip(), item["rationale"].strip(), item["answer"].strip()))
        return out
    raise DataError("expected a prompt string or a list of exemplars", where)
