"""Artifacts on disk: JSONL and JSON, written atomically.

A stage writes its output to a temporary file beside the target and renames it
into place, so a killed process never leaves a half-written artifact under the
final name. Long stages that must resume append to a `*.partial` file in whole
chunks instead (see `ChunkedJsonlWriter`).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, SmlearnError


def cannot_read(path: str | Path, e: OSError) -> SmlearnError:
    """The one-line error for a file that exists but cannot be read (permissions, a folder, I/O)."""
    if isinstance(e, IsADirectoryError):
        return SmlearnError(f"{path}: is a folder, not a file")
    return SmlearnError(f"{path}: cannot read ({e.strerror or e})")


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file's content; unreadable or non-UTF-8 files are one-line errors naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SmlearnError(f"{path}: file not found") from None
    except OSError as e:
        raise cannot_read(path, e) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8", path, line) from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; bad JSON or bad UTF-8 is a DataError."""
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise SmlearnError(f"{path}: file not found") from None
    except OSError as e:
        raise cannot_read(path, e) from None
    with f:
        for lineno, raw in enumerate(_lines(f, path), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "save the file as UTF-8", path, lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", path, lineno) from None
            if not isinstance(obj, dict):
                raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, lineno)
            yield lineno, obj


def _lines(f, path: Path) -> Iterator[bytes]:
    try:
        yield from f
    except OSError as e:
        raise cannot_read(path, e) from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())     # as any file the user makes (mkstemp's is 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; returns the number of rows."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    _atomic_write_text(Path(path), "".join(lines))
    return len(lines)


def write_json(path: str | Path, obj: Any) -> None:
    _atomic_write_text(Path(path), json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = read_text_file(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path, e.lineno) from None


def write_text(path: str | Path, text: str) -> None:
    _atomic_write_text(Path(path), text)


class ChunkedJsonlWriter:
    """Append-only JSONL written in whole chunks, for resumable stages.

    Each row carries the index of the chunk it belongs to (`chunk_key`). A chunk
    is written with one write + fsync; if the process is killed mid-write, the
    torn tail is dropped on reopen, together with every row of an incomplete
    chunk, so the chunk is regenerated whole. Because chunks are processed in a
    fixed order with a per-chunk seed, a resumed run produces the same file as
    an uninterrupted one. `finish()` renames the partial file to its final name.
    """

    def __init__(self, final_path: str | Path, chunk_sizes: list[int], chunk_key: str = "chunk",
                 fingerprint: str | None = None):
        self.final_path = Path(final_path)
        self.partial_path = self.final_path.with_name(self.final_path.name + ".partial")
        self.fingerprint_path = self.final_path.with_name(self.final_path.name + ".partial.fingerprint")
        self.chunk_key = chunk_key
        self.chunk_sizes = chunk_sizes
        self.done_chunks: set[int] = set()
        self._discard_if_other_config(fingerprint)
        self._recover()

    def _discard_if_other_config(self, fingerprint: str | None) -> None:
        """Rows written under another config (or chunking) are never resumed into this one."""
        key = f"{fingerprint}:{self.chunk_sizes}"
        old = self.fingerprint_path.read_text() if self.fingerprint_path.exists() else None
        if self.partial_path.exists() and old != key:
            print(f"[smlearn] {self.partial_path.name}: made with other settings; starting it afresh", flush=True)
            self.partial_path.unlink()
        _atomic_write_text(self.fingerprint_path, key)

    def _recover(self) -> None:
        if not self.partial_path.exists():
            return
        raw = self.partial_path.read_bytes()
        lines = raw.split(b"\n")
        # A torn final line (no newline) is dropped.
        complete = lines[:-1]
        rows: list[dict] = []
        for line in complete:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        counts: dict[int, int] = {}
        for r in rows:
            counts[r[self.chunk_key]] = counts.get(r[self.chunk_key], 0) + 1
        # Keep the longest prefix of whole chunks, in file order.
        kept: list[dict] = []
        for r in rows:
            c = r[self.chunk_key]
            if counts.get(c) == self.chunk_sizes[c]:
                kept.append(r)
        self.done_chunks = {r[self.chunk_key] for r in kept}
        _atomic_write_text(self.partial_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    def write_chunk(self, chunk: int, rows: list[dict[str, Any]]) -> None:
        if len(rows) != self.chunk_sizes[chunk]:
            raise ValueError(f"chunk {chunk}: expected {self.chunk_sizes[chunk]} rows, got {len(rows)}")
        data = "".join(json.dumps({**r, self.chunk_key: chunk}, ensure_ascii=False) + "\n" for r in rows)
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        with self.partial_path.open("a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.done_chunks.add(chunk)

    def rows(self) -> list[dict[str, Any]]:
        """Rows written so far (whole chunks only), in chunk order."""
        rows = read_jsonl(self.partial_path) if self.partial_path.exists() else []
        rows.sort(key=lambda r: r[self.chunk_key])
        return rows

    def finish(self) -> list[dict[str, Any]]:
        """Sort rows by chunk (file order is chunk order already) and publish atomically."""
        rows = self.rows()
        for r in rows:
            r.pop(self.chunk_key, None)
        write_jsonl(self.final_path, rows)
        self.partial_path.unlink(missing_ok=True)
        self.fingerprint_path.unlink(missing_ok=True)
        return rows
