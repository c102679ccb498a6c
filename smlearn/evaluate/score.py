"""Scoring raw completions against gold answers: accuracy (the eval stage's, and `smlearn score`'s).

Generation writes raw completions keyed by example id; scoring extracts an
answer from each (see `smlearn.answers`) and compares it with the
example's gold answer. Keeping the two steps apart means completions can be
re-scored without re-generating: `score(data, predictions)` does it for a
predictions file, with no model (`smlearn score`, `smlearn.score`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from smlearn.answers import InvalidGoldError, answers_match, extract_answer, normalize_answer
from smlearn.data import load_jsonl_examples
from smlearn.errors import DataError, SmlearnError
from smlearn.io import iter_jsonl
from smlearn.prompts import DEFAULT_TRIGGER


class UnknownPredictionError(SmlearnError, ValueError):
    """Predictions for ids that are not among the examples (likely the wrong file)."""


@dataclass
class ExampleScore:
    id: str
    gold: str  # normalised gold answer
    prediction: str | None  # extracted, normalised answer; None if none was found
    correct: bool


@dataclass
class ScoreResult:
    correct: int
    total: int
    per_example: list[ExampleScore] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ids with no prediction (counted wrong)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def summary_line(self) -> str:
        return f"accuracy {self.accuracy:.4f} ({self.correct}/{self.total})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "missing": len(self.missing),
            "missing_ids": list(self.missing),
            "per_example": [asdict(score) for score in self.per_example],
        }


def score_predictions(examples: Iterable[Any], predictions: dict[str, str],
                      trigger: str = DEFAULT_TRIGGER) -> ScoreResult:
    """Score raw completions (`predictions`: id -> completion) against `examples`.

    `examples` are objects with `id`, `answer`, `kind` and `choices`
    attributes. An example without a prediction (or with a None one) is
    counted wrong and listed in `missing`. A prediction whose id is not an
    example's raises UnknownPredictionError, since it means the predictions
    belong to another data set or split.
    """
    examples = list(examples)
    _check_prediction_ids(examples, predictions)
    scores: list[ExampleScore] = []
    missing: list[str] = []
    for example in examples:
        completion = predictions.get(example.id)
        if completion is None:
            missing.append(example.id)
        scores.append(_score_example(example, completion, trigger))
    return ScoreResult(correct=sum(s.correct for s in scores), total=len(scores),
                       per_example=scores, missing=missing)


def _check_prediction_ids(examples: list[Any], predictions: dict[str, str]) -> None:
    known = {example.id for example in examples}
    for prediction_id in predictions:
        if prediction_id not in known:
            raise UnknownPredictionError(
                f"prediction for unknown example id {prediction_id!r} "
                f"({len(known)} examples; are the predictions from another data set?)")


def _score_example(example: Any, completion: str | None, trigger: str) -> ExampleScore:
    kind = example.kind
    gold = normalize_answer(example.answer, kind)
    if gold is None:
        raise InvalidGoldError(
            f"example {example.id!r}: gold answer {example.answer!r} is not a valid {kind} answer")
    prediction = None
    if completion is not None:
        prediction = extract_answer(completion, kind, getattr(example, "choices", None), trigger)
    return ExampleScore(id=example.id, gold=gold, prediction=prediction,
                        correct=answers_match(prediction, gold, kind))


# ---------------------------------------------------------------------------
# A predictions file against a dataset file (`smlearn score`)
# ---------------------------------------------------------------------------

def score(data: str | Path, predictions: str | Path, trigger: str = DEFAULT_TRIGGER) -> ScoreResult:
    """Score a predictions file against a dataset file, without any model."""
    examples = load_jsonl_examples(data)
    return score_predictions(examples, read_predictions(predictions), trigger=trigger)


def read_predictions(path: str | Path) -> dict[str, str]:
    """`{"id": ..., "completion": "<raw model output>"}` per line; each problem names file, line, field."""
    predictions: dict[str, str] = {}
    for line, row in iter_jsonl(path):
        for field_name in ("id", "completion"):
            if field_name not in row:
                raise DataError("missing required field", path, line, field_name)
            if not isinstance(row[field_name], (str, int)) or isinstance(row[field_name], bool):
                raise DataError(f"expected a string, got {type(row[field_name]).__name__}", path, line, field_name)
        pid = str(row["id"])
        if pid in predictions:
            raise DataError(f"duplicate prediction for id '{pid}'", path, line, "id")
        predictions[pid] = str(row["completion"])
    if not predictions:
        raise SmlearnError(f"{path}: no predictions (the file is empty)")
    return predictions
