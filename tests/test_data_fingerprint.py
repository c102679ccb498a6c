"""A stage's fingerprint covers the content of the files it reads (data splits, an exemplar file), not only
their paths: a dataset edited in place is refused (or redone with --force), never silently skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from smlearn.config import config_from_dict
from smlearn.errors import RunDirError
from smlearn.io import read_jsonl
from smlearn.rundir import Run, input_files

from conftest import cli_project

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def smlearn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "smlearn", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd)


# ---------------------------------------------------------------------------
# The rules, on a run directory's manifest (no model needed)
# ---------------------------------------------------------------------------

def _rows(n: int, answer: int = 7) -> str:
    return "".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + {answer - i}?", "answer": str(answer),
                               "kind": "number"}) + "\n" for i in range(n))


@pytest.fixture
def finished(tmp_path):
    """A run directory whose every stage is marked done, with a data folder and an exemplar file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(_rows(4))
    (data / "test.jsonl").write_text(_rows(3, 9))
    exemplars = tmp_path / "shots.json"
    exemplars.write_text(json.dumps([{"question": "1 + 1?", "rationale": "1 + 1 = 2.", "answer": "2"}]))
    config = config_from_dict({"model": {"name_or_path": "m"}, "data": {"source": str(data)},
                               "prompts": {"exemplars": str(exemplars)}})
    run = Run.create(tmp_path / "run", config)
    for stage in ("generate", "collect", "sft", "rm", "rl", "eval", "report"):
        run.mark_done(stage, {})
    return run, data, exemplars


def test_inputs_per_stage(finished):
    run, data, exemplars = finished
    assert input_files(run.config, "generate") == {"data train": data / "train.jsonl",
                                                   "prompts.exemplars": exemplars}
    assert set(input_files(run.config, "eval")) == {"data train", "prompts.exemplars", "data test"}
    entry = run.manifest()["generate"]
    assert set(entry["inputs"]) == {"data train", "prompts.exemplars"}


def test_unchanged_data_is_current_and_config_yaml_is_not_rewritten(finished):
    run, data, _ = finished
    before = (run.root / "config.yaml").stat()
    again = Run.create(run.root, run.config)
    assert all(again.is_current(s) for s in ("generate", "collect", "eval", "report"))
    after = (run.root / "config.yaml").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_train_file_edited_in_place_is_refused_then_redone_with_force(finished):
    run, data, _ = finished
    (data / "train.jsonl").write_text(_rows(4, answer=8))          # same path, every gold answer changed
    assert not run.is_current("generate")
    with pytest.raises(RunDirError, match=r"stage 'generate' was run on other data \(.*train\.jsonl changed"):
        Run.create(run.root, run.config)
    assert "generate" in run.manifest()                           # refused: nothing forgotten
    with pytest.raises(RunDirError, match="needs stage 'generate' redone: .*train.jsonl changed"):
        run.require("generate", "collect")
    Run.create(run.root, run.config, force=True)
    assert run.manifest() == {}                                   # generate and every later stage redone


def test_test_file_edit_invalidates_eval_only(finished):
    run, data, _ = finished
    (data / "test.jsonl").write_text(_rows(3, answer=10))
    assert run.is_current("rl") and not run.is_current("eval")
    with pytest.raises(RunDirError, match="stage 'eval' was run on other data .*test.jsonl"):
        Run.create(run.root, run.config)
    Run.create(run.root, run.config, force=True)
    assert list(run.manifest()) == ["generate", "collect", "sft", "rm", "rl"]


def test_exemplar_file_edit_is_detected(finished):
    run, _, exemplars = finished
    exemplars.write_text(json.dumps([{"question": "2 + 2?", "rationale": "2 + 2 = 4.", "answer": "4"}]))
    with pytest.raises(RunDirError, match="stage 'generate' was run on other data .*shots.json changed"):
        Run.create(run.root, run.config)


def test_run_made_before_inputs_were_recorded_is_still_current(finished):
    run, data, _ = finished
    manifest = run.manifest()
    for entry in manifest.values():
        entry.pop("inputs")
    (run.root / "manifest.json").write_text(json.dumps(manifest))
    assert run.is_current("report")
    Run.create(run.root, run.config)


# ---------------------------------------------------------------------------
# End to end: edit every gold answer of train.jsonl in place and rerun
# ---------------------------------------------------------------------------

def test_dataset_edited_in_place_cli(tmp_path, tiny_base):
    root = cli_project(tmp_path, tiny_base)
    first = smlearn("run", "--config", "cfg.yaml", "--out", "run", "--until", "generate", cwd=root)
    assert first.returncode == 0, first.stderr
    snapshot = {p.name: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()}

    train = root / "data" / "train.jsonl"
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    for r in rows:      # every gold answer moves to the next option
        letters = sorted(r["choices"])
        r["answer"] = letters[(letters.index(r["answer"]) + 1) % len(letters)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))

    rerun = smlearn("run", "--config", "cfg.yaml", "--out", "run", "--until", "generate", cwd=root)
    assert rerun.returncode == 2, rerun.stderr
    lines = [x for x in rerun.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in rerun.stderr, rerun.stderr
    assert "stage 'generate' was run on other data (data/train.jsonl changed since)" in lines[0]
    assert "--force" in lines[0] and "skipped" not in rerun.stdout
    assert {p.name: p.read_bytes() for p in (root / "run").iterdir() if p.is_file()} == snapshot

    forced = smlearn("run", "--config", "cfg.yaml", "--out", "run", "--until", "generate", "--force", cwd=root)
    assert forced.returncode == 0, forced.stderr
    assert "changed since stage 'generate' ran: redoing it" in forced.stdout
    new_gold = {r["id"]: r["answer"] for r in rows}
    gold = [r for r in read_jsonl(root / "run" / "rationales.jsonl") if r["source"] == "gold"]
    assert gold and all(r["candidate"] == new_gold[r["question_id"]] for r in gold)
    assert smlearn("run", "--config", "cfg.yaml", "--out", "run", "--until", "generate",
                   cwd=root).stdout.count("done already, skipped") == 1
