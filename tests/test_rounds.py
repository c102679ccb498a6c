"""Rounds (smlearn.rounds) on a tiny real Llama: round 2's rationales come from round 1's final model, a killed
round 2 resumes without redoing round 1 or duplicating rows, `rounds_init` picks where training starts, and a
one-round run keeps its layout and fingerprints."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import yaml

import smlearn
from smlearn import pipeline
from smlearn.cli import main
from smlearn.config import config_from_dict, load_config
from smlearn.errors import ConfigError, RunDirError
from smlearn.io import read_json, read_jsonl
from smlearn.rounds import final_model
from smlearn.rundir import STAGES, Run, fingerprint

from conftest import bench, tiny_config, write_slice


def _config(tiny_base, data, **extra) -> dict:
    cfg = tiny_config(tiny_base, data, "commonsense_qa",
                      generate={"samples_gold": 1, "samples_wrong": 1, "samples_free": 1, "batch_size": 6,
                                "max_new_tokens": 12},
                      collect={"batch_size": 8})
    return {**cfg, "rounds": 2, **extra}


class Recorder:
    """Which model each stage of each round loads (the stage functions and the two model loaders, wrapped),
    and a simulated kill: KeyboardInterrupt after `kill_after` chunks of round 2's collect."""

    def __init__(self, monkeypatch):
        import smlearn.collect.collect as collect
        import smlearn.stage_io as stage_io
        import smlearn.train.rm as rm

        self.where: tuple[str, str] = ("", "")
        self.loads: list[tuple[str, str, str]] = []       # (round dir, stage, resolved model path)
        self.judged_chunks = 0
        self.kill_after: int | None = None

        def stage(name, fn):
            def wrapped(run, *args, **kwargs):
                self.where = (run.root.name, name)
                return fn(run, *args, **kwargs)
            return wrapped

        def loader(fn):
            def wrapped(path, *args, **kwargs):
                self.loads.append((*self.where, str(Path(path).resolve())))
                return fn(path, *args, **kwargs)
            return wrapped

        def judge(*args, **kwargs):
            if self.where == ("round-2", "collect"):
                if self.kill_after is not None and self.judged_chunks >= self.kill_after:
                    raise KeyboardInterrupt
                self.judged_chunks += 1
            return judge_chunk(*args, **kwargs)

        judge_chunk = collect._judge_chunk
        monkeypatch.setattr(pipeline, "STAGE_FUNCTIONS", {s: stage(s, f) for s, f in pipeline.STAGE_FUNCTIONS.items()})
        monkeypatch.setattr(stage_io, "load_causal_lm", loader(stage_io.load_causal_lm))
        monkeypatch.setattr(rm, "load_reward_backbone", loader(rm.load_reward_backbone))
        monkeypatch.setattr(collect, "_judge_chunk", judge)

    def loaded(self, round_dir: str, stage: str, loads: list | None = None) -> set[str]:
        return {path for r, s, path in (self.loads if loads is None else loads) if (r, s) == (round_dir, stage)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_slice(bench("commonsense_qa"), tmp_path_factory.mktemp("csqa"), 6, 4)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_base, data):
    """rounds=2 (rounds_init: base), killed after one chunk of round 2's collect, then run again to the end."""
    out = tmp_path_factory.mktemp("rounds") / "run"
    cfg = _config(tiny_base, data)
    with pytest.MonkeyPatch.context() as mp:
        rec = Recorder(mp)
        rec.kill_after = 1
        with pytest.raises(KeyboardInterrupt):
            smlearn.run(cfg, out, progress=False)
        killed = {"manifest": read_json(out / "round-2" / "manifest.json"),
                  "partial": read_jsonl(out / "round-2" / "judged.jsonl.partial"),
                  "rationales": read_jsonl(out / "round-2" / "rationales.jsonl")}
        first_loads = list(rec.loads)
        rec.kill_after, rec.judged_chunks, rec.loads = None, 0, []
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            last = smlearn.run(cfg, out, progress=False)
    return {"out": out, "cfg": cfg, "rec": rec, "first_loads": first_loads, "killed": killed, "log": log.getvalue(),
            "last": last,
            "base": str(Path(tiny_base).resolve())}


def test_round_2_rationales_come_from_round_1s_final_model(two_rounds):
    out, rec = two_rounds["out"], two_rounds["rec"]
    round1 = Run.open(out / "round-1")
    path, fp = final_model(round1)
    assert path == str((out / "round-1" / "rl" / "model").resolve())
    manifest = read_json(out / "round-2" / "manifest.json")
    for stage in ("generate", "collect"):        # round 2's manifest names the model that wrote and judged
        assert manifest[stage]["summary"]["generator"] == path
        assert manifest[stage]["summary"]["generator_fingerprint"] == fp
    config2 = load_config(out / "round-2" / "config.yaml")
    assert (config2.rounds, config2.round.index, config2.round.generator) == (1, 2, path)
    # ... and it is the model those stages loaded (generate and part of collect before the kill, the rest after);
    # round 1 generated with the base model.
    first = two_rounds["first_loads"]
    assert rec.loaded("round-2", "generate", first) == rec.loaded("round-2", "collect", first) == {path}
    assert rec.loaded("round-2", "collect") == {path}
    assert rec.loaded("round-1", "generate", first) == {two_rounds["base"]}
    assert "generator" not in read_json(out / "round-1" / "manifest.json")["generate"]["summary"]
    assert two_rounds["last"].root == out / "round-2"


