"""Stage 2 — quality levels, the SFT set and preference pairs (pure functions).

A rationale is judged by the answer it actually supports — the model's
hint-free final answer given question + rationale — not by the hint it was
written for (method.md):
- high (2): the final answer matches the gold answer;
- mid  (1): written for the gold answer, but its final answer is wrong;
- low  (0): written for a wrong answer, or a free sample, and its final answer is wrong.
An empty rationale supports nothing and is low whatever its final answer.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from ..prompts import completion_text

HIGH, MID, LOW = 2, 1, 0
LEVEL_NAMES = {HIGH: "high", MID: "mid", LOW: "low"}


def assign_level(source: str, final_correct: bool, rationale: str) -> int:
    if not rationale.strip():
        return LOW
    if final_correct:
        return HIGH
    return MID if source == "gold" else LOW


def _dedup_key(rationale: str) -> str:
    return " ".join(rationale.lower().split())


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First occurrence of each rationale text (case and whitespace folded)."""
    seen, out = set(), []
    for r in rows:
        key = _dedup_key(r["rationale"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _by_question(judged: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in judged:
        groups[r["question_id"]].append(r)
    return groups


def build_sft(judged: list[dict[str, Any]], prompts: dict[str, str], gold: dict[str, str], trigger: str,
              cap: int) -> list[dict[str, Any]]:
    """High rationales, deduplicated per question, at most `cap` each (gold-hinted first, then free, then wrong)."""
    order = {"gold": 0, "free": 1, "wrong": 2}
    out = []
    for qid, rows in _by_question(judged).items():
        high = sorted((r for r in rows if r["level"] == HIGH), key=lambda r: order.get(r["source"], 3))
        for r in _unique(high)[:cap]:
            out.append({"question_id": qid, "rationale_id": r["id"], "prompt": prompts[qid],
                        "completion": completion_text(r["rationale"], gold[qid], trigger)})
    return out


def build_pairs(judged: list[dict[str, Any]], prompts: dict[str, str], trigger: str, cap: int,
                heldout: set[str], seed: int = 0) -> list[dict[str, Any]]:
    """(chosen, rejected) of the same question with chosen's level strictly above rejected's.

    Each completion ends with the answer its rationale supports (the model's
    final answer), which is what the reward model will see in RL rollouts.
    When a question has more than `cap` pairs, a seeded sample keeps `cap`.
    """
    rng = random.Random(seed)
    out = []
    for qid, rows in _by_question(judged).items():
        rows = [r for r in _unique(rows) if r["rationale"].strip()]
        pairs = [(c, r) for c in rows for r in rows if c["level"] > r["level"]]
        if len(pairs) > cap:
            pairs = rng.sample(pairs, cap)
        for c, r in pairs:
            out.append({"question_id": qid, "prompt": prompts[qid],
                        "chosen": completion_text(c["rationale"], c["final_answer"] or "unknown", trigger),
                        "rejected": completion_text(r["rationale"], r["final_answer"] or "unknown", trigger),
                        "chosen_level": c["level"], "rejected_level": r["level"],
                        "chosen_id": c["id"], "rejected_id": r["id"],
                        "split": "heldout" if qid in heldout else "train"})
    return out


def heldout_questions(question_ids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded fraction of questions whose pairs evaluate the reward model."""
    ids = sorted(question_ids)
    random.Random(seed).shuffle(ids)
    n = round(len(ids) * fraction)
    if fraction > 0 and len(ids) >= 2:
        n = max(1, n)
    return set(ids[:n])


def collect_stats(judged: list[dict[str, Any]], sft: list[dict], pairs: list[dict], questions: list[str],
                  dataset: str) -> dict[str, Any]:
    levels = {name: sum(1 for r in judged if r["level"] == lvl) for lvl, name in LEVEL_NAMES.items()}
    by_source: dict[str, dict[str, int]] = defaultdict(lambda: {n: 0 for n in LEVEL_NAMES.values()})
    for r in judged:
        by_source[r["source"]][LEVEL_NAMES[r["level"]]] += 1
    high_per_q = defaultdict(int)
    for r in judged:
        if r["level"] == HIGH:
            high_per_q[r["question_id"]] += 1
    with_high = sum(1 for q in questions if high_per_q[q] > 0)
    return {
        "dataset": dataset,
        "questions": len(questions),
        "rationales": len(judged),
        "levels": levels,
        "levels_by_source": dict(by_source),
        "per_dataset": {dataset: {"questions": len(questions), "levels": levels}},
        "questions_with_high": with_high,
        "yield_per_question": with_high / len(questions) if questions else 0.0,
        "high_per_question_mean": sum(high_per_q.values()) / len(questions) if questions else 0.0,
        "sft_examples": len(sft),
        "pairs": len(pairs),
        "pairs_train": sum(1 for p in pairs if p["split"] == "train"),
        "pairs_heldout": sum(1 for p in pairs if p["split"] == "heldout"),
    }
