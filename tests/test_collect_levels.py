"""Collection on hand-made cases: levels, the SFT set and the pairs exactly as docs/method.md specifies."""
from types import SimpleNamespace

import pytest

from smlearn.collect import collect as collect_module
from smlearn.collect.levels import (HIGH, LOW, MID, assign_level, build_pairs, build_sft, collect_stats,
                                    heldout_questions, hint_leak, hint_use_stats, split_pairs)
from smlearn.report.report import describe_hint_use
from smlearn.data import Example
from smlearn.prompts import BUILTIN, PromptBuilder

TRIGGER = "The answer is"


def row(rid, qid, source, rationale, final, correct, final_output=None, leak=False):
    """A judged row; `final_output` (the raw continuation after the trigger) defaults to " <final>."."""
    return {"id": rid, "question_id": qid, "source": source, "rationale": rationale, "final_answer": final,
            "final_output": f" {final}." if final_output is None else final_output,
            "final_correct": correct, "level": assign_level(source, correct, rationale), "hint_leak": leak}


def test_levels_follow_the_final_answer_not_the_hint():
    assert assign_level("gold", True, "r") == HIGH
    assert assign_level("wrong", True, "r") == HIGH      # written for a wrong answer but supports the gold one
    assert assign_level("free", True, "r") == HIGH
    assert assign_level("gold", False, "r") == MID
    assert assign_level("wrong", False, "r") == LOW
    assert assign_level("free", False, "r") == LOW
    assert assign_level("gold", True, "   ") == LOW      # an empty rationale supports nothing


def _judged():
    return [
        row("q1/gold/0/0", "q1", "gold", "3 + 4 = 7.", "7", True),
        row("q1/gold/0/1", "q1", "gold", "3  +  4 = 7.", "7", True),   # duplicate after whitespace folding
        row("q1/gold/0/2", "q1", "gold", "3 * 4 = 12.", "12", False),
        row("q1/wrong/1/0", "q1", "wrong", "3 - 4 = -1.", "-1", False),
        row("q1/free/0/0", "q1", "free", "Add them: 7.", "7", True),
        row("q2/gold/0/0", "q2", "gold", "It is blue.", "B", False),
        row("q2/wrong/1/0", "q2", "wrong", "It is red.", "A", False),
    ]


PROMPTS = {"q1": "Q: 3 and 4?\nA:", "q2": "Q: color?\nA:"}
GOLD = {"q1": "7", "q2": "C"}


def test_sft_set_is_high_only_deduplicated_and_capped():
    sft = build_sft(_judged(), PROMPTS, GOLD, TRIGGER, cap=4)
    assert [s["rationale_id"] for s in sft] == ["q1/gold/0/0", "q1/free/0/0"]
    assert sft[0]["completion"] == " 3 + 4 = 7. The answer is 7."
    assert sft[0]["prompt"] == PROMPTS["q1"]
    assert build_sft(_judged(), PROMPTS, GOLD, TRIGGER, cap=1)[0]["rationale_id"] == "q1/gold/0/0"
    assert len(build_sft(_judged(), PROMPTS, GOLD, TRIGGER, cap=1)) == 1


RIGHT_OVER_WRONG = {("q1/gold/0/0", "q1/gold/0/2"), ("q1/gold/0/0", "q1/wrong/1/0"),
                    ("q1/free/0/0", "q1/gold/0/2"), ("q1/free/0/0", "q1/wrong/1/0")}


def test_default_pairs_are_right_over_wrong_only():
    # q1 unique rationales: high {gold/0, free/0}, mid {gold/2}, low {wrong/1}; q2: mid {gold}, low {wrong}.
    pairs = build_pairs(_judged(), PROMPTS, TRIGGER, cap=100)
    assert {(p["chosen_id"], p["rejected_id"]) for p in pairs} == RIGHT_OVER_WRONG
    assert all(p["chosen_level"] == HIGH and p["rejected_level"] < HIGH for p in pairs)
    # q2 has no rationale that supports the gold answer: no pair.
    assert not [p for p in pairs if p["question_id"] == "q2"]
    with pytest.raises(ValueError, match="pair kind"):
        build_pairs(_judged(), PROMPTS, TRIGGER, cap=100, kind="mid_over_low")


