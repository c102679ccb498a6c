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


# ---------------------------------------------------------------------------
# Multi-GPU launch configs (issue 10): accelerate YAMLs and DeepSpeed JSONs
# ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
LAUNCH = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
DEEPSPEED = sorted((REPO / "configs" / "deepspeed").glob("*.json"))


def test_launch_configs_exist():
    assert {p.name for p in LAUNCH} >= {"ddp.yaml", "zero2.yaml", "zero3.yaml", "zero3_offload.yaml"}
    assert {p.name for p in DEEPSPEED} >= {"zero2.json", "zero3.json", "zero3_offload.json"}


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_accelerate_config_loads_and_points_at_a_deepspeed_config(path):
    import json

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_machines == 1 and config.num_processes >= 1
    if config.distributed_type.value == "DEEPSPEED":
        ds = REPO / config.deepspeed_config["deepspeed_config_file"]
        stage = json.loads(ds.read_text())["zero_optimization"]["stage"]
        assert stage == (3 if "zero3" in path.name else 2)
    else:
        assert config.distributed_type.value == "MULTI_GPU"


@pytest.mark.parametrize("path", DEEPSPEED, ids=[p.name for p in DEEPSPEED])
def test_deepspeed_config_passes_deepspeeds_own_check(path):
    """DeepSpeed's parser on the config with the Trainer's "auto" values filled in (skipped without deepspeed,
    which smlearn does not require)."""
    pytest.importorskip("deepspeed")
    import json

    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads(path.read_text())
    autos = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
             "gradient_clipping": 1.0}
    config = {k: (autos[k] if v == "auto" else v) for k, v in raw.items()}
    config["bf16"], config["fp16"] = {"enabled": True}, {"enabled": False}
    zero = dict(config["zero_optimization"])
    for key, value in list(zero.items()):
        if value == "auto":
            zero[key] = 4096 * 4096 if "bucket" in key else 40960
    config["zero_optimization"] = zero
    parsed = DeepSpeedConfig(config)         # strict: an unknown zero_optimization key is an error
    assert parsed.zero_optimization_stage == raw["zero_optimization"]["stage"]
    assert parsed.bfloat16_config.enabled


def test_zero3_refuses_what_it_cannot_run(monkeypatch):
    from smlearn import dist
    from smlearn.errors import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(REPO / "configs" / "deepspeed" / "zero3.json"))
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
    assert dist.zero_stage() == 3
    seven_b = REPO / "configs" / "llama7b_gsm8k_lora.yaml"
    with pytest.raises(ConfigError, match=r"^sft\.lora\.enabled: LoRA under DeepSpeed ZeRO-3"):
        dist.check_config(load_config(seven_b))
    full = ["sft.lora.enabled=false", "rm.lora.enabled=false"]
    dist.check_config(load_config(seven_b, full))                        # PPO with rl.lora: data-parallel
    dist.check_config(load_config(seven_b, full + ["rl.algorithm=grpo", "rl.lora.enabled=false"]))
    with pytest.raises(ConfigError, match=r"^rl\.lora\.enabled: smlearn's PPO does not partition"):
        dist.check_config(load_config(seven_b, full + ["rl.lora.enabled=false"]))
    with pytest.raises(ConfigError, match=r"^rm\.lm_coef: the language-modelling regulariser"):
        dist.check_config(load_config(seven_b, full + ["rm.lm_coef=0.1"]))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(REPO / "configs" / "deepspeed" / "zero2.json"))
    assert dist.zero_stage() == 2
    dist.check_config(load_config(seven_b))                              # LoRA under ZeRO-2 is fine
