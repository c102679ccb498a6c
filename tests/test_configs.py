"""Every shipped config in configs/ loads with the strict schema and validates."""
from __future__ import annotations

from pathlib import Path

import pytest

from smlearn.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    for expected in ("smollm2_coin_flip.yaml", "smollm2_last_letter.yaml", "smollm2_multiarith.yaml",
                     "smollm2_commonsense_qa.yaml", "llama7b_gsm8k_lora.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_validates(path):
    config = load_config(path).validate()
    assert config.model.name_or_path
    assert config.data.source
    assert config.model.trust_remote_code is False


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("smollm2_")],
                         ids=[p.name for p in CONFIGS if p.name.startswith("smollm2_")])
def test_smollm2_configs_point_at_the_packaged_gguf(path):
    config = load_config(path, ["data.source=/elsewhere/coin_flip"]).validate()
    assert config.model.name_or_path == "smollm2"
    assert config.model.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert config.data.source == "/elsewhere/coin_flip"  # the command-line override wins
    assert config.prompts.n_shots == 4
    assert config.data.train_limit and config.data.test_limit
    repo = Path(__file__).resolve().parents[1]
    # The exemplars key exists in the shared prompt file (when the shared data is present).
    exemplars = (repo / config.prompts.exemplars)
    if exemplars.exists():
        import json

        assert config.prompts.exemplars_key in json.loads(exemplars.read_text())