def test_all_level_pairs_have_chosen_strictly_above_rejected_within_a_question():
    pairs = build_pairs(_judged(), PROMPTS, TRIGGER, cap=100, kind="all_levels")
    got = {(p["chosen_id"], p["rejected_id"]) for p in pairs}
    expected = RIGHT_OVER_WRONG | {("q1/gold/0/2", "q1/wrong/1/0"), ("q2/gold/0/0", "q2/wrong/1/0")}
    assert got == expected
    for p in pairs:
        assert p["chosen_level"] > p["rejected_level"] and p["split"] == "train"
    mid_low = next(p for p in pairs if p["chosen_id"] == "q1/gold/0/2")
    # Completions end with the answer the rationale supports, as RL rollouts will.
    assert mid_low["chosen"] == " 3 * 4 = 12. The answer is 12."
    assert mid_low["rejected"] == " 3 - 4 = -1. The answer is -1."


def test_pairs_end_with_the_models_own_final_output_never_a_made_up_answer():
    judged = [
        row("q1/gold/0/0", "q1", "gold", "3 + 4 = 7.", "7", True),
        row("q1/wrong/1/0", "q1", "wrong", "It is about seven.", None, False, final_output=" about seven.\n"),
        row("q1/wrong/2/0", "q1", "wrong", "I cannot tell.", None, False, final_output="  \n"),   # nothing written
        row("q2/gold/0/0", "q2", "gold", "It is blue.", "C", True),
        row("q2/wrong/1/0", "q2", "wrong", "Nobody knows.", None, False, final_output=" unknown."),
    ]
    pairs = build_pairs(judged, PROMPTS, TRIGGER, cap=100)
    by_ids = {(p["chosen_id"], p["rejected_id"]): p for p in pairs}
    # The rationale with an empty final output is in no pair.
    assert set(by_ids) == {("q1/gold/0/0", "q1/wrong/1/0"), ("q2/gold/0/0", "q2/wrong/1/0")}
    assert by_ids["q1/gold/0/0", "q1/wrong/1/0"]["rejected"] == " It is about seven. The answer is about seven."
    # "unknown" appears only where the model wrote it.
    assert [p["rejected_id"] for p in pairs if "unknown" in p["chosen"] + p["rejected"]] == ["q2/wrong/1/0"]


def test_pairs_cap_is_a_seeded_sample():
    a = build_pairs(_judged(), PROMPTS, TRIGGER, cap=2, seed=3, kind="all_levels")
    b = build_pairs(_judged(), PROMPTS, TRIGGER, cap=2, seed=3, kind="all_levels")
    assert a == b
    assert sum(1 for p in a if p["question_id"] == "q1") == 2
    # Capped pairs are right-over-wrong first: q1 has four with a high chosen rationale and one mid > low.
    assert all(p["chosen_level"] == HIGH for p in a if p["question_id"] == "q1")
    # One high, three mid and three low rationales: 6 high-over-x pairs and 9 mid-over-low ones.
    judged = [row("q1/gold/0/0", "q1", "gold", "3 + 4 = 7.", "7", True)]
    judged += [row(f"q1/gold/1/{i}", "q1", "gold", f"mid rationale {i}.", str(10 + i), False) for i in range(3)]
    judged += [row(f"q1/wrong/2/{i}", "q1", "wrong", f"low rationale {i}.", str(20 + i), False) for i in range(3)]
    for seed in range(10):
        kept = build_pairs(judged, PROMPTS, TRIGGER, cap=8, seed=seed, kind="all_levels")
        assert sorted(p["chosen_level"] for p in kept) == [MID, MID] + [HIGH] * 6, seed


