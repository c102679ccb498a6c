"""The lab's settings (`lab.*`): typed like the run config, overrides merged onto the defaults, cache keys
stable, `smlearn lab config` to see them, and `--until` on the lab path. No model is trained here."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from smlearn import pipeline
from smlearn.cli import main
from smlearn.errors import ConfigError
from smlearn.lab import default
from smlearn.lab.default import LabSettings, split_overrides
from smlearn.rundir import STAGES


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Lab data and models are cached here, never in the user's cache."""
    monkeypatch.setenv("SMLEARN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_wrong_type_is_a_one_line_config_error_naming_the_field(tmp_path, cache, capsys):
    with pytest.raises(ConfigError, match=r"^lab\.n_train: expected an integer, got 'abc'$"):
        split_overrides(["lab.n_train=abc"])
    for argv in (["run", "--out", str(tmp_path / "run"), "lab.n_train=abc"], ["lab", "config", "lab.n_train=abc"],
                 ["lab", "pretrain", "lab.n_train=abc"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == "smlearn: error: lab.n_train: expected an integer, got 'abc'\n"
    assert not (tmp_path / "run").exists() and not cache.exists()        # failed before building anything


@pytest.mark.parametrize("override, message", [
    ("lab.pretrain.loss_on=everything", r"^lab\.pretrain\.loss_on: must be one of answer, all"),
    ("lab.pretrain.window_start=middle", r"^lab\.pretrain\.window_start: must be one of document, random"),
    ("lab.copy_drill_fraction=2", r"^lab\.copy_drill_fraction: must be in \[0, 1\]"),
    ("lab.n_test=0", r"^lab\.n_test: must be >= 1"),
    ("lab.model.hidden_size=1.5", r"^lab\.model\.hidden_size: expected an integer"),
    ("lab.tasks=[arithmetic, gsm8k]", r"^lab\.tasks: unknown task 'gsm8k'"),
    ("lab.flaw_rates.coins.misc_give_adds=0.1", r"^lab\.flaw_rates\.coins\.misc_give_adds: unknown flaw"),
    ("lab.flaw_rates.arithmetic.slip=1.5", r"^lab\.flaw_rates\.arithmetic\.slip: must be in \[0, 1\]"),
    ("lab.flaw_rates.arithmetic.slip=0.5", r"^lab\.flaw_rates\.arithmetic: rates sum to 1\.320 > 1"),
    ("lab.flaw_rates.arithmetic.slip=many", r"^lab\.flaw_rates\.arithmetic\.slip: expected a number"),
    ("lab.flaw_rates.gsm8k.slip=0.1", r"^lab\.flaw_rates\.gsm8k: unknown task"),
    ("lab.n_tarin=3", r"^lab\.n_tarin: unknown field"),
    ("lab.pretrain_steps=900", r"^lab\.pretrain_steps: moved to lab\.pretrain\.steps"),
])
def test_bad_settings_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        split_overrides([override])


def test_one_flaw_rate_override_keeps_every_other_rate(capsys):
    expected = LabSettings().flaw_rates
    expected["arithmetic"]["slip"] = 0.1
    settings, rest = split_overrides(["lab.flaw_rates.arithmetic.slip=0.1", "rl.steps=3"])
    assert settings.flaw_rates == expected and rest == ["rl.steps=3"]
    assert list(settings.flaw_rates["arithmetic"]) == list(LabSettings().flaw_rates["arithmetic"])   # draw order kept
    assert main(["lab", "config", "lab.flaw_rates.arithmetic.slip=0.1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lab"]["flaw_rates"] == expected
    assert printed == {"lab": dataclasses.asdict(settings)}


def test_nested_overrides_keep_the_rest_of_their_section():
    settings, _ = split_overrides(["lab.pretrain.steps=900", "lab.model.hidden_size=64"])
    assert settings.pretrain == dataclasses.replace(LabSettings().pretrain, steps=900)
    assert settings.model == dataclasses.replace(LabSettings().model, hidden_size=64)


def test_lab_config_prints_the_defaults_and_builds_nothing(cache, capsys):
    assert main(["lab", "config"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == {"lab": dataclasses.asdict(LabSettings())}
    assert "shipped with smlearn" in out                 # the default settings' base model is in the package
    assert not cache.exists()
    assert main(["lab", "config", "rl.steps=3"]) == 2     # run-config overrides are not lab settings
    assert "lab.* overrides only" in capsys.readouterr().err


def test_cache_keys_are_those_of_the_flat_settings_before_nesting():
    """The same settings find the same cached data and base model as before `model` and `pretrain` were
    nested (keys computed by the flat LabSettings of LAB_VERSION 3), and the defaults the shipped model."""
    keys = {(): ("6623e3a7abd4", "f008034ed09e"),
            ("lab.seed=3",): ("aad6539588f3", "feb1119d51e8"),
            ("lab.n_train=10",): ("de5f754ce114", "f008034ed09e"),
            ("lab.pretrain.steps=900",): ("6623e3a7abd4", "79a3d9f206f8"),
            ("lab.model.hidden_size=64", "lab.model.max_position_embeddings=256"): ("6623e3a7abd4", "b4f40ef7e40e"),
            ("lab.tasks=[coins, arithmetic]",): ("87866b22692d", "e64e6a066729")}
    for overrides, (data_key, model_key) in keys.items():
        settings, _ = split_overrides(list(overrides))
        assert (settings.data_key(), settings.model_key()) == (data_key, model_key), overrides
    # A field the flat settings did not have moves the model key only when it is set.
    warm = split_overrides(["lab.pretrain.warmup_steps=40"])[0]
    assert warm.data_key() == "6623e3a7abd4" and warm.model_key() not in ("f008034ed09e", "79a3d9f206f8")
    assert default.packaged_base_model(LabSettings()).name == "base-f008034ed09e"


def test_until_stops_the_lab_after_that_stage(tmp_path, monkeypatch):
    """`smlearn run --until collect` on the lab runs the pipeline through collect and stops there: no later
    stage, no oracle, no lab analysis (the stages are recorders here; the data is tiny)."""
    ran = []

    def recorder(stage):
        return lambda run, progress=True: ran.append(stage) or {}

    monkeypatch.setattr(pipeline, "STAGE_FUNCTIONS", {s: recorder(s) for s in STAGES})
    monkeypatch.setattr(default, "_oracle", lambda run, progress: ran.append("oracle") or {"accuracy": 0.0})
    out = tmp_path / "run"
    assert main(["run", "--until", "collect", "--out", str(out), "lab.n_train=2", "lab.n_test=2", "lab.n_rl=2"]) == 0
    assert ran == ["generate", "collect"]
    assert not (out / "lab_metrics.json").exists() and not (out / "report.md").exists()
