"""The example schema: one reasoning question with its gold answer.

Same fields as the benchmark JSONL files: id, question, answer, kind, and
choices for multiple choice. `rationale` is kept if present but the method
never uses it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..answers import KINDS, parse_gold_number
from ..errors import DataError


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str
    kind: str
    choices: dict[str, str] | None = None
    rationale: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def example_from_row(row: dict[str, Any], path: str | Path, line: int, default_kind: str | None = None) -> Example:
    """Validate one row; every problem is a DataError naming file, line and field."""
    def field_str(name: str, required: bool = True) -> str | None:
        value = row.get(name)
        if value is None:
            if required:
                raise DataError("missing required field", path, line, name)
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(f"expected a string, got {type(value).__name__}", path, line, name)
        value = str(value)
        if required and not value.strip():
            raise DataError("empty value", path, line, name)
        return value

    ex_id = field_str("id")
    question = field_str("question")
    answer = field_str("answer")
    kind = row.get("kind", default_kind)
    if kind is None:
        raise DataError("missing required field (or set data.kind in the config)", path, line, "kind")
    if kind not in KINDS:
        raise DataError(f"unknown answer kind '{kind}' (expected one of {', '.join(KINDS)})", path, line, "kind")
    choices = row.get("choices")
    if kind == "choice":
        if not isinstance(choices, dict) or not choices:
            raise DataError("a choice question needs a non-empty object of letter -> option", path, line, "choices")
        choices = {str(k).strip().upper(): str(v) for k, v in choices.items()}
        if answer.strip().upper() not in choices:
            raise DataError(f"answer '{answer}' is not one of the choices {sorted(choices)}", path, line, "answer")
        answer = answer.strip().upper()
    else:
        choices = None
    if kind == "yes_no":
        low = answer.strip().lower()
        if low not in ("yes", "no", "true", "false"):
            raise DataError(f"a yes_no answer must be yes or no, got '{answer}'", path, line, "answer")
        answer = "yes" if low in ("yes", "true") else "no"
    if kind == "number":
        norm = parse_gold_number(answer)
        if norm is None:
            raise DataError(f"a number answer must be exactly one number (e.g. 18, -2.5, 1,000, 1e3, 7/2, "
                            f"3 1/2), got '{answer}'", path, line, "answer")
        answer = norm
    rationale = row.get("rationale")
    return Example(id=ex_id, question=question, answer=answer.strip(), kind=kind, choices=choices,
                   rationale=str(rationale) if rationale is not None else None)