def test_heldout_split_and_stats():
    held = heldout_questions([f"q{i}" for i in range(20)], 0.25, seed=0)
    assert len(held) == 5 and held == heldout_questions([f"q{i}" for i in range(20)], 0.25, seed=0)
    judged = _judged()
    sft = build_sft(judged, PROMPTS, GOLD, TRIGGER, cap=4)
    pairs = split_pairs(build_pairs(judged, PROMPTS, TRIGGER, cap=100, kind="all_levels"), 0.5, seed=0)
    assert split_pairs(pairs, 0.5, seed=0) == pairs
    held_q = {p["question_id"] for p in pairs if p["split"] == "heldout"}
    assert len(held_q) == 1 and {p["split"] for p in pairs if p["question_id"] not in held_q} == {"train"}
    stats = collect_stats(judged, sft, pairs, ["q1", "q2", "q3"], "toy")
    assert stats["levels"] == {"high": 3, "mid": 2, "low": 2}
    assert stats["levels_by_source"]["gold"] == {"high": 2, "mid": 2, "low": 0}
    assert stats["questions_with_high"] == 1 and abs(stats["yield_per_question"] - 1 / 3) < 1e-9
    assert stats["pairs_train"] + stats["pairs_heldout"] == 6 and stats["pairs_heldout"] in (1, 5)
    assert stats["sft_examples"] == 2


def test_heldout_questions_are_drawn_among_questions_with_pairs():
    # 40 questions, 4 of them with a high rationale: right-over-wrong pairs come from those 4 only, and a
    # held-out fraction of 0.25 holds out one of them, never every pair (a split over all 40 questions would
    # often hold out none of the 4 or, with few of them, all).
    judged = []
    for i in range(40):
        judged.append(row(f"q{i}/wrong/1/0", f"q{i}", "wrong", f"wrong {i}.", "1", False))
        if i % 10 == 0:
            judged.append(row(f"q{i}/gold/0/0", f"q{i}", "gold", f"right {i}.", "2", True))
    prompts = {f"q{i}": f"Q: {i}?\nA:" for i in range(40)}
    pairs = split_pairs(build_pairs(judged, prompts, TRIGGER, cap=8), 0.25, seed=0)
    assert len(pairs) == 4 and sorted(p["split"] for p in pairs) == ["heldout", "train", "train", "train"]


def test_hint_leak_flags_hinted_rationales_that_mention_the_hint_or_restate_the_answer():
    assert not hint_leak("3 + 4 = 7.", "7", TRIGGER)
    assert not hint_leak("I think the chintz is 7.", "7", TRIGGER)       # "hint" inside other words
    assert hint_leak("3 + 4 = 7, so THE ANSWER IS 7", "7", TRIGGER)     # the trigger restated, any case
    assert hint_leak("3 + 4 = 7, so the answer\n is 7", "7", TRIGGER)  # ... and any spacing
    assert hint_leak("The hint says 12, so 12.", "12", TRIGGER)
    assert hint_leak("As the Hint shows, 12.", "12", TRIGGER)
    assert hint_leak("Hint: 12. 3 * 4 = 12.", "12", TRIGGER)
    assert hint_leak("As hinted, 12.", "12", TRIGGER)
    # A free sample saw no hint: restating its own conclusion is the answer it supports.
    assert not hint_leak("3 + 4 = 7, so the answer is 7. No hint needed.", None, TRIGGER)


def test_judging_marks_hint_leaks(monkeypatch):
    monkeypatch.setattr(collect_module, "generate_texts",
                        lambda model, tokenizer, prompts, params, **kw: [" 7."] * len(prompts))
    by_id = {"q1": Example("q1", "What is 3 + 4?", "7", "number")}
    rationales = [
        {"id": "q1/gold/0/0", "question_id": "q1", "source": "gold", "candidate": "7", "rationale": "3 + 4 = 7."},
        {"id": "q1/gold/0/1", "question_id": "q1", "source": "gold", "candidate": "7",
         "rationale": "The hint says 7."},
        {"id": "q1/wrong/1/0", "question_id": "q1", "source": "wrong", "candidate": "8",
         "rationale": "3 + 4 = 8, the answer is 8"},
        {"id": "q1/free/0/0", "question_id": "q1", "source": "free", "candidate": None,
         "rationale": "3 + 4 = 7, the answer is 7"},
    ]
    judged = collect_module._judge_chunk(None, None, PromptBuilder(BUILTIN["number"]), by_id, rationales,
                                         SimpleNamespace(answer_max_new_tokens=8))
    assert [j["hint_leak"] for j in judged] == [False, True, True, False]
    assert all(j["level"] == HIGH for j in judged)   # the level is still the judge's; the flag keeps it out of training


