"""Collection on hand-made cases: levels, the SFT set and the pairs exactly as method.md specifies."""
from smlearn.collect.levels import (HIGH, LOW, MID, assign_level, build_pairs, build_sft, collect_stats,
                                    heldout_questions)

TRIGGER = "The answer is"


def row(rid, qid, source, rationale, final, correct):
    return {"id": rid, "question_id": qid, "source": source, "rationale": rationale, "final_answer": final,
            "final_correct": correct, "level": assign_level(source, correct, rationale)}


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


def test_pairs_have_chosen_strictly_above_rejected_within_a_question():
    pairs = build_pairs(_judged(), PROMPTS, TRIGGER, cap=100, heldout={"q2"})
    got = {(p["chosen_id"], p["rejected_id"]) for p in pairs}
    # q1 unique rationales: high {gold/0, free/0}, mid {gold/2}, low {wrong/1}; q2: mid {gold}, low {wrong}.
    expected = {
        ("q1/gold/0/0", "q1/gold/0/2"), ("q1/gold/0/0", "q1/wrong/1/0"),
        ("q1/free/0/0", "q1/gold/0/2"), ("q1/free/0/0", "q1/wrong/1/0"),
        ("q1/gold/0/2", "q1/wrong/1/0"),
        ("q2/gold/0/0", "q2/wrong/1/0"),
    }
    assert got == expected
    for p in pairs:
        assert p["chosen_level"] > p["rejected_level"]
        assert p["split"] == ("heldout" if p["question_id"] == "q2" else "train")
    mid_low = next(p for p in pairs if p["chosen_id"] == "q1/gold/0/2")
    # Completions end with the answer the rationale supports, as RL rollouts will.
    assert mid_low["chosen"] == " 3 * 4 = 12. The answer is 12."
    assert mid_low["rejected"] == " 3 - 4 = -1. The answer is -1."


def test_pairs_cap_is_a_seeded_sample():
    a = build_pairs(_judged(), PROMPTS, TRIGGER, cap=2, heldout=set(), seed=3)
    b = build_pairs(_judged(), PROMPTS, TRIGGER, cap=2, heldout=set(), seed=3)
    assert a == b
    assert sum(1 for p in a if p["question_id"] == "q1") == 2


def test_heldout_split_and_stats():
    held = heldout_questions([f"q{i}" for i in range(20)], 0.25, seed=0)
    assert len(held) == 5 and held == heldout_questions([f"q{i}" for i in range(20)], 0.25, seed=0)
    judged = _judged()
    sft = build_sft(judged, PROMPTS, GOLD, TRIGGER, cap=4)
    pairs = build_pairs(judged, PROMPTS, TRIGGER, cap=100, heldout={"q2"})
    stats = collect_stats(judged, sft, pairs, ["q1", "q2", "q3"], "toy")
    assert stats["levels"] == {"high": 3, "mid": 2, "low": 2}
    assert stats["levels_by_source"]["gold"] == {"high": 2, "mid": 2, "low": 0}
    assert stats["questions_with_high"] == 1 and abs(stats["yield_per_question"] - 1 / 3) < 1e-9
    assert stats["pairs_train"] == 5 and stats["pairs_heldout"] == 1 and stats["sft_examples"] == 2
