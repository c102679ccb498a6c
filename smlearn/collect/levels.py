"""Stage 2, collect — quality levels, the SFT set and preference pairs (pure functions).

A rationale is judged by the answer it actually supports — the model's
hint-free final answer given question + rationale — not by the hint it was
written for (docs/method.md):
- high (2): the final answer matches the gold answer;
- mid  (1): written for the gold answer, but its final answer is wrong;
- low  (0): written for a wrong answer, or a free sample, and its final answer is wrong.
An empty rationale supports nothing and is low whatever its final answer.

A hinted rationale that leaks its hint to the judge (`hint_leak`) keeps the
level the judge gave it but is left out of the SFT set and of the pairs, and
counted in the stats.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

from ..evaluate.intervals import cluster_mean_difference
from ..prompts import completion_text

HIGH, MID, LOW = 2, 1, 0
LEVEL_NAMES = {HIGH: "high", MID: "mid", LOW: "low"}


_HINT_WORD = re.compile(r"\bhint(?:s|ed|ing)?\b", re.IGNORECASE)


def hint_leak(rationale: str, hint: str | None, trigger: str) -> bool:
    """Whether a hinted rationale hands its hint to the judge.

    The judge completes the trigger after question + rationale, so a rationale
    that names the hint ("the hint says", "Hint:") or restates the answer
    sentence ("... the answer is 42 ...", any case and spacing) lets it copy
    the hinted answer: a spurious high. `split_rationale` already cut the text
    before its final trigger, so any trigger left in the rationale is a
    restatement. Free samples (`hint` None) are not checked: no hint was shown,
    and the conclusion a free rationale states is the answer it supports.
    """
    if hint is None:
        return False
    restated = " ".join(trigger.split()).lower() in " ".join(rationale.split()).lower()
    return restated or bool(_HINT_WORD.search(rationale))


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
    """High rationales without a hint leak, deduplicated per question, at most `cap` each
    (gold-hinted first, then free, then wrong)."""
    order = {"gold": 0, "free": 1, "wrong": 2}
    out = []
    for qid, rows in _by_question(judged).items():
        high = sorted((r for r in rows if r["level"] == HIGH and not r["hint_leak"]),
                      key=lambda r: order.get(r["source"], 3))
        for r in _unique(high)[:cap]:
            out.append({"question_id": qid, "rationale_id": r["id"], "prompt": prompts[qid],
                        "completion": completion_text(r["rationale"], gold[qid], trigger)})
    return out


def pair_answer(row: dict[str, Any]) -> str | None:
    """The answer a judged rationale's pair completion ends with, or None when the model wrote none.

    The parsed final answer when there is one, else the model's own raw final
    output (first line, final period dropped): a made-up placeholder such as
    "unknown" would be a cue the reward model learns and RL rollouts never show.
    """
    if row["final_answer"]:
        return row["final_answer"]
    raw = row["final_output"].strip().split("\n")[0].strip().rstrip(".").strip()
    return raw or None


PAIR_KINDS = ("right_over_wrong", "all_levels")


def build_pairs(judged: list[dict[str, Any]], prompts: dict[str, str], trigger: str, cap: int,
                seed: int = 0, kind: str = "right_over_wrong") -> list[dict[str, Any]]:
    """(chosen, rejected) of the same question with chosen's level strictly above rejected's.

    `kind` "right_over_wrong" (the default): chosen is high (its rationale
    supports the gold answer) and rejected is mid or low (it supports a wrong
    one): the method's core premise. "all_levels" adds mid over low, two
    rationales that both support a wrong answer and differ only in the hint they
    were written for; in the lab a reward model ranks those at chance and they
    crowd out the right-over-wrong pairs (docs/results.md, the RM table).

    Each completion ends with the answer its rationale supports (`pair_answer`:
    the model's final answer), which is what the reward model will see in RL
    rollouts. A row with an empty rationale, a hint leak or an empty final
    output is in no pair. When a question has more than `cap` pairs, `cap` are
    kept: right-over-wrong pairs first, then mid over low, a seeded sample
    within each group. Every pair is "train" until `split_pairs` holds some out.
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"pair kind {kind!r} is not one of {', '.join(PAIR_KINDS)}")
    rng = random.Random(seed)
    out = []
    for qid, rows in _by_question(judged).items():
        rows = _unique([r for r in rows if r["rationale"].strip() and not r["hint_leak"] and pair_answer(r)])
        pairs = [(c, r) for c in rows for r in rows
                 if c["level"] > r["level"] and (kind == "all_levels" or c["level"] == HIGH)]
        if len(pairs) > cap:
            right_over_wrong = [p for p in pairs if p[0]["level"] == HIGH]
            others = [p for p in pairs if p[0]["level"] != HIGH]
            pairs = rng.sample(right_over_wrong, min(cap, len(right_over_wrong)))
            pairs += rng.sample(others, cap - len(pairs))
        for c, r in pairs:
            out.append({"question_id": qid, "prompt": prompts[qid],
                        "chosen": completion_text(c["rationale"], pair_answer(c), trigger),
                        "rejected": completion_text(r["rationale"], pair_answer(r), trigger),
                        "chosen_level": c["level"], "rejected_level": r["level"],
                        "chosen_id": c["id"], "rejected_id": r["id"], "split": "train"})
    return out