def test_leaked_rationales_are_kept_out_of_sft_and_pairs_and_counted():
    judged = [
        row("q1/gold/0/0", "q1", "gold", "3 + 4 = 7.", "7", True),
        row("q1/gold/0/1", "q1", "gold", "The hint says 7.", "7", True, leak=True),            # a spurious high
        row("q1/wrong/1/0", "q1", "wrong", "3 - 4 = -1.", "-1", False),
        row("q1/wrong/2/0", "q1", "wrong", "So the answer is 12.", "12", False, leak=True),
        row("q1/free/0/0", "q1", "free", "Add them: 7.", "7", True),
    ]
    sft = build_sft(judged, PROMPTS, GOLD, TRIGGER, cap=4)
    assert [s["rationale_id"] for s in sft] == ["q1/gold/0/0", "q1/free/0/0"]
    pairs = build_pairs(judged, PROMPTS, TRIGGER, cap=100)
    assert {(p["chosen_id"], p["rejected_id"]) for p in pairs} == {("q1/gold/0/0", "q1/wrong/1/0"),
                                                                   ("q1/free/0/0", "q1/wrong/1/0")}
    stats = collect_stats(judged, sft, pairs, ["q1"], "toy")
    assert stats["hint_leak"] == {"count": 2, "rate": 2 / 5, "by_source": {"gold": 1, "wrong": 1, "free": 0},
                                  "by_level": {"high": 1, "mid": 0, "low": 1}}
    assert stats["levels"] == {"high": 3, "mid": 0, "low": 2}   # levels still count every judged rationale


def _hint_judged(gold_right, free_right, wrong_right, n_questions=40):
    """Per question, 4 gold-hinted, 4 free and 2 wrong-hinted rationales; the callables say which are right."""
    judged = []
    for q in range(n_questions):
        for source, k, right in (("gold", 4, gold_right), ("free", 4, free_right), ("wrong", 2, wrong_right)):
            for i in range(k):
                ok = right(q, i)
                judged.append(row(f"q{q}/{source}/0/{i}", f"q{q}", source, f"r {q} {i}.", "7" if ok else "8", ok))
    return judged


def test_hint_use_measures_how_far_the_hint_moves_the_answers():
    # A model that follows its hint: gold-hinted rationales are right, wrong-hinted ones never, free half the time.
    follows = hint_use_stats(_hint_judged(lambda q, i: True, lambda q, i: i % 2 == 0, lambda q, i: False))
    assert follows["right_rate"] == {"free": {"n": 160, "high": 80, "rate": 0.5},
                                     "gold": {"n": 160, "high": 160, "rate": 1.0},
                                     "wrong": {"n": 80, "high": 0, "rate": 0.0}}
    assert follows["gold_lift"]["points"] == pytest.approx(50.0) and follows["gold_lift"]["ci95"][0] > 0
    assert follows["wrong_pull"]["points"] == pytest.approx(50.0) and follows["wrong_pull"]["ci95"][0] > 0
    assert "uses the hint" in describe_hint_use(follows)
    # A model that ignores it: every source right on the same questions (easy ones), so the lift is 0 and its
    # interval holds 0 (questions resampled: within-question agreement gives no false precision).
    ignores = hint_use_stats(_hint_judged(*(lambda q, i: q % 3 == 0,) * 3))
    lift = ignores["gold_lift"]
    assert lift["points"] == 0 and lift["ci95"][0] <= 0 <= lift["ci95"][1]
    assert "no measurable effect of the hint" in describe_hint_use(ignores)
    # No free samples: no reference to measure the hint against.
    no_free = hint_use_stats([r for r in _hint_judged(*(lambda q, i: True,) * 3) if r["source"] != "free"])
    assert no_free["gold_lift"] is None and no_free["wrong_pull"] is None
    assert "minus free" not in describe_hint_use(no_free)
    assert collect_stats(_judged(), [], [], ["q1", "q2", "q3"], "toy")["hint_use"]["right_rate"]["gold"] == \
        {"n": 4, "high": 2, "rate": 0.5}
    # A rationale that leaks its hint is left out (as from SFT and the pairs): copying is not using the hint.
    leaky = _judged() + [row("q3/gold/0/0", "q3", "gold", "The hint says 7.", "7", True, leak=True)]
    assert hint_use_stats(leaky)["right_rate"]["gold"] == {"n": 4, "high": 2, "rate": 0.5}
