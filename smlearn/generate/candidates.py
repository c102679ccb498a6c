"""Wrong candidate answers for answer-conditioned rationalization (docs/method.md, stage 1).

- choice: the other options;
- yes_no: the opposite;
- number / text: wrong answers the model itself stated in its free CoT samples
  (most frequent first); if there are too few, a perturbed gold answer.
"""
from __future__ import annotations

import random
from collections import Counter

from ..data import Example
from ..answers import answers_match, normalize_answer


def n_wrong_candidates(example: Example, max_wrong: int) -> int:
    """How many wrong candidates `wrong_candidates` returns (fixed before sampling)."""
    if example.kind == "choice":
        return min(max_wrong, len(example.choices or {}) - 1)
    if example.kind == "yes_no":
        return min(max_wrong, 1)
    return max_wrong


def perturb_gold(example: Example, rng: random.Random, taken: set[str]) -> str:
    """A plausible wrong answer near the gold one (numbers ± small offsets or ×10; text edits)."""
    if example.kind == "number":
        gold = float(example.answer)
        deltas = [1, -1, 2, -2, 10, -10, 5, -5]
        rng.shuffle(deltas)
        options = [gold + d for d in deltas] + [gold * 10, gold / 2 if gold else 3]
        for value in options:
            text = normalize_answer(str(value), "number")
            if text and text not in taken and not answers_match(text, example.answer, "number"):
                return text
        return normalize_answer(str(gold + 100 + len(taken)), "number")  # type: ignore[return-value]
    letters = list(example.answer)
    for _ in range(20):
        edited = letters[:]
        if len(edited) > 1 and rng.random() < 0.5:
            i = rng.randrange(len(edited) - 1)
            edited[i], edited[i + 1] = edited[i + 1], edited[i]
        else:
            i = rng.randrange(len(edited) or 1)
            edited[i:i + 1] = [rng.choice("abcdefghijklmnopqrstuvwxyz")]
        text = "".join(edited)
        if text not in taken and text != example.answer:
            return text
    return example.answer + "x" * (len(taken) + 1)


def wrong_candidates(example: Example, max_wrong: int, free_answers: list[str | None], rng: random.Random) -> list[str]:
    n = n_wrong_candidates(example, max_wrong)
    if example.kind == "choice":
        others = [k for k in sorted(example.choices or {}) if k != example.answer]
        return rng.sample(others, n)
    if example.kind == "yes_no":
        return ["no" if example.answer == "yes" else "yes"][:n]
    counts = Counter(a for a in free_answers if a is not None and not answers_match(a, example.answer, example.kind))
    chosen = [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:n]
    taken = set(chosen)
    while len(chosen) < n:
        extra = perturb_gold(example, rng, taken)
        chosen.append(extra)
        taken.add(extra)
    return chosen
