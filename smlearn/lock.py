"""One writer per run directory: an advisory lock file, `<run>/.smlearn.lock`.

A process that writes a run directory (any stage, `smlearn run`, the lab) holds
an exclusive `flock` on the lock file for as long as it writes. A second writer
is refused at once with a message naming the holder (pid, host, command, start
time, read from the file). The kernel releases a `flock` when its holder dies
(kill -9 included), so a lock file left by a killed process is stale by
construction: the next writer takes it over and says so. A holder that ends
normally removes the file.

The lock is re-entrant within a process: `smlearn.run` holds it and every stage
it calls takes it again for free. In a multi-process run (smlearn.dist) rank 0
holds it for all the ranks: the others wait for it, and share its refusal.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RunDirError

LOCK_NAME = ".smlearn.lock"

# realpath of the run directory -> [fd, depth]: locks this process holds.
_HELD: dict[str, list[int]] = {}


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "another smlearn process (it is starting)"
    text = f"pid {info['pid']} on host {info.get('host', '?')}"
    if info.get("command"):
        text += f" ({info['command']}"
        text += f", since {info['since']})" if info.get("since") else ")"
    return text


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _command() -> str:
    """What the holder is running: the smlearn command line, or the Python program using the API."""
    argv = sys.argv or ["python"]
    if Path(argv[0]).name in ("smlearn", "__main__.py"):
        return " ".join(["smlearn", *argv[1:]])
    return " ".join(["python", *argv])


def _acquire(root: Path) -> int:
    """Take the lock of `root` (created if needed); RunDirError if another process holds it."""
    path = root / LOCK_NAME
    for _ in range(20):   # retried only when a releasing holder unlinked the file under us
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except PermissionError:
            raise RunDirError(f"{root}: run directory is not writable (permission denied); "
                              "copy it somewhere writable or use a new --out") from None
        except (FileExistsError, NotADirectoryError):
            raise RunDirError(f"{root}: a file is in the way, not a run directory; use another --out") from None
        except OSError as e:
            if e.errno == errno.EROFS:
                raise RunDirError(f"{root}: run directory is on a read-only file system; "
                                  "use a new --out") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{root}: run directory is in use by {_describe(_holder(path))}; "
                              "wait for it to finish or use another --out (one writer per run directory)") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            # The previous holder released and removed the file between our open and flock.
            os.close(fd)
            continue
        old = _holder(path)
        if old.get("pid") and old.get("pid") != os.getpid():
            alive = old.get("host") == socket.gethostname() and pid_alive(int(old["pid"]))
            note = "" if alive else " (no longer running)"
            print(f"[smlearn] {root}: taking over the lock left by {_describe(old)}{note}", flush=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command()[:200],
                "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return fd
    raise RunDirError(f"{root}: could not take the run directory lock (it keeps changing hands)")


def _release(root: Path, fd: int, created: bool) -> None:
    try:
        (root / LOCK_NAME).unlink(missing_ok=True)   # while still holding it: no one can be mid-acquire
    except OSError:
        pass
    os.close(fd)
    if created:
        try:
            root.rmdir()          # a directory this call made and nothing filled (a failed start) goes too
        except OSError:
            pass


@contextmanager
def run_lock(root: str | Path) -> Iterator[None]:
    """Hold the run directory's writer lock (re-entrant within this process)."""
    root = Path(root)
    key = os.path.realpath(root)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    from . import dist

    created = not root.exists()
    fd = dist.main_first(lambda: _acquire(root)) if dist.is_distributed() else _acquire(root)
    _HELD[key] = [fd if dist.is_main() else -1, 1]
    try:
        yield
    finally:
        del _HELD[key]
        if dist.is_main():
            _release(root, fd, created)


def holds_lock(root: str | Path) -> bool:
    return os.path.realpath(root) in _HELD
