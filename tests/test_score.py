"""Scoring completions against gold answers, on toy and real benchmark data."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from smlearn.answers import InvalidGoldError, UnknownKindError
from smlearn.evaluate.score import ExampleScore, ScoreResult, score_predictions

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared/data/benchmarks"


@dataclass
class Example:
    id: str
    answer: str
    kind: str
    choices: dict[str, str] | None = None
    question: str = ""


def _load(path: Path) -> list[Example]:
    examples = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        examples.append(Example(row["id"], row["answer"], row["kind"], row.get("choices"), row["question"]))
    return examples


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _toy_examples() -> list[Example]:
    return [
        Example("n1", "18", "number"),
        Example("n2", "2.5", "number"),
        Example("c1", "B", "choice", {"A": "bank", "B": "library", "C": "mall"}),
        Example("y1", "no", "yes_no"),
        Example("t1", "yajo", "text"),
    ]


def test_scores_each_kind():
    predictions = {
        "n1": "She makes 9 * 2 = $18. The answer is $18.00.\nQ: John has 3 apples.",
        "n2": "The answer is 3.",  # wrong
        "c1": "The answer is library.",
        "y1": "Thus, the coin is not heads up. So the answer is no.",
        "t1": 'The answer is "yajo".',
    }
    result = score_predictions(_toy_examples(), predictions)
    assert (result.correct, result.total, result.missing) == (4, 5, [])
    assert result.accuracy == pytest.approx(0.8)
    assert [s.correct for s in result.per_example] == [True, False, True, True, True]
    assert result.per_example[0] == ExampleScore(id="n1", gold="18", prediction="18", correct=True)
    assert result.per_example[1].prediction == "3"


def test_missing_predictions_count_wrong():
    predictions = {"n1": "The answer is 18.", "y1": "The answer is no.", "t1": None}
    result = score_predictions(_toy_examples(), predictions)
    assert result.missing == ["n2", "c1", "t1"]
    assert (result.correct, result.total) == (2, 5)
    assert result.summary_line() == "accuracy 0.4000 (2/5)"
    missing = [s for s in result.per_example if s.id in result.missing]
    assert all(s.prediction is None and not s.correct for s in missing)


def test_unextractable_prediction_is_wrong_but_not_missing():
    result = score_predictions([Example("n1", "18", "number")], {"n1": "I am not sure."})
    assert result.missing == [] and result.correct == 0
    assert result.per_example[0].prediction is None


def test_unknown_prediction_id_raises():
    with pytest.raises(ValueError, match="'n9'"):
        score_predictions(_toy_examples(), {"n1": "The answer is 18.", "n9": "The answer is 1."})


def test_unknown_kind_raises():
    with pytest.raises(UnknownKindError):
        score_predictions([Example("x", "5", "integer")], {"x": "The answer is 5."})


def test_invalid_gold_names_the_example():
    with pytest.raises(InvalidGoldError, match="'n1'"):
        score_predictions([Example("n1", "eighteen", "number")], {"n1": "The answer is 18."})


def test_summary_line_and_dict():
    result = ScoreResult(correct=13, total=16, per_example=[], missing=["a", "b"])
    assert result.summary_line() == "accuracy 0.8125 (13/16)"
    data = result.to_dict()
    assert data["accuracy"] == 0.8125
    assert (data["correct"], data["total"], data["missing"]) == (13, 16, 2)
    assert json.loads(json.dumps(data)) == data


def test_empty_result():
    result = score_predictions([], {})
    assert result.accuracy == 0.0
    assert result.summary_line() == "accuracy 0.0000 (0/0)"


def test_to_dict_per_example_is_json_friendly():
    result = score_predictions(_toy_examples(), {"n1": "The answer is 18."})
    data = json.loads(json.dumps(result.to_dict()))
    assert data["per_example"][0] == {"id": "n1", "gold": "18", "prediction": "18", "correct": True}
    assert data["missing"] == 4


def _benchmark(name: str) -> Path:
    path = BENCHMARKS / name / "test.jsonl"
    if not path.exists():
        pytest.skip(f"benchmark data not found: {path}")
    return path


def test_gsm8k_reference_solutions_score_perfectly():
    """The human GSM8K solutions, in the few-shot CoT format, are all correct."""
    path = _benchmark("gsm8k")
    rows = _rows(path)
    assert len(rows) == 1319
    predictions = {row["id"]: row["rationale"] + "\nThe answer is " + row["answer"] + "." for row in rows}
    result = score_predictions(_load(path), predictions)
    assert result.summary_line() == "accuracy 1.0000 (1319/1319)"
    assert result.missing == []


def test_gsm8k_reference_solutions_without_trigger_mostly_score():
    """Without the trigger the last-number fallback still finds most answers.

    Not all: some solutions end with a restatement ("... is $18 per day") or
    a unit conversion, so this checks a floor, not perfection.
    """
    path = _benchmark("gsm8k")
    rows = _rows(path)
    predictions = {row["id"]: row["rationale"] for row in rows}
    result = score_predictions(_load(path), predictions)
    assert result.accuracy > 0.9


def test_gsm8k_wrong_answers_score_zero():
    path = _benchmark("gsm8k")
    rows = _rows(path)
    predictions = {row["id"]: row["rationale"] + f"\nThe answer is {float(row['answer']) + 1:g}." for row in rows}
    assert score_predictions(_load(path), predictions).correct == 0


BENCHMARK_NAMES = sorted(p.parent.name for p in BENCHMARKS.glob("*/test.jsonl")) or ["(none)"]


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_every_benchmark_scores_perfectly_on_gold(name):
    path = _benchmark(name)
    examples = _load(path)
    predictions = {ex.id: f"Let's think step by step. The answer is {ex.answer}." for ex in examples}
    result = score_predictions(examples, predictions)
    assert result.correct == result.total == len(examples) > 0


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_every_benchmark_scores_zero_on_wrong_answers(name):
    path = _benchmark(name)
    examples = _load(path)
    predictions = {ex.id: f"The answer is {_wrong_answer(ex)}." for ex in examples}
    assert score_predictions(examples, predictions).correct == 0


def _wrong_answer(example: Example) -> str:
    if example.kind == "number":
        return f"{float(example.answer) * 2 + 1:g}"
    if example.kind == "choice":
        return next(letter for letter in example.choices if letter != example.answer)
    if example.kind == "yes_no":
        return "no" if example.answer == "yes" else "yes"
    return example.answer + "x"


def test_choice_benchmark_scores_option_text():
    """Models often answer with the option text instead of its letter."""
    path = _benchmark("commonsense_qa")
    # Two questions list the same text under two letters; text can't tell them apart.
    examples = [ex for ex in _load(path)
                if list(ex.choices.values()).count(ex.choices[ex.answer]) == 1]
    assert len(examples) > 1200
    predictions = {ex.id: f"So the answer is {ex.choices[ex.answer]}." for ex in examples}
    result = score_predictions(examples, predictions)
    assert result.accuracy == 1.0


def test_top_level_names_are_the_documented_functions():
    """`smlearn.evaluate` is the eval stage's function (as the README uses it), not the package of the same
    name, and `smlearn.score` scores a predictions file."""
    import smlearn
    from smlearn import pipeline
    from smlearn.evaluate.score import score

    assert smlearn.evaluate is pipeline.evaluate and smlearn.score is score
