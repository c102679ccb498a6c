"""Errors a user can act on.

Every error smlearn raises on bad input is a `SmlearnError`; the CLI prints its
message on one line and exits non-zero. Where the error is about a row of a
file, the message names the file, the line and the field.
"""
from __future__ import annotations

from pathlib import Path


class SmlearnError(Exception):
    """An error caused by the user's input or environment, with a clear message."""


class DataError(SmlearnError):
    """A malformed or invalid data row: names the file, line and field."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.line, self.field = path, line, field


class ConfigError(SmlearnError):
    """An invalid configuration value (names the dotted field)."""


class RunDirError(SmlearnError):
    """A run directory that is missing artifacts or was made with another config."""