def test_rounds_init_base_trains_round_2_from_the_base_model(two_rounds):
    out, rec = two_rounds["out"], two_rounds["rec"]
    assert rec.loaded("round-2", "sft") == {two_rounds["base"]}
    assert rec.loaded("round-2", "rm") == {str((out / "round-2" / "sft" / "model").resolve())}      # rm.init=sft
    assert rec.loaded("round-2", "rl") == {str((out / "round-2" / "sft" / "model").resolve())}
    assert "init" not in read_json(out / "round-2" / "manifest.json")["sft"]["summary"]


def test_killed_round_2_resumes_without_redoing_round_1_or_duplicating_rows(two_rounds):
    out, killed, log = two_rounds["out"], two_rounds["killed"], two_rounds["log"]
    assert list(killed["manifest"]) == ["generate"] and killed["partial"]        # killed inside collect
    for stage in STAGES:                                                         # round 1: nothing redone
        assert log.count(f"[smlearn] {stage}: done already, skipped") == (2 if stage == "generate" else 1)
    assert not [load for load in two_rounds["rec"].loads if load[0] == "round-1"]
    # Round 2 kept its rationales and the judged chunk, and judged only the rest.
    rationales = read_jsonl(out / "round-2" / "rationales.jsonl")
    assert rationales == killed["rationales"]
    judged = read_jsonl(out / "round-2" / "judged.jsonl")
    assert [r["id"] for r in judged] == [r["id"] for r in rationales]           # each once, in order
    chunks = -(-len(rationales) // two_rounds["cfg"]["collect"]["batch_size"])
    assert two_rounds["rec"].judged_chunks == chunks - 1
    assert set(read_json(out / "round-2" / "manifest.json")) == set(STAGES)


def test_rounds_summary_and_report(two_rounds):
    out = two_rounds["out"]
    summary = read_json(out / "rounds.json")
    assert (summary["rounds"], summary["rounds_init"], len(summary["per_round"])) == (2, "base", 2)
    r1, r2 = summary["per_round"]
    assert (r1["generator"], r2["generator"], r2["init"]) == ("base", "round-1/rl/model", "base")
    for r in (r1, r2):
        assert r["finished"] == STAGES and set(r["accuracy"]) == {"base", "sft", "rl"}
        collect = read_json(out / r["dir"] / "manifest.json")["collect"]["summary"]
        assert r["yield_per_question"] == collect["yield_per_question"]
        assert r["rm_heldout_accuracy"] == read_json(out / r["dir"] / "rm" / "metrics.json")["heldout_accuracy"]
    report = (out / "report.md").read_text()
    assert "| 2 | `round-1/rl/model` | `base` |" in report and "[round 2](round-2/report.md)" in report
    assert "round 2: rationales generated and judged by" in (out / "round-2" / "report.md").read_text()
    # The run's top holds its config and the rounds, no stage: a stage command names a round.
    assert load_config(out / "config.yaml").rounds == 2 and not (out / "manifest.json").exists()
    with pytest.raises(RunDirError, match="round-1"):
        Run.open(out)


def test_a_changed_rounds_init_is_refused_in_round_2(two_rounds):
    cfg = {**two_rounds["cfg"], "rounds_init": "previous"}
    with pytest.raises(RunDirError, match=r"round-2: stage 'sft' was run with a different config \(round"):
        smlearn.run(cfg, two_rounds["out"], progress=False)
    assert load_config(two_rounds["out"] / "config.yaml").rounds_init == "base"    # the refused config not kept


def test_rounds_init_previous_trains_from_round_1s_model(two_rounds, tmp_path, monkeypatch, tiny_base, data):
    """From the command line: a copy of the finished round 1 (moved: the same run), rounds_init=previous, until
    sft: round 2's SFT starts from round 1's final model, and so would an RM with rm.init=base."""
    from smlearn.train.rm import backbone_path

    out = tmp_path / "run"
    shutil.copytree(two_rounds["out"] / "round-1", out / "round-1")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(_config(tiny_base, data)))
    rec = Recorder(monkeypatch)
    assert main(["run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out), "--until", "sft",
                 "rounds_init=previous"]) == 0
    assert not [load for load in rec.loads if load[0] == "round-1"]                  # round 1: skipped
    path, fp = final_model(Run.open(out / "round-1"))
    assert path == str((out / "round-1" / "rl" / "model").resolve())
    assert rec.loaded("round-2", "generate") == rec.loaded("round-2", "sft") == {path}
    manifest = read_json(out / "round-2" / "manifest.json")
    assert (manifest["sft"]["summary"]["init"], manifest["sft"]["summary"]["init_fingerprint"]) == (path, fp)
    assert set(manifest) == {"generate", "collect", "sft"}
    round2 = Run.open(out / "round-2", ["rm.init=base"])
    assert backbone_path(round2) == path and backbone_path(Run.open(out / "round-1", ["rm.init=base"])) == \
        str(tiny_base)
    # The copy's round 1 is the same model: the same rationale fingerprint, another SFT one.
    base_round = read_json(two_rounds["out"] / "round-2" / "manifest.json")
    assert manifest["generate"]["fingerprint"] == base_round["generate"]["fingerprint"]
    assert manifest["sft"]["fingerprint"] != base_round["sft"]["fingerprint"]


