"""Resume after a killed `generate`, and bad input: one clear line, non-zero exit, earlier outputs intact."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import bench, tiny_config, write_slice

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def smlearn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "smlearn", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd)


def _default_sigint() -> None:
    # A shell runs background jobs (`cmd &`) with SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: give the child the default disposition a terminal has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "smlearn", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, preexec_fn=_default_sigint)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def choice_slice(tmp_path_factory):
    return write_slice(bench("commonsense_qa"), tmp_path_factory.mktemp("csqa"), 6, 4)


def _resume_config(tiny_base, data):
    return tiny_config(tiny_base, data, "commonsense_qa",
                       generate={"samples_gold": 2, "samples_wrong": 1, "samples_free": 2, "batch_size": 4,
                                 "max_new_tokens": 16})


def _wait_for_chunks(partial: Path, proc, n_lines: int, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= n_lines:
            return
        time.sleep(0.05)
    raise AssertionError(f"generate did not write {n_lines} rows in time (exit {proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_generate_resumes_to_the_same_file(tmp_path, tiny_base, choice_slice, sig):
    cfg = write_config(tmp_path / "cfg.yaml", _resume_config(tiny_base, choice_slice))
    whole = tmp_path / "whole"
    assert smlearn("run", "--config", str(cfg), "--out", str(whole), "--until", "generate").returncode == 0

    killed = tmp_path / "killed"
    proc = start("run", "--config", str(cfg), "--out", str(killed), "--until", "generate")
    partial = killed / "rationales.jsonl.partial"
    _wait_for_chunks(partial, proc, 4)   # one chunk of 4 of the 36 rows
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    # Interrupted runs exit 130 (SIGINT → KeyboardInterrupt → "rerun to resume") or -9 (SIGKILL).
    assert code in (130, -signal.SIGKILL), f"exit {code}: the run was not interrupted mid-stage"
    assert not (killed / "rationales.jsonl").exists(), "a killed run must not publish its artifact"
    rows_before = partial.read_text().count("\n")
    assert 0 < rows_before < 36

    done = smlearn("run", "--config", str(cfg), "--out", str(killed), "--until", "generate")
    assert done.returncode == 0, done.stderr
    a = (whole / "rationales.jsonl").read_text().splitlines()
    b = (killed / "rationales.jsonl").read_text().splitlines()
    assert len(b) == 36 and len({json.loads(r)["id"] for r in b}) == 36   # none lost, none duplicated
    assert a == b                                                       # same seed → same final file
    assert not partial.exists()


def test_torn_partial_line_is_dropped_and_regenerated(tmp_path, tiny_base, choice_slice):
    cfg = write_config(tmp_path / "cfg.yaml", _resume_config(tiny_base, choice_slice))
    run_dir = tmp_path / "run"
    assert smlearn("run", "--config", str(cfg), "--out", str(run_dir), "--until", "generate").returncode == 0
    reference = (run_dir / "rationales.jsonl").read_text()
    # Simulate a kill in the middle of writing chunk 2: 4 whole rows + 2 rows + half a row.
    rows = [json.loads(r) for r in reference.splitlines()]
    torn = "".join(json.dumps({**r, "chunk": i // 4}) + "\n" for i, r in enumerate(rows[:6])) + '{"id": "q'
    os.remove(run_dir / "rationales.jsonl")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest.pop("generate")
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    from smlearn.io import ChunkedJsonlWriter
    from smlearn.rundir import Run

    # Opening the writer as the stage does records this config's fingerprint beside the partial file.
    ChunkedJsonlWriter(run_dir / "rationales.jsonl", [4] * 9, fingerprint=Run.open(run_dir).stage_key("generate"))
    (run_dir / "rationales.jsonl.partial").write_text(torn)
    assert smlearn("run", "--config", str(cfg), "--out", str(run_dir), "--until", "generate").returncode == 0
    assert (run_dir / "rationales.jsonl").read_text() == reference


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated_run(tmp_path_factory, tiny_base, choice_slice):
    """A run directory whose `generate` stage is done (copied per test).

    Paths in its config are relative (model/, data/), and commands run from the
    copy's folder, so each copy is the same run as far as fingerprints go.
    """
    root = tmp_path_factory.mktemp("generated")
    shutil.copytree(tiny_base, root / "model")
    shutil.copytree(choice_slice, root / "data")
    write_config(root / "cfg.yaml", _resume_config("./model", "./data"))
    result = smlearn("run", "--config", "cfg.yaml", "--out", "run", "--until", "generate", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def _copy(generated_run, tmp_path) -> tuple[Path, dict[str, bytes]]:
    dst = tmp_path / "g"
    shutil.copytree(generated_run, dst)
    snapshot = {p.name: p.read_bytes() for p in (dst / "run").iterdir() if p.is_file()}
    return dst, snapshot


def _assert_clean_failure(result, *needles: str):
    assert result.returncode == 2, (result.returncode, result.stderr)
    # Progress bars (model loading) may precede it; the error itself is one line, with no traceback.
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _assert_untouched(root: Path, snapshot: dict[str, bytes]):
    now = {p.name: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()}
    assert now == snapshot


def test_malformed_jsonl_names_file_and_line(tmp_path, generated_run):
    root, snap = _copy(generated_run, tmp_path)
    train = root / "data" / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[2] = lines[2][:-5]    # cut the closing of line 3
    train.write_text("\n".join(lines) + "\n")
    _assert_clean_failure(smlearn("collect", "--run", "run", cwd=root), "train.jsonl", "line 3", "malformed JSON")
    _assert_untouched(root, snap)


def test_unknown_answer_kind_names_line_and_field(tmp_path, generated_run):
    root, snap = _copy(generated_run, tmp_path)
    train = root / "data" / "train.jsonl"
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    rows[1]["kind"] = "essay"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _assert_clean_failure(smlearn("collect", "--run", "run", cwd=root), "line 2", "field 'kind'",
                          "unknown answer kind 'essay'")
    _assert_untouched(root, snap)


def test_empty_dataset(tmp_path, generated_run):
    root, snap = _copy(generated_run, tmp_path)
    (root / "data" / "test.jsonl").write_text("")
    _assert_clean_failure(smlearn("eval", "--run", "run", "--stages", "base", cwd=root), "test.jsonl",
                          "dataset is empty")
    _assert_untouched(root, snap)


def test_missing_model_path(tmp_path, generated_run):
    root, snap = _copy(generated_run, tmp_path)
    shutil.rmtree(root / "model")
    _assert_clean_failure(smlearn("collect", "--run", "run", cwd=root), "model path not found: ./model")
    _assert_untouched(root, snap)
    assert not (root / "run" / "judged.jsonl.partial").exists()


def test_prompt_longer_than_context(tmp_path, generated_run):
    from smlearn.models import TinyLlamaSpec, build_tiny_llama, load_tokenizer

    root, snap = _copy(generated_run, tmp_path)
    tok = load_tokenizer(str(root / "model"))
    short = root / "short_model"
    build_tiny_llama(tok, TinyLlamaSpec(max_position_embeddings=64), save_dir=short)
    cfg = yaml.safe_load((root / "run" / "config.yaml").read_text())
    cfg["model"]["name_or_path"] = "short_model"
    write_config(root / "short.yaml", cfg)
    out = root / "short_run"
    _assert_clean_failure(smlearn("run", "--config", "short.yaml", "--out", "short_run", "--until", "generate",
                                  cwd=root),
                          "prompt longer than the model's context", "question id")
    assert not (out / "rationales.jsonl").exists()


def test_changed_config_is_refused_not_mixed(tmp_path, generated_run):
    root, snap = _copy(generated_run, tmp_path)
    cfg = yaml.safe_load((root / "run" / "config.yaml").read_text())
    cfg["generate"]["temperature"] = 0.3
    write_config(root / "changed.yaml", cfg)
    _assert_clean_failure(smlearn("run", "--config", "changed.yaml", "--out", "run", "--until", "generate", cwd=root),
                          "stage 'generate' was run with a different config", "generate.temperature")
    _assert_untouched(root, snap)


def test_unknown_config_field(tmp_path, generated_run):
    root, _ = _copy(generated_run, tmp_path)
    result = smlearn("run", "--config", "cfg.yaml", "--out", "x", "rl.kl=0.1", cwd=root)
    _assert_clean_failure(result, "rl.kl: unknown field")
