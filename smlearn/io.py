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

from . import dist
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


# Run artifacts are written by one process: in a multi-process run (smlearn.dist) only rank 0 writes them,
# and the write_* functions below do nothing on the other ranks.

def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; returns the number of rows."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    if dist.is_main():
        _atomic_write_text(Path(path), "".join(lines))
    return len(lines)


def write_json(path: str | Path, obj: Any) -> None:
    if dist.is_main():
        _atomic_write_text(Path(path), json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = read_text_file(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path, e.lineno) from None


def write_text(path: str | Path, text: str) -> None:
    if dist.is_main():
        _atomic_write_text(Path(path), text)


class ChunkedJsonlWriter:
    """Append-only JSONL written in whole chunks, for resumable stages.

    Each row carries the index of the chunk it belongs to (`chunk_key`). A chunk
    is written with one write + fsync; if the process is killed mid-write, the
    torn tail is dropped on reopen, together with every row of an incomplete
    chunk, so the chunk is regenerated whole. Because chunks are processed in a
    fixed order with a per-chunk seed, a resumed run produces the same file as
    an uninterrupted one. `finish()` renames the partial file to its final name.

    Several processes (smlearn.dist): rank r appends its chunks to its own partial file
    (`<name>.partial` for rank 0, `<name>.partial.rank<r>` for the others); a chunk whole in any partial
    file is done, whatever number of processes wrote it or resumes it; `finish()` merges them in chunk
    order on rank 0.
    """

    def __init__(self, final_path: str | Path, chunk_sizes: list[int], chunk_key: str = "chunk",
                 fingerprint: str | None = None):
        self.final_path = Path(final_path)
        self.base_partial = self.final_path.with_name(self.final_path.name + ".partial")
        rank = dist.rank()
        self.partial_path = (self.base_partial if rank == 0
                             else self.base_partial.with_name(f"{self.base_partial.name}.rank{rank}"))
        self.fingerprint_path = self.final_path.with_name(self.final_path.name + ".partial.fingerprint")
        self.chunk_key = chunk_key
        self.chunk_sizes = chunk_sizes
        self.done_chunks: set[int] = set()
        if dist.is_main():
            self._discard_if_other_config(fingerprint)
        dist.barrier()
        self._recover(self.partial_path)
        if dist.is_main():
            # Partial files of ranks this run does not have (an earlier run with more processes).
            for path in self.partial_files():
                if path != self.partial_path and self._rank_of(path) >= dist.world_size():
                    self._recover(path)
        dist.barrier()
        for path in self.partial_files():
            self.done_chunks |= {r[self.chunk_key] for r in self._read(path)}

    def partial_files(self) -> list[Path]:
        """Every rank's partial file present, rank 0's first."""
        others = sorted(self.base_partial.parent.glob(f"{self.base_partial.name}.rank*"), key=self._rank_of)
        return ([self.base_partial] if self.base_partial.exists() else []) + others

    def _rank_of(self, path: Path) -> int:
        tail = path.name[len(self.base_partial.name):]
        return int(tail[len(".rank"):]) if tail.startswith(".rank") and tail[len(".rank"):].isdigit() else 0

    def _discard_if_other_config(self, fingerprint: str | None) -> None:
        """Rows written under another config (or chunking) are never resumed into this one."""
        key = f"{fingerprint}:{self.chunk_sizes}"
        old = self.fingerprint_path.read_text() if self.fingerprint_path.exists() else None
        if old != key:
            for path in self.partial_files():
                print(f"[smlearn] {path.name}: made with other settings; starting it afresh", flush=True)
                path.unlink()
        _atomic_write_text(self.fingerprint_path, key)

    def _recover(self, path: Path) -> None:
        """Keep the whole chunks of one partial file; a torn tail and incomplete chunks are dropped."""
        if not path.exists():
            return
        raw = path.read_bytes()
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
        kept = [r for r in rows if counts.get(r[self.chunk_key]) == self.chunk_sizes[r[self.chunk_key]]]
        _atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        return read_jsonl(path) if path.exists() else []

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
        """Rows written so far (whole chunks only), in chunk order, from every rank's partial file (with
        several processes, after a barrier: other ranks' chunks are read from disk)."""
        rows: list[dict[str, Any]] = []
        seen: set[int] = set()
        for path in self.partial_files():
            file_rows = self._read(path)
            chunks = {r[self.chunk_key] for r in file_rows} - seen
            rows += [r for r in file_rows if r[self.chunk_key] in chunks]
            seen |= chunks
        rows.sort(key=lambda r: r[self.chunk_key])      # stable: file order within a chunk
        return rows

    def finish(self) -> list[dict[str, Any]]:
        """Merge the chunks in chunk order and publish atomically (rank 0); every rank gets the rows."""
        dist.barrier()
        if dist.is_main():
            rows = self.rows()
            for r in rows:
                r.pop(self.chunk_key, None)
            write_jsonl(self.final_path, rows)
            for path in self.partial_files():
                path.unlink(missing_ok=True)
            self.fingerprint_path.unlink(missing_ok=True)
        dist.barrier()
        return rows if dist.is_main() else read_jsonl(self.final_path)
