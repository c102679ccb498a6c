"""Loading datasets: a JSONL file, a folder with train/test files, or a hub dataset.

Local files follow the benchmark schema (see `schema.py`); `columns` maps our
field names to other column names. Hub datasets go through an adapter that turns
the source layout into the schema (see `hub.py`).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, SmlearnError
from ..io import cannot_read, iter_jsonl
from .schema import Example, example_from_row


def load_jsonl_examples(path: str | Path, kind: str | None = None, columns: dict[str, str] | None = None,
                        limit: int | None = None) -> list[Example]:
    """Read and validate every row (a bad row stops the load, naming file, line and field)."""
    path = Path(path)
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for line, row in iter_jsonl(path):
        if columns:
            row = {**row, **{ours: row[theirs] for ours, theirs in columns.items() if theirs in row}}
        ex = example_from_row(row, path, line, default_kind=kind)
        if ex.id in seen:
            raise DataError(f"duplicate id '{ex.id}' (first on line {seen[ex.id]})", path, line, "id")
        seen[ex.id] = line
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise SmlearnError(f"{path}: dataset is empty")
    return examples


def _split_file(folder: Path, split: str) -> Path:
    for name in (f"{split}.jsonl", f"{split}.json"):
        if (folder / name).exists():
            return folder / name
    raise SmlearnError(f"{folder}: no '{split}.jsonl' file in this dataset folder")


def load_split(data_config, split: str) -> list[Example]:
    """Load one split as configured by a `DataConfig`: "train" and "test" map to data.train_split /
    data.test_split (with their limits); any other name is read as is (e.g. the lab's "rl" questions)."""
    source = data_config.source
    split_name = {"train": data_config.train_split, "test": data_config.test_split}.get(split, split)
    limit = {"train": data_config.train_limit, "test": data_config.test_limit}.get(split)
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            split_file = _split_file(path, split_name)
        except PermissionError as e:
            raise cannot_read(path, e) from None
        return load_jsonl_examples(split_file, data_config.kind, data_config.columns, limit)
    if path.is_file():
        # One file serves both splits only when the user points each split at it.
        return load_jsonl_examples(path, data_config.kind, data_config.columns, limit)
    if source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json")):
        raise SmlearnError(f"data.source: file or folder not found: {source}")
    from .hub import load_hub_split

    return load_hub_split(data_config, split_name, limit)