def split_pairs(pairs: list[dict[str, Any]], fraction: float, seed: int,
                among: set[str] | None = None) -> list[dict[str, Any]]:
    """Hold out the pairs of a seeded `fraction` of the questions that have pairs (they evaluate the RM).

    Drawn among questions with pairs, not all questions: on a hard dataset most
    questions have no rationale that reaches the gold answer, hence no pair.
    `among`: draw only among these questions (the reward model's extra questions, `generate.rm_questions`);
    every other question's pairs train.
    """
    candidates = {p["question_id"] for p in pairs if among is None or p["question_id"] in among}
    heldout = heldout_questions(sorted(candidates), fraction, seed)
    return [{**p, "split": "heldout" if p["question_id"] in heldout else "train"} for p in pairs]


def heldout_questions(question_ids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded fraction of questions whose pairs evaluate the reward model."""
    ids = sorted(question_ids)
    random.Random(seed).shuffle(ids)
    n = round(len(ids) * fraction)
    if fraction > 0 and len(ids) >= 2:
        n = max(1, n)
    return set(ids[:n])


def rm_question_stats(judged: list[dict[str, Any]], pairs: list[dict[str, Any]], train_ids: set[str],
                      split: str) -> dict[str, Any]:
    """The reward model's extra questions (`generate.rm_questions`): how many, their levels and their pairs."""
    rows = [r for r in judged if r["question_id"] not in train_ids]
    extra = [p for p in pairs if p["question_id"] not in train_ids]
    return {"split": split, "questions": len({r["question_id"] for r in rows}), "rationales": len(rows),
            "levels": {name: sum(1 for r in rows if r["level"] == lvl) for lvl, name in LEVEL_NAMES.items()},
            "pairs": len(extra), "pairs_train": sum(p["split"] == "train" for p in extra),
            "pairs_heldout": sum(p["split"] == "heldout" for p in extra)}


def hint_leak_stats(judged: list[dict[str, Any]]) -> dict[str, Any]:
    """How many judged rationales leak their hint, overall, per source and per level."""
    leaked = [r for r in judged if r["hint_leak"]]
    by_source = dict.fromkeys((r["source"] for r in judged), 0)
    for r in leaked:
        by_source[r["source"]] += 1
    return {"count": len(leaked), "rate": len(leaked) / len(judged) if judged else 0.0, "by_source": by_source,
            "by_level": {name: sum(1 for r in leaked if r["level"] == lvl) for lvl, name in LEVEL_NAMES.items()}}


def hint_use_stats(judged: list[dict[str, Any]], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Does the model use the answer hint? Per source, how many rationales reach the gold answer (level high),
    and two differences of those shares in points, with 95 % intervals (questions resampled):
    `gold_lift` = gold-hinted minus free, `wrong_pull` = free minus wrong-hinted (None without both sources).

    Both near zero: the hint changes nothing the judge reads, so the hinted rationales are free samples by
    another name. Mid and low rationales are then draws from one distribution, which no reward model can
    order, and the collection is rejection sampling on free samples (STaR without rationalization).
    Rationales that leak their hint are left out, as they are from the SFT set and the pairs: copying the
    hint into the answer sentence is not reasoning towards it."""
    judged = [r for r in judged if not r.get("hint_leak")]
    by_source: dict[str, list[int]] = defaultdict(list)
    for r in judged:
        by_source[r["source"]].append(int(r["level"] == HIGH))
    right_rate = {src: {"n": len(v), "high": sum(v), "rate": sum(v) / len(v)} for src, v in sorted(by_source.items())}
    questions = _by_question(judged).values()

    def difference(a: str, b: str) -> dict[str, Any] | None:
        if a not in by_source or b not in by_source:
            return None
        clusters = [([int(r["level"] == HIGH) for r in rows if r["source"] == a],
                     [int(r["level"] == HIGH) for r in rows if r["source"] == b]) for rows in questions]
        point, lo, hi = cluster_mean_difference(clusters, resamples=resamples, seed=seed)
        return {"points": 100 * point, "ci95": [100 * lo, 100 * hi]}

    return {"right_rate": right_rate, "gold_lift": difference("gold", "free"),
            "wrong_pull": difference("free", "wrong")}


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
        "hint_leak": hint_leak_stats(judged),
        "hint_use": hint_use_stats(judged),
        "sft_examples": len(sft),
        "pairs": len(pairs),
        "pairs_train": sum(1 for p in pairs if p["split"] == "train"),
        "pairs_heldout": sum(1 for p in pairs if p["split"] == "heldout"),
    }
