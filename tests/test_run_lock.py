"""One run directory, one writer: a second `smlearn run` on the same --out is refused at once, the first
finishes the same run as an uninterrupted one, and a lock left by a killed process is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from smlearn.errors import RunDirError
from smlearn.lock import LOCK_NAME, run_lock

from conftest import bench, tiny_config, write_slice

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def smlearn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "smlearn", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd)


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "smlearn", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_base):
    """A config (6 questions, 36 rationales in chunks of 4) and the run it makes uninterrupted."""
    root = tmp_path_factory.mktemp("lock")
    data = write_slice(bench("commonsense_qa"), root / "data", 6, 4)
    cfg = tiny_config(tiny_base, data, "commonsense_qa",
                      generate={"samples_gold": 2, "samples_wrong": 1, "samples_free": 2, "batch_size": 4,
                                "max_new_tokens": 16})
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    whole = root / "whole"
    result = smlearn("run", "--config", str(path), "--out", str(whole), "--until", "generate")
    assert result.returncode == 0, result.stderr
    return path, (whole / "rationales.jsonl").read_text()


def _wait_for_rows(partial: Path, proc, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 4:
            return
        time.sleep(0.05)
    raise AssertionError(f"the first run wrote no chunk in time (exit {proc.poll()})")


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_second_writer_is_refused_and_the_first_finishes_the_same_run(tmp_path, setup):
    cfg, reference = setup
    out = tmp_path / "run"
    first = start("run", "--config", str(cfg), "--out", str(out), "--until", "generate")
    try:
        _wait_for_rows(out / "rationales.jsonl.partial", first)
        first.send_signal(signal.SIGSTOP)        # mid-stage, holding the lock, for as long as the test needs
        t0 = time.time()
        second = smlearn("run", "--config", str(cfg), "--out", str(out), "--until", "generate")
        took = time.time() - t0
        assert second.returncode == 2
        line = _one_line(second.stderr)
        assert "in use by" in line and f"pid {first.pid}" in line and socket.gethostname() in line, line
        assert took < 120                       # refused at once, not after waiting for the first
        # A stage command on the same directory is refused as well.
        third = smlearn("collect", "--run", str(out))
        assert third.returncode == 2 and f"pid {first.pid}" in _one_line(third.stderr)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    assert (out / "rationales.jsonl").read_text() == reference   # the refused writer changed nothing
    assert not (out / LOCK_NAME).exists()                        # released on a normal exit


def test_lock_of_a_killed_writer_is_taken_over(tmp_path, setup):
    cfg, reference = setup
    out = tmp_path / "run"
    first = start("run", "--config", str(cfg), "--out", str(out), "--until", "generate")
    _wait_for_rows(out / "rationales.jsonl.partial", first)
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=60) == -signal.SIGKILL
    holder = json.loads((out / LOCK_NAME).read_text())      # left behind by the killed writer
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

    again = smlearn("run", "--config", str(cfg), "--out", str(out), "--until", "generate")
    assert again.returncode == 0, again.stderr
    assert f"taking over the lock left by pid {first.pid}" in again.stdout
    assert "no longer running" in again.stdout
    assert (out / "rationales.jsonl").read_text() == reference   # resumed to the same file
    assert not (out / LOCK_NAME).exists()


def test_lock_is_reentrant_in_a_process_and_exclusive_across_processes(tmp_path):
    root = tmp_path / "r"
    with run_lock(root):
        with run_lock(root):                     # a stage inside `smlearn.run` takes it again
            assert (root / LOCK_NAME).exists()
        holder = json.loads((root / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from smlearn.lock import run_lock\n"
             "try:\n    run_lock(sys.argv[1]).__enter__()\nexcept Exception as e:\n    print(e)",
             str(root)], capture_output=True, text=True, env=ENV)
        assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in other.stdout, other
    assert not root.exists()                     # made by the lock and left empty: removed


def test_refusal_in_process_names_the_holder(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from smlearn.lock import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()",
         str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"pid {proc.pid} on host"):
            with run_lock(root):
                pass
    finally:
        proc.communicate("")
    with run_lock(root):                         # released by its holder: free again
        pass
    assert root.exists()                         # not made by this lock: kept
