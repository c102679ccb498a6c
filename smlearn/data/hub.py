"""Hugging Face hub datasets: built-in adapters for common benchmark layouts.

Each adapter names the hub id, its config, and a function from one source row
to our schema. Any other hub dataset works with `data.columns` (our field →
source column) and `data.kind`. Offline, a dataset that is not in the local
cache fails at once with a clear message instead of waiting on the network.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import SmlearnError
from .schema import Example, example_from_row


def _gsm8k(row: dict[str, Any], i: int) -> dict[str, Any]:
    # GSM8K answers end with "#### 72"; the text before is the reference solution.
    solution, _, final = row["answer"].rpartition("####")
    return {"id": f"gsm8k-{i}", "question": row["question"], "answer": final.strip().replace(",", ""),
            "kind": "number", "rationale": re.sub(r"<<[^>]*>>", "", solution).strip()}


def _choices_question(question: str, labels: list[str], texts: list[str]) -> tuple[str, dict[str, str]]:
    choices = dict(zip(labels, texts))
    listed = ", ".join(f"({k}) {v}" for k, v in choices.items())
    return f"{question} Answer choices: {listed}.", choices


def _commonsense_qa(row: dict[str, Any], i: int) -> dict[str, Any]:
    question, choices = _choices_question(row["question"], row["choices"]["label"], row["choices"]["text"])
    return {"id": row.get("id") or f"commonsense_qa-{i}", "question": question, "answer": row["answerKey"],
            "kind": "choice", "choices": choices}


def _strategy_qa(row: dict[str, Any], i: int) -> dict[str, Any]:
    facts = row.get("facts")
    return {"id": str(row.get("qid", f"strategy_qa-{i}")), "question": row["question"],
            "answer": "yes" if row["answer"] in (True, "true", "True", "yes") else "no", "kind": "yes_no",
            "rationale": " ".join(facts) if isinstance(facts, list) else facts}


def _svamp(row: dict[str, Any], i: int) -> dict[str, Any]:
    body, question = row.get("Body", ""), row.get("Question", "")
    return {"id": str(row.get("ID", f"svamp-{i}")), "question": f"{body.strip()} {question.strip()}".strip(),
            "answer": str(row["Answer"]), "kind": "number"}


@dataclass(frozen=True)
class HubAdapter:
    hub_id: str
    config: str | None
    to_row: Callable[[dict[str, Any], int], dict[str, Any]]
    test_split: str = "test"


ADAPTERS: dict[str, HubAdapter] = {
    "gsm8k": HubAdapter("openai/gsm8k", "main", _gsm8k),
    "commonsense_qa": HubAdapter("tau/commonsense_qa", None, _commonsense_qa, test_split="validation"),
    "strategy_qa": HubAdapter("ChilleD/StrategyQA", None, _strategy_qa),
    "svamp": HubAdapter("ChilleD/SVAMP", None, _svamp),
}


def _adapter_for(data_config) -> HubAdapter | None:
    if data_config.name in ADAPTERS:
        return ADAPTERS[data_config.name]
    for adapter in ADAPTERS.values():
        if adapter.hub_id == data_config.source:
            return adapter
    return None


def load_hub_split(data_config, split: str, limit: int | None) -> list[Example]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise SmlearnError("loading a hub dataset needs the 'datasets' package") from None
    adapter = _adapter_for(data_config)
    hub_id = data_config.source
    config = data_config.hub_config or (adapter.config if adapter else None)
    if adapter and split == "test" and data_config.test_split == "test":
        split = adapter.test_split
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # datasets raises many types; all mean "could not get it"
        hint = (" (offline: HF_HUB_OFFLINE=1 and it is not in the local cache; download it on a connected "
                "machine or point data.source at a local JSONL file or folder)") if offline else ""
        raise SmlearnError(f"cannot load hub dataset '{hub_id}' split '{split}'{hint}: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    examples = []
    for i, row in enumerate(ds):
        if adapter:
            row = adapter.to_row(dict(row), i)
        elif data_config.columns:
            row = {**row, **{ours: row[theirs] for ours, theirs in data_config.columns.items() if theirs in row}}
            row.setdefault("id", f"{hub_id}-{split}-{i}")
        examples.append(example_from_row(row, f"{hub_id}[{split}]", i + 1, default_kind=data_config.kind))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise SmlearnError(f"hub dataset '{hub_id}' split '{split}' is empty")
    return examples
