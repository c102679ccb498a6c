"""Experiment tracking (issue 12): TensorBoard event files per training stage, readable by TensorBoard's own
reader, and the `log` config section."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import smlearn
from smlearn.config import RunConfig, config_from_dict
from smlearn.errors import ConfigError

from conftest import bench, tiny_config, write_slice

ROOT = Path(__file__).resolve().parents[1]


def _scalars(folder: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory, tiny_base):
    data = write_slice(bench("multiarith"), tmp_path_factory.mktemp("tb-data"), 8, 4)
    out = tmp_path_factory.mktemp("tb-run") / "run"
    cfg = tiny_config(tiny_base, data, "multiarith", eval={"stages": ["rl"], "max_new_tokens": 8})
    smlearn.run(cfg, out, progress=False, until="rl")
    return out


def test_every_training_stage_writes_tensorboard_scalars(tb_run):
    sft = _scalars(tb_run / "tb" / "sft")
    assert "train/loss" in sft and all(v == v for v in sft["train/loss"])
    rm = _scalars(tb_run / "tb" / "rm")
    assert "train/loss" in rm
    ppo = _scalars(tb_run / "tb" / "rl")
    # Every numeric metric of rl/log.jsonl is there, one value per step: the reward and its parts,
    # the KL, the response length and the clipped fraction included.
    import json
    rows = [json.loads(line) for line in (tb_run / "rl" / "log.jsonl").read_text().splitlines()]
    for key in ("reward_mean", "score_mean", "kl_mean", "response_length_mean", "clipfrac", "value_clipfrac",
                "approx_kl", "entropy", "policy_loss", "value_loss", "rm_score_mean", "correct_mean"):
        assert f"train/{key}" in ppo, key
        assert len(ppo[f"train/{key}"]) == len(rows)
    assert ppo["train/reward_mean"] == pytest.approx([r["reward_mean"] for r in rows], rel=1e-6)


def test_report_to_none_writes_no_event_files(tmp_path, tiny_base):
    data = write_slice(bench("multiarith"), tmp_path / "data", 8, 4)
    cfg = tiny_config(tiny_base, data, "multiarith", log={"report_to": ["none"]})
    smlearn.run(cfg, tmp_path / "run", progress=False, until="sft")
    assert not (tmp_path / "run" / "tb").exists()


@pytest.mark.parametrize("value, message", [
    (["tensorbord"], "log.report_to: 'tensorbord' is not one of tensorboard, wandb, trackio, none"),
    (["none", "tensorboard"], "log.report_to: 'none' cannot be combined"),
])
def test_bad_report_to_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"model": {"name_or_path": "m"}, "data": {"source": "d"},
                          "log": {"report_to": value}}).validate()


def test_log_section_does_not_change_fingerprints():
    from smlearn.rundir import STAGES, fingerprint

    base = config_from_dict({"model": {"name_or_path": "m"}, "data": {"source": "d"}})
    other = config_from_dict({"model": {"name_or_path": "m"}, "data": {"source": "d"},
                              "log": {"report_to": ["none"]}})
    assert all(fingerprint(base, s) == fingerprint(other, s) for s in STAGES)


def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from _fields(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_every_config_field_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Config reference"):readme.index("## Safety defaults")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for name in _fields(RunConfig):
        section, *middle, leaf = name.split(".") if "." in name else (name, name)      # rounds: top level
        first = ".".join([section, *middle[:1]]) if middle else name
        # "`sft.epochs`, `learning_rate`" rows list further fields of the section by their bare name;
        # "`rm.lora.*`" / "`lora.*`" cover a nested section.
        in_section = [r for r in rows if f"`{section}." in r or r.startswith(f"| `{name}` |")]
        assert any(f"`{name}`" in r or f"`{leaf}`" in r or f"`{first}.*`" in r or
                   (middle and f"`{middle[0]}.*`" in r) for r in in_section), f"{name} missing from the README table"


def test_console_is_one_line_per_stage_plus_bars(tmp_path, tiny_base, capfd):
    """The `smlearn` command's console: stage lines on stdout; on stderr only progress bars (no trainer dict
    per logging step, no library warnings, no model load/save bars)."""
    from smlearn.cli import main

    data = write_slice(bench("multiarith"), tmp_path / "data", 8, 4)
    import yaml
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config(tiny_base, data, "multiarith")))
    assert main(["run", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 0
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert all(line.startswith("[smlearn] ") for line in lines), lines
    assert [line.split(":")[0] for line in lines][:7] == [f"[smlearn] {s}" for s in
                                                         ("generate", "collect", "sft", "rm", "rl", "eval", "report")]
    assert "'loss'" not in out + err and "learning_rate" not in out + err
    assert "Warning" not in err and "warn(" not in err
    assert "Loading weights" not in err and "Writing model shards" not in err and "Tokenizing" not in err
    bars = {segment.split(":")[0].strip() for segment in err.replace("\r", "\n").splitlines() if "%|" in segment}
    assert {"sft", "rm", "ppo", "eval base", "eval sft", "eval rl"} <= bars, bars


def test_lab_run_tensorboard_has_ppo_sft_and_rm_scalars(tmp_path, monkeypatch):
    """A (small) reasoning-lab run with PPO: its event files load in TensorBoard's reader with the SFT, RM
    and PPO scalars; GRPO (the lab's default) is covered in test_integration."""
    from smlearn.lab.default import run_lab

    monkeypatch.setenv("SMLEARN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lab"
    run_lab(out, ["lab.n_train=8", "lab.n_test=4", "lab.n_rl=12", "rl.algorithm=ppo", "rl.steps=2",
                  "rl.rollout_batch_size=8", "rl.mini_batch_size=8", "rl.num_generations=2", "rl.eval_questions=4",
                  "rl.eval_every=1", "rl.max_new_tokens=48", "generate.samples_free=2", "generate.samples_gold=2"],
            progress=False)
    assert "train/loss" in _scalars(out / "tb" / "sft")
    assert {"train/loss", "train/learning_rate"} <= set(_scalars(out / "tb" / "rm"))
    ppo = _scalars(out / "tb" / "rl")
    for key in ("reward_mean", "kl_mean", "response_length_mean", "clipfrac", "rm_score_mean", "correct_mean",
                "eval_accuracy"):
        assert f"train/{key}" in ppo, key
    assert len(ppo["train/reward_mean"]) == 2
