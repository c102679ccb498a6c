"""Typed run configuration: plain dataclasses, loaded from YAML, overridable by `key=value`.

One section per stage, in the order data flows: model → data → prompts →
generate → collect → sft → rm → rl → eval. Unknown keys and wrong types are
errors naming the dotted field, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass
class ModelConfig:
    name_or_path: str = ""            # hub id or local folder of a causal LM
    gguf_file: str | None = None      # a GGUF file inside name_or_path (or a path to one)
    revision: str | None = None
    trust_remote_code: bool = False   # off unless asked: remote code runs arbitrary Python
    dtype: str = "auto"               # auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16
    device: str = "auto"
    chat_template: bool = False       # wrap prompts in the tokenizer's chat template
    engine: str = "auto"              # generation: auto (smlearn's engine where supported), fast, or hf (HF generate)


@dataclass
class DataConfig:
    source: str = ""                  # JSONL file, folder with train/test files, or hub dataset id
    name: str | None = None           # built-in hub adapter (gsm8k, commonsense_qa, strategy_qa, svamp) or label
    hub_config: str | None = None     # hub dataset config name (e.g. "main" for gsm8k)
    train_split: str = "train"
    test_split: str = "test"
    kind: str | None = None           # answer kind for sources without a kind column
    columns: dict[str, str] = field(default_factory=dict)  # our field -> source column (id, question, answer, choices)
    train_limit: int | None = None    # first N training questions (None: all)
    test_limit: int | None = None


@dataclass
class PromptConfig:
    exemplars: str = "builtin"        # builtin, or a JSON file of exemplars
    exemplars_key: str | None = None  # key inside that JSON (e.g. gsm8k); default: data.name
    n_shots: int = 4
    trigger: str = "The answer is"    # the answer sentence that ends every rationale
    eval_few_shot_after_training: bool = False  # SFT/RL models are prompted zero-shot by default


@dataclass
class GenerateConfig:
    samples_gold: int = 4             # rationales per question conditioned on the gold answer
    samples_wrong: int = 2            # rationales per wrong candidate
    max_wrong_candidates: int = 2     # wrong candidates per question
    samples_free: int = 4             # free CoT samples (no hint)
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 16
    seed: int = 0


@dataclass
class CollectConfig:
    max_sft_per_question: int = 4     # cap of deduplicated high-quality rationales per question
    max_pairs_per_question: int = 8
    answer_max_new_tokens: int = 12   # hint-free final answer step
    batch_size: int = 32
    heldout_fraction: float = 0.1     # questions whose pairs are held out for RM evaluation
    seed: int = 0


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class SFTStageConfig:
    epochs: float = 2.0
    learning_rate: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0


@dataclass
class RMStageConfig:
    init: str = "sft"                 # sft or base: where the RM backbone starts
    epochs: float = 2.0
    learning_rate: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 0


@dataclass
class CorrectionConfig:
    enabled: bool = True              # penalise rollouts whose final answer is wrong, whatever the RM says
    mode: str = "replace"             # replace: reward = wrong_reward; add: reward = rm + wrong_reward
    wrong_reward: float = -1.0
    correct_bonus: float = 0.0        # added to rollouts whose final answer is right


@dataclass
class RLStageConfig:
    algorithm: str = "ppo"            # ppo (ours), grpo or rloo (TRL)
    steps: int = 50
    rollout_batch_size: int = 16
    mini_batch_size: int = 8
    ppo_epochs: int = 2
    learning_rate: float = 1e-5
    kl_coef: float = 0.05
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    temperature: float = 0.8
    max_new_tokens: int = 128
    num_generations: int = 4          # group size for grpo / rloo
    rm_score_normalize: bool = True   # standardise RM scores with their mean/std on the training pairs
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    seed: int = 0


@dataclass
class EvalConfig:
    stages: list[str] = field(default_factory=lambda: ["base", "sft", "rl"])
    max_new_tokens: int = 192
    batch_size: int = 32


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rm: RMStageConfig = field(default_factory=RMStageConfig)
    rl: RLStageConfig = field(default_factory=RLStageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        if not self.model.name_or_path:
            raise ConfigError("model.name_or_path: required (a hub id or a local folder)")
        if not self.data.source:
            raise ConfigError("data.source: required (a JSONL file, a folder, or a hub dataset id)")
        if self.model.engine not in ("auto", "fast", "hf"):
            raise ConfigError(f"model.engine: '{self.model.engine}' is not one of auto, fast, hf")
        if self.rl.algorithm not in ("ppo", "grpo", "rloo"):
            raise ConfigError(f"rl.algorithm: '{self.rl.algorithm}' is not one of ppo, grpo, rloo")
        if self.rm.init not in ("sft", "base"):
            raise ConfigError(f"rm.init: '{self.rm.init}' is not one of sft, base")
        if self.rl.correction.mode not in ("replace", "add"):
            raise ConfigError(f"rl.correction.mode: '{self.rl.correction.mode}' is not one of replace, add")
        for s in self.eval.stages:
            if s not in ("base", "sft", "rl"):
                raise ConfigError(f"eval.stages: '{s}' is not one of base, sft, rl")
        for name in ("samples_gold", "samples_wrong", "samples_free", "max_new_tokens", "batch_size"):
            if getattr(self.generate, name) < 0 or (name in ("max_new_tokens", "batch_size") and getattr(self.generate, name) == 0):
                raise ConfigError(f"generate.{name}: must be positive")
        if not 0 <= self.collect.heldout_fraction < 1:
            raise ConfigError("collect.heldout_fraction: must be in [0, 1)")
        return self


# ---------------------------------------------------------------------------
# Building dataclasses from plain data, with errors that name the field.
# ---------------------------------------------------------------------------

def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            # YAML 1.1 reads "1e-4" (no dot in the mantissa) as a string; it is a number.
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown field (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`rl.kl_coef=0.1` → {"rl": {"kl_coef": 0.1}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. generate.temperature=0.7")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    node: dict[str, Any] = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return node


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    for o in overrides or []:
        data = _merge(data, parse_override(o))
    return _build(RunConfig, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML config (on top of `base` defaults), apply `key=value` overrides."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{line} invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = _merge(data, loaded)
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_config(config: RunConfig, path: str | Path) -> None:
    from .io import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
