"""`smlearn score`: score a predictions file against a dataset file, without any model."""
from __future__ import annotations

from pathlib import Path

from .data import load_jsonl_examples
from .errors import DataError, SmlearnError
from .prompts import DEFAULT_TRIGGER
from .evaluate.score import ScoreResult, score_predictions
from .io import iter_jsonl


def read_predictions(path: str | Path) -> dict[str, str]:
    """`{"id": ..., "completion": "<raw model output>"}` per line; each problem names file, line, field."""
    predictions: dict[str, str] = {}
    for line, row in iter_jsonl(path):
        for field in ("id", "completion"):
            if field not in row:
                raise DataError("missing required field", path, line, field)
            if not isinstance(row[field], (str, int)) or isinstance(row[field], bool):
                raise DataError(f"expected a string, got {type(row[field]).__name__}", path, line, field)
        pid = str(row["id"])
        if pid in predictions:
            raise DataError(f"duplicate prediction for id '{pid}'", path, line, "id")
        predictions[pid] = str(row["completion"])
    if not predictions:
        raise SmlearnError(f"{path}: no predictions (the file is empty)")
    return predictions


def score(data: str | Path, predictions: str | Path, trigger: str = DEFAULT_TRIGGER) -> ScoreResult:
    examples = load_jsonl_examples(data)
    return score_predictions(examples, read_predictions(predictions), trigger=trigger)