# ---------------------------------------------------------------------------
# Without a model: config checks, fingerprints, layout, the lab.
# ---------------------------------------------------------------------------

BASE = {"model": {"name_or_path": "m"}, "data": {"source": "d"}}


@pytest.mark.parametrize("override, message", [
    ("rounds=0", "rounds: must be >= 1, got 0"),
    ("rounds=two", "rounds: expected an integer, got 'two'"),
    ("rounds_init=last", "rounds_init: 'last' is not one of base, previous"),
    ("round.generator=x", "round.generator, round.generator_fingerprint: set together"),
    ("round.index=0", "round.index: must be >= 1, got 0"),
])
def test_bad_rounds_settings_name_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(BASE, [override]).validate()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_bad_rounds_setting_is_one_line_on_the_command_line(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(BASE))
    assert main(["run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "rounds=0"]) == 2
    assert capsys.readouterr().err == "smlearn: error: rounds: must be >= 1, got 0\n"
    assert not (tmp_path / "run").exists()


def test_one_round_fingerprints_are_those_from_before_rounds():
    """Pinned: the fingerprints of this config before `rounds` existed, so finished runs stay finished. A
    multi-round setting leaves them too (round 1 of several is a one-round run)."""
    before = {"generate": "9f3158385e91e813", "collect": "ef692dfad610724d", "sft": "1938586ced70d47a",
              "rm": "ca1b8b917e973354", "rl": "27e17ef8085c9e55", "eval": "5348668c333d9fe9",
              "report": "5348668c333d9fe9"}
    for overrides in ([], ["rounds=3", "rounds_init=previous"]):
        config = config_from_dict(tiny_config("model", "data", "commonsense_qa"), overrides)
        assert {s: fingerprint(config, s) for s in STAGES} == before


def test_round_models_enter_the_fingerprints_of_the_stages_they_start():
    one = config_from_dict(BASE)
    gen = config_from_dict(BASE, ["round.index=2", "round.generator=/r1/rl/model", "round.generator_fingerprint=a"])
    moved = config_from_dict(BASE, ["round.index=2", "round.generator=/x/rl/model", "round.generator_fingerprint=a"])
    init = config_from_dict(BASE, ["round.index=2", "round.generator=/r1/rl/model", "round.generator_fingerprint=a",
                                   "round.init=/r1/rl/model", "round.init_fingerprint=a"])
    for stage in STAGES:
        assert fingerprint(gen, stage) != fingerprint(one, stage)                # the generator: every stage
        assert fingerprint(moved, stage) == fingerprint(gen, stage)              # its path: none
        assert (fingerprint(init, stage) == fingerprint(gen, stage)) == (stage in ("generate", "collect"))


def test_one_layout_per_directory(tmp_path, tiny_base, data):
    flat, multi = tmp_path / "flat", tmp_path / "multi"
    (flat).mkdir()
    (flat / "manifest.json").write_text("{}")
    (multi / "round-1").mkdir(parents=True)
    with pytest.raises(RunDirError, match="one-round run"):
        smlearn.run(_config(tiny_base, data), flat, progress=False)
    with pytest.raises(RunDirError, match="several rounds"):
        smlearn.run(_config(tiny_base, data, rounds=1), multi, progress=False)


def test_the_lab_runs_round_wise(tmp_path, monkeypatch):
    """`smlearn run rounds=2 --until collect` on the lab: round 1 whole, round 2 through collect (the stages are
    recorders that mark themselves done; the data is tiny); no oracle or lab analysis."""
    from smlearn.lab import default

    monkeypatch.setenv("SMLEARN_CACHE", str(tmp_path / "cache"))
    ran = []

    def recorder(stage):
        return lambda run, progress=True: ran.append((run.root.name, stage)) or run.mark_done(stage, {}) or {}

    monkeypatch.setattr(pipeline, "STAGE_FUNCTIONS", {s: recorder(s) for s in STAGES})
    monkeypatch.setattr(default, "_oracle", lambda run, progress: ran.append("oracle") or {"accuracy": 0.0})
    out = tmp_path / "run"
    assert main(["run", "--until", "collect", "--out", str(out), "lab.n_train=2", "lab.n_test=2", "lab.n_rl=2",
                 "rounds=2", "rounds_init=previous"]) == 0
    assert ran == [("round-1", s) for s in STAGES] + [("round-2", "generate"), ("round-2", "collect")]
    config2 = load_config(out / "round-2" / "config.yaml")
    assert config2.round.generator == config2.round.init == str((out / "round-1" / "rl" / "model").resolve())
    assert not (out / "round-2" / "lab_metrics.json").exists()
