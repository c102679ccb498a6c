"""Bad input, as a new user would give it: each case exits 2 with one line naming the file / line / field
(or the config field), shows no traceback, and leaves the run directory's artifacts byte-identical.

Most cases call the real CLI entry point (`smlearn.cli.main`) in this process, from the run's folder;
the unreadable-file cases run `python -m smlearn` without the capabilities that let root read anything
(`setpriv`), so that permission bits apply as they do for any user.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smlearn import cli
from smlearn.lock import LOCK_NAME

from conftest import cli_project

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
RUN = ["run", "--config", "cfg.yaml", "--out", "run", "--until", "generate"]
NON_UTF8 = b'{"id": "x", "question": "caf\xe9?", "answer": "A", "kind": "choice", "choices": {"A": "a", "B": "b"}}\n'


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_base):
    """model/, data/ (6 train, 4 test questions), cfg.yaml and run/ with its generate stage done."""
    root = cli_project(tmp_path_factory.mktemp("bad-inputs"), tiny_base)
    result = subprocess.run([sys.executable, "-m", "smlearn", *RUN], cwd=root, capture_output=True, text=True,
                            env=ENV)
    assert result.returncode == 0, result.stderr
    preds = [{"id": json.loads(line)["id"], "completion": "The answer is A."}
             for line in (root / "data" / "test.jsonl").read_text().splitlines()]
    (root / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()}


def _error_line(rc: int, stderr: str) -> str:
    assert rc == 2, (rc, stderr)
    assert "Traceback" not in stderr, stderr
    # Progress bars (model loading) may precede it; the error itself is one line.
    lines = [line for line in stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("smlearn: error: "), lines[0]
    return lines[0]


# -- mutations of the copied folder ------------------------------------------

def _rewrite_row(path: Path, index: int, **fields) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[index].update(fields)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def _number_gold(answer: str, split: str = "train"):
    def setup(root):
        _rewrite_row(root / "data" / f"{split}.jsonl", 2, kind="number", answer=answer, choices=None)
    return setup


def _config_field(section: str, key: str, value):
    def setup(root):
        cfg = yaml.safe_load((root / "run" / "config.yaml").read_text())
        cfg[section][key] = value
        (root / "run" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return setup


def _no_tokenizer(root):
    shutil.copytree(root / "model", root / "bare")
    for p in (root / "bare").iterdir():
        if p.name.startswith("tokenizer") or p.name == "special_tokens_map.json":
            p.unlink()
    cfg = yaml.safe_load((root / "cfg.yaml").read_text())
    cfg["model"]["name_or_path"] = "./bare"
    (root / "bare.yaml").write_text(yaml.safe_dump(cfg))


def _exemplar_file(content: bytes):
    def setup(root):
        (root / "shots.json").write_bytes(content)
    return setup


def _nothing(root):
    pass


def _override(o: str, *needles: str):
    return pytest.param(_nothing, [*RUN, o], needles, id=o)


CASES = [
    # config values, refused before anything runs (issue 11: late or missing validation)
    _override("sft.epochs=-1", "sft.epochs: must be > 0, got -1.0"),
    _override("sft.epochs=0", "sft.epochs: must be > 0"),
    _override("sft.batch_size=0", "sft.batch_size: must be >= 1, got 0"),
    _override("rm.batch_size=0", "rm.batch_size: must be >= 1"),
    _override("collect.batch_size=0", "collect.batch_size: must be >= 1"),
    _override("eval.batch_size=0", "eval.batch_size: must be >= 1"),
    _override("generate.batch_size=0", "generate.batch_size: must be >= 1"),
    _override("sft.learning_rate=-1", "sft.learning_rate: must be > 0, got -1.0"),
    _override("rm.learning_rate=0", "rm.learning_rate: must be > 0"),
    _override("rm.epochs=-2", "rm.epochs: must be > 0"),
    _override("generate.temperature=-1", "generate.temperature: must be >= 0, got -1.0"),
    _override("generate.top_p=0", "generate.top_p: must be in (0, 1]"),
    _override("rl.steps=-3", "rl.steps: must be > 0"),
    _override("rl.rollout_batch_size=0", "rl.rollout_batch_size: must be > 0"),
    _override("rl.temperature=0", "rl.temperature: must be > 0"),
    _override("sft.grad_accum=0", "sft.grad_accum: must be >= 1"),
    _override("sft.max_length=0", "sft.max_length: must be >= 1"),
    _override("sft.warmup_ratio=1.5", "sft.warmup_ratio: must be in [0, 1)"),
    _override("sft.lora.r=0", "sft.lora.r: must be >= 1"),
    _override("rm.lora.dropout=-0.1", "rm.lora.dropout: must be >= 0"),
    _override("prompts.n_shots=-1", "prompts.n_shots: must be >= 0"),
    _override("data.test_limit=0", "data.test_limit: must be >= 1"),
    _override("collect.heldout_fraction=1", "collect.heldout_fraction: must be in [0, 1)"),
    _override("collect.max_sft_per_question=0", "collect.max_sft_per_question: must be >= 1"),
    _override("eval.max_new_tokens=0", "eval.max_new_tokens: must be >= 1"),
    _override("model.dtype=float8", "model.dtype: 'float8' is not one of"),
    _override("model.device=gpu", "model.device: 'gpu' is not"),
    _override("eval.stages=[base,gpt]", "eval.stages: 'gpt' is not one of base, sft, rl"),
    _override("rm.init=random", "rm.init: 'random' is not one of sft, base"),
    _override("data.kind=essay", "data.kind: 'essay' is not one of"),
    _override("sft.epochs=abc", "sft.epochs: expected a number, got 'abc'"),
    _override("generate.samples_gold=[1", "override 'generate.samples_gold=[1': the value is not valid YAML"),
    _override("rl.kl=0.1", "rl.kl: unknown field"),
    _override("nokey", "override 'nokey': expected key=value"),
    # a bad value saved into a run's config.yaml is refused by the next stage command
    pytest.param(_config_field("eval", "batch_size", 0), ["eval", "--run", "run", "--stages", "base"],
                 ["run/config.yaml", "eval.batch_size: must be >= 1"], id="config.yaml eval.batch_size=0"),
    # config files
    pytest.param(lambda r: (r / "cfg.yaml").write_bytes(b"model: {name_or_path: caf\xe9}\n"), RUN,
                 ["cfg.yaml: not UTF-8"], id="non-UTF-8 config"),
    pytest.param(lambda r: (r / "cfg.yaml").write_text("model: {name_or_path: [x\n"), RUN,
                 ["cfg.yaml: line 2 invalid YAML"], id="broken YAML config"),
    pytest.param(_nothing, ["run", "--config", "nope.yaml", "--out", "run"], ["nope.yaml: config file not found"],
                 id="missing config"),
    # data files
    pytest.param(lambda r: _append_bytes(r / "data" / "train.jsonl", NON_UTF8), RUN,
                 ["train.jsonl, line 7: not UTF-8 text (byte 0xe9"], id="non-UTF-8 train data"),
    pytest.param(lambda r: _append_bytes(r / "data" / "test.jsonl", NON_UTF8),
                 ["eval", "--run", "run", "--stages", "base"], ["test.jsonl, line 5: not UTF-8 text"],
                 id="non-UTF-8 test data (stage command)"),
    pytest.param(lambda r: _append_bytes(r / "data" / "train.jsonl", NON_UTF8), ["collect", "--run", "run"],
                 ["train.jsonl, line 7: not UTF-8 text"], id="non-UTF-8 train data (stage command)"),
    pytest.param(_number_gold("1e400"), RUN, ["train.jsonl, line 3, field 'answer': a number answer must be "
                                              "exactly one number", "got '1e400'"], id="gold 1e400"),
    pytest.param(_number_gold("1 000"), RUN, ["train.jsonl, line 3, field 'answer'", "got '1 000'"],
                 id="gold '1 000'"),
    pytest.param(_number_gold("0.1+0.2"), RUN, ["train.jsonl, line 3, field 'answer'", "got '0.1+0.2'"],
                 id="gold 0.1+0.2"),
    pytest.param(_number_gold("1,00"), RUN, ["train.jsonl, line 3, field 'answer'", "got '1,00'"], id="gold 1,00"),
    pytest.param(_number_gold("3 4/2", "test"), RUN, ["test.jsonl, line 3, field 'answer'", "got '3 4/2'"],
                 id="gold '3 4/2' in the test split"),
    pytest.param(lambda r: (r / "data" / "train.jsonl").write_text(""), RUN, ["train.jsonl: dataset is empty"],
                 id="empty train data"),
    pytest.param(lambda r: (r / "data" / "test.jsonl").unlink(), RUN, ["no 'test.jsonl' file"],
                 id="missing test split"),
    pytest.param(_exemplar_file(b'[{"question": "caf\xe9", "rationale": "r", "answer": "A"}]'),
                 [*RUN, "prompts.exemplars=shots.json"], ["shots.json, line 1: not UTF-8 text"],
                 id="non-UTF-8 exemplar file"),
    pytest.param(_exemplar_file(b'[{"question": "q", "rationale": '), [*RUN, "prompts.exemplars=shots.json"],
                 ["shots.json, line 1: malformed JSON"], id="malformed exemplar file"),
    # models
    pytest.param(_no_tokenizer, ["run", "--config", "bare.yaml", "--out", "fresh"],
                 ["cannot load tokenizer from './bare'"], id="model folder without tokenizer"),
    pytest.param(_nothing, [*RUN, "model.name_or_path=./nowhere"], ["model path not found: ./nowhere"],
                 id="missing model folder"),
    # prompts that cannot fit the model's context (1,024 tokens), found before any stage runs
    pytest.param(_nothing, ["run", "--config", "cfg.yaml", "--out", "fresh", "eval.max_new_tokens=1000"],
                 ["prompt longer than the model's context: test question id", "lower prompts.n_shots"],
                 id="test prompts too long for eval.max_new_tokens"),
    pytest.param(_nothing, ["run", "--config", "cfg.yaml", "--out", "fresh", "generate.max_new_tokens=1000"],
                 ["prompt longer than the model's context: question id"],
                 id="hint prompts too long for generate.max_new_tokens"),
    # run directories
    pytest.param(_nothing, ["collect", "--run", "nowhere"], ["nowhere: not a run directory"], id="not a run dir"),
    pytest.param(_nothing, ["run", "--config", "cfg.yaml", "--out", "cfg.yaml/x"],
                 ["cfg.yaml/x: a file is in the way, not a run directory"], id="--out under a file"),
    # smlearn score
    pytest.param(lambda r: (r / "preds.jsonl").write_bytes(b'{"id": "x", "completion": "caf\xe9"}\n'),
                 ["score", "--data", "data/test.jsonl", "--predictions", "preds.jsonl"],
                 ["preds.jsonl, line 1: not UTF-8 text"], id="score: non-UTF-8 predictions"),
    pytest.param(lambda r: (r / "preds.jsonl").write_text("\n"),
                 ["score", "--data", "data/test.jsonl", "--predictions", "preds.jsonl"],
                 ["preds.jsonl: no predictions (the file is empty)"], id="score: empty predictions"),
    pytest.param(lambda r: _append_bytes(r / "data" / "test.jsonl", NON_UTF8),
                 ["score", "--data", "data/test.jsonl", "--predictions", "preds.jsonl"],
                 ["test.jsonl, line 5: not UTF-8"], id="score: non-UTF-8 data"),
    pytest.param(_nothing, ["score", "--data", "data", "--predictions", "preds.jsonl"],
                 ["data: is a folder, not a file"], id="score: a folder as data"),
]


@pytest.mark.parametrize("setup, argv, needles", CASES)
def test_bad_input_one_line_exit_2_artifacts_intact(generated, tmp_path, monkeypatch, capsys, setup, argv,
                                                     needles):
    root = tmp_path / "g"
    shutil.copytree(generated, root)
    setup(root)
    before = _snapshot(root)
    monkeypatch.chdir(root)
    rc = cli.main(argv)
    line = _error_line(rc, capsys.readouterr().err)
    for needle in needles:
        assert needle in line, line
    assert _snapshot(root) == before
    assert not (root / "run" / LOCK_NAME).exists()
    assert not (root / "fresh").exists() and not (root / "nowhere").exists()   # no empty run dir left behind


# ---------------------------------------------------------------------------
# Unreadable and read-only files: permission bits apply (root without its DAC override capability)
# ---------------------------------------------------------------------------

def _as_user(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv: permission bits do not apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    return subprocess.run([*prefix, sys.executable, "-m", "smlearn", *argv], cwd=cwd, capture_output=True,
                          text=True, env=ENV)


PERMISSION_CASES = [
    pytest.param("data/train.jsonl", 0o000, RUN, ["data/train.jsonl: cannot read (Permission denied)"],
                 id="unreadable train data"),
    pytest.param("data", 0o000, RUN, ["data: cannot read (Permission denied)"], id="unreadable data folder"),
    pytest.param("cfg.yaml", 0o000, RUN, ["cfg.yaml: cannot read the config (Permission denied)"],
                 id="unreadable config"),
    pytest.param("preds.jsonl", 0o000, ["score", "--data", "data/test.jsonl", "--predictions", "preds.jsonl"],
                 ["preds.jsonl: cannot read (Permission denied)"], id="unreadable predictions"),
    pytest.param("run", 0o555, RUN, ["run: run directory is not writable"], id="read-only finished run, run"),
    pytest.param("run", 0o555, ["collect", "--run", "run"], ["run: run directory is not writable"],
                 id="read-only run, stage command"),
]


@pytest.mark.parametrize("target, mode, argv, needles", PERMISSION_CASES)
def test_unreadable_or_read_only(generated, tmp_path, target, mode, argv, needles):
    root = tmp_path / "g"
    shutil.copytree(generated, root)
    before = _snapshot(root)
    config_stat = (root / "run" / "config.yaml").stat()
    (root / target).chmod(mode)
    try:
        result = _as_user(argv, root)
    finally:
        (root / target).chmod(0o755 if (root / target).is_dir() else 0o644)
    line = _error_line(result.returncode, result.stderr)
    for needle in needles:
        assert needle in line, line
    assert _snapshot(root) == before
    assert (root / "run" / "config.yaml").stat().st_mtime_ns == config_stat.st_mtime_ns


# ---------------------------------------------------------------------------
# Around the table
# ---------------------------------------------------------------------------

def test_finished_run_does_not_rewrite_config_yaml(generated, tmp_path, monkeypatch, capsys):
    root = tmp_path / "g"
    shutil.copytree(generated, root)
    before = (root / "run" / "config.yaml").stat()
    monkeypatch.chdir(root)
    assert cli.main(RUN) == 0
    assert "generate: done already, skipped" in capsys.readouterr().out
    after = (root / "run" / "config.yaml").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_score_warns_with_the_count_of_missing_predictions(generated, tmp_path, monkeypatch, capsys):
    root = tmp_path / "g"
    shutil.copytree(generated, root)
    lines = (root / "preds.jsonl").read_text().splitlines()
    (root / "preds.jsonl").write_text("\n".join(lines[:1]) + "\n")
    monkeypatch.chdir(root)
    assert cli.main(["score", "--data", "data/test.jsonl", "--predictions", "preds.jsonl"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("accuracy ") and out.out.strip().endswith("/4)")
    assert "smlearn: warning: 3 of 4 examples have no prediction in preds.jsonl (counted wrong)" in out.err


def test_artifacts_follow_the_umask(tmp_path):
    from smlearn.io import write_json

    for name, umask, mode in (("a.json", 0o027, 0o640), ("b.json", 0o022, 0o644)):
        old = os.umask(umask)
        try:
            write_json(tmp_path / name, {"x": 1})
        finally:
            os.umask(old)
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_an_unexpected_exception_shows_its_traceback_and_says_it_is_a_bug(capsys):
    try:
        {}["missing"]
    except KeyError:
        rc = cli._bug()
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" in err and "KeyError: 'missing'" in err
    assert err.strip().splitlines()[-1].startswith("smlearn: internal error: this is a bug in smlearn")


def test_disk_full_is_one_line():
    assert cli._disk_full(Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
    err = OSError(28, "No space left on device", "run/sft/model/model.safetensors")
    assert cli._os_error_line(err).startswith("run/sft/model/model.safetensors: No space left on device; free")
