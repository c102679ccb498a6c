"""Typed run configuration: plain dataclasses, loaded from YAML, overridable by `key=value`.

One section per stage, in the order data flows: model → data → prompts →
generate → collect → sft → rm → rl → eval; `rounds` / `rounds_init` repeat the
whole pipeline (smlearn.rounds), and `round` says which round a run directory is.
Unknown keys and wrong types are errors naming the dotted field, so a typo never
silently falls back to a default.
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
from .prompts.templates import DEFAULT_TRIGGER

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
    trigger: str = DEFAULT_TRIGGER    # the answer sentence that ends every rationale
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
    rm_split: str | None = None       # a further data split: its first rm_questions questions get rationales for the RM only
    rm_questions: int = 0             # how many (0: none; the RM trains and is evaluated on the training questions' pairs)


@dataclass
class CollectConfig:
    max_sft_per_question: int = 4     # cap of deduplicated high-quality rationales per question
    max_pairs_per_question: int = 8
    pairs: str = "right_over_wrong"   # right_over_wrong (high over mid/low) or all_levels (mid over low too)
    answer_max_new_tokens: int = 12   # hint-free final answer step
    batch_size: int = 32
    heldout_fraction: float = 0.1     # of the questions with pairs (the RM-only ones when there are any): held out to evaluate the RM
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
    lm_coef: float = 0.0              # + lm_coef x next-token loss on prompt+chosen (GRM-style regulariser; 0: off)
    pooling: str = "last"             # the score: the head at the last token, or its mean over the completion


@dataclass
class CorrectionConfig:
    """The gold-answer correction of the RL reward (docs/method.md: a wrong final answer is penalised whatever
    the RM says). With z the standardised RM score and t = rl.rm_weight * tanh(z), bounded in (-w, w):
        replace: right -> t + correct_bonus;  wrong -> wrong_reward
        add:     right -> t + correct_bonus;  wrong -> t + wrong_reward
    so every right rollout out-rewards every wrong one (checked: correct_bonus - wrong_reward > w, or 2w
    in add mode)."""
    enabled: bool = True              # penalise rollouts whose final answer is wrong, whatever the RM says
    mode: str = "replace"             # replace: wrong gets wrong_reward; add: wrong gets RM term + wrong_reward
    wrong_reward: float = -1.0        # the reward (replace) or offset (add) of a wrong or unfinished rollout
    correct_bonus: float = 1.0        # added to the RM term of a rollout whose final answer is right


@dataclass
class RLStageConfig:
    """The one RL config: `rl:` in YAML, read as is by PPO (train/ppo.py) and by GRPO/RLOO (train/rl_trl.py).

    A step samples `rollout_batch_size` rollouts (`rollout_batch_size / num_generations` prompts, each
    `num_generations` times), scores them, and updates the policy on them."""
    algorithm: str = "ppo"            # ppo (ours), grpo or rloo (TRL)
    steps: int = 50                   # RL steps (each: one rollout batch, then its updates)
    rollout_batch_size: int = 16      # rollouts per step (all algorithms: the RL budget is steps x this)
    num_generations: int = 4          # rollouts per prompt in a step (GRPO/RLOO: the group; PPO: any >= 1)
    mini_batch_size: int = 8          # PPO: rollouts per gradient step
    ppo_epochs: int = 2               # PPO: passes over each rollout batch
    learning_rate: float = 1e-5       # policy learning rate (peak, before the schedule)
    value_learning_rate: float | None = None   # PPO value model; None: learning_rate
    lr_scheduler: str = "linear"      # linear (anneal to 0 over the steps, as TRL PPOv2 / CleanRL) or constant
    weight_decay: float = 0.0         # AdamW weight decay (the references use none)
    max_grad_norm: float = 1.0        # global gradient-norm clip, per network
    kl_coef: float = 0.05             # beta of the KL to the SFT policy (PPO: per-token reward penalty; GRPO/RLOO: loss)
    kl_estimator: str = "k1"          # PPO: k1 (log-ratio) or k3 (non-negative) per-token KL estimate
    clip_range: float = 0.2           # PPO policy ratio clip
    clip_range_value: float = 0.2     # PPO value clip
    vf_coef: float = 0.1              # PPO value-loss weight
    critic_warmup_steps: int = 0      # PPO: first steps update only the value model (verl/OpenRLHF's critic warm-up)
    gamma: float = 1.0                # PPO discount
    lam: float = 0.95                 # PPO GAE lambda
    whiten_rewards: bool = False      # PPO: rescale per-token rewards by their std over the batch
    whiten_advantages: bool = True    # PPO: standardise advantages over the batch
    temperature: float = 0.8          # rollout sampling temperature (log-probs use the same)
    top_p: float = 1.0                # rollout nucleus sampling (1.0: the full distribution PPO scores)
    max_new_tokens: int = 128         # rollout length limit; a rollout cut here is unfinished (wrong)
    missing_eos_penalty: float | None = None   # subtracted from the reward of an unfinished rollout
    rm_weight: float = 0.5            # w: the RM's share of the reward, w * tanh(standardised RM score)
    rm_score_normalize: bool = True   # standardise RM scores with their mean/std on the training pairs
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    # LoRA for RL: the policy as adapters on the SFT model, whose adapter-disabled forward is the KL reference
    # (no second copy); PPO's value model as adapters (+ its head) on the RM backbone. Merged into rl/model.
    lora: LoraConfig = field(default_factory=LoraConfig)
    split: str = "train"              # data split whose questions RL trains on (the lab adds a large "rl" split)
    eval_questions: int = 0           # hold out this many RL questions; greedy accuracy on them is logged
    eval_every: int = 0               # log that held-out greedy accuracy every N steps (0: never)
    seed: int = 0

    def validate(self) -> "RLStageConfig":
        """Every RL field checked before any stage runs; errors name the field."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"rl.{name}: {why}, got {getattr(self, name)!r}")

        if self.algorithm not in ("ppo", "grpo", "rloo"):
            raise ConfigError(f"rl.algorithm: '{self.algorithm}' is not one of ppo, grpo, rloo")
        for name in ("steps", "rollout_batch_size", "num_generations", "mini_batch_size", "ppo_epochs",
                     "learning_rate", "max_new_tokens", "temperature", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        for name in ("kl_coef", "weight_decay", "clip_range", "clip_range_value", "vf_coef", "rm_weight",
                     "eval_questions", "eval_every", "critic_warmup_steps"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.value_learning_rate is not None and not self.value_learning_rate > 0:
            raise bad("value_learning_rate", "must be > 0 (or null: the policy's)")
        if self.rollout_batch_size % self.num_generations:
            raise bad("rollout_batch_size", f"must be a multiple of rl.num_generations ({self.num_generations})")
        if self.lr_scheduler not in ("linear", "constant"):
            raise bad("lr_scheduler", "must be linear or constant")
        if self.kl_estimator not in ("k1", "k3"):
            raise bad("kl_estimator", "must be k1 or k3")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"rl.gamma, rl.lam: must be in [0, 1], got {self.gamma!r}, {self.lam!r}")
        if not self.lora.r >= 1:
            raise ConfigError(f"rl.lora.r: must be >= 1, got {self.lora.r!r}")
        if not self.lora.alpha > 0:
            raise ConfigError(f"rl.lora.alpha: must be > 0, got {self.lora.alpha!r}")
        if not 0 <= self.lora.dropout < 1:
            raise ConfigError(f"rl.lora.dropout: must be in [0, 1), got {self.lora.dropout!r}")
        c = self.correction
        if c.mode not in ("replace", "add"):
            raise ConfigError(f"rl.correction.mode: '{c.mode}' is not one of replace, add")
        need = self.rm_weight * (2 if c.mode == "add" else 1)
        if c.enabled and not c.correct_bonus - c.wrong_reward > need:
            raise ConfigError(
                f"rl.correction: correct_bonus - wrong_reward must exceed {need:g} (rl.rm_weight"
                f"{' x 2 in add mode' if c.mode == 'add' else ''}) so that every right rollout out-rewards every "
                f"wrong one, got {c.correct_bonus:g} - ({c.wrong_reward:g})")
        return self


@dataclass
class EvalConfig:
    stages: list[str] = field(default_factory=lambda: ["base", "sft", "rl"])
    max_new_tokens: int = 192
    batch_size: int = 32


@dataclass
class LogConfig:
    # Where training stages log their scalars (TRL's report_to): tensorboard (<run>/tb/<stage>/), wandb,
    # trackio, or [none]. Logging only: no stage's results depend on it.
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class RoundConfig:
    """Which round of a multi-round run this run directory is (smlearn.rounds writes it into round-k/config.yaml,
    whose `rounds` is 1: the directory holds one round; not a setting to write by hand). Empty (its defaults) in
    round 1 and in a one-round run: there the base model (`model.name_or_path`) generates, judges and is trained.
    The paths are where the models are; the fingerprints say which training made them, and only they enter the
    stage fingerprints (rundir.fingerprint)."""
    index: int = 1                    # k: this directory is round k
    generator: str = ""               # the model that writes and judges the rationales: round k-1's final model
    generator_fingerprint: str = ""
    init: str = ""                    # the model SFT (and rm.init=base) starts from: "" the base model, or round k-1's
    init_fingerprint: str = ""        # final model (rounds_init: previous)


@dataclass
class RunConfig:
    rounds: int = 1                   # times the whole pipeline runs; round k >= 2 generates with round k-1's model
    rounds_init: str = "base"         # where each round's training starts: base (STaR) or previous (round k-1's model)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rm: RMStageConfig = field(default_factory=RMStageConfig)
    rl: RLStageConfig = field(default_factory=RLStageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    round: RoundConfig = field(default_factory=RoundConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        """Every field checked before any stage runs (so a bad value never fails after hours of work);
        errors name the dotted field and the value."""
        if not self.model.name_or_path:
            raise ConfigError("model.name_or_path: required (a hub id or a local folder)")
        if not self.data.source:
            raise ConfigError("data.source: required (a JSONL file, a folder, or a hub dataset id)")
        if self.rounds_init not in ("base", "previous"):
            raise ConfigError(f"rounds_init: '{self.rounds_init}' is not one of base, previous")
        if bool(self.round.generator) != bool(self.round.generator_fingerprint):
            raise ConfigError("round.generator, round.generator_fingerprint: set together (by smlearn.rounds)")
        if bool(self.round.init) != bool(self.round.init_fingerprint):
            raise ConfigError("round.init, round.init_fingerprint: set together (by smlearn.rounds)")
        if self.model.engine not in ("auto", "fast", "hf"):
            raise ConfigError(f"model.engine: '{self.model.engine}' is not one of auto, fast, hf")
        if self.model.dtype not in _DTYPES:
            raise ConfigError(f"model.dtype: '{self.model.dtype}' is not one of auto, float32, bfloat16, float16")
        if not _DEVICE_RE.fullmatch(self.model.device):
            raise ConfigError(f"model.device: '{self.model.device}' is not auto, cpu, cuda, cuda:N, mps or xpu")
        if self.data.kind is not None and self.data.kind not in ("number", "choice", "yes_no", "text"):
            raise ConfigError(f"data.kind: '{self.data.kind}' is not one of number, choice, yes_no, text")
        if self.collect.pairs not in ("right_over_wrong", "all_levels"):
            raise ConfigError(f"collect.pairs: '{self.collect.pairs}' is not one of right_over_wrong, all_levels")
        if self.rm.init not in ("sft", "base"):
            raise ConfigError(f"rm.init: '{self.rm.init}' is not one of sft, base")
        if self.rm.pooling not in ("last", "mean"):
            raise ConfigError(f"rm.pooling: '{self.rm.pooling}' is not one of last, mean")
        self.rl.validate()
        from .tracking import check_report_to
        if (problem := check_report_to(self.log.report_to)) is not None:
            raise ConfigError(f"log.report_to: {problem}")
        for s in self.eval.stages:
            if s not in ("base", "sft", "rl"):
                raise ConfigError(f"eval.stages: '{s}' is not one of base, sft, rl")
        _at_least(self, 1, "rounds", "round.index", "data.train_limit", "data.test_limit",
                  "generate.max_new_tokens", "generate.batch_size", "collect.max_sft_per_question",
                  "collect.max_pairs_per_question", "collect.answer_max_new_tokens", "collect.batch_size",
                  "sft.batch_size", "sft.grad_accum", "sft.max_length", "sft.lora.r", "rm.batch_size",
                  "rm.grad_accum", "rm.max_length", "rm.lora.r", "eval.max_new_tokens", "eval.batch_size")
        _at_least(self, 0, "prompts.n_shots", "generate.samples_gold", "generate.samples_wrong",
                  "generate.samples_free", "generate.max_wrong_candidates", "generate.temperature",
                  "sft.warmup_ratio", "sft.weight_decay", "sft.lora.dropout", "rm.lora.dropout", "rm.lm_coef")
        _positive(self, "sft.epochs", "sft.learning_rate", "sft.lora.alpha", "rm.epochs", "rm.learning_rate",
                  "rm.lora.alpha")
        if not self.prompts.trigger.strip():
            raise ConfigError(f"prompts.trigger: must not be empty (it ends every rationale: \"{DEFAULT_TRIGGER}\")")
        if not 0.0 < self.generate.top_p <= 1.0:
            raise ConfigError(f"generate.top_p: must be in (0, 1], got {self.generate.top_p!r}")
        if self.generate.samples_gold + self.generate.samples_wrong + self.generate.samples_free == 0:
            raise ConfigError("generate.samples_gold, samples_wrong, samples_free: all 0, nothing to generate")
        for name in ("sft.warmup_ratio", "sft.lora.dropout", "rm.lora.dropout"):
            if _get(self, name) >= 1:
                raise ConfigError(f"{name}: must be in [0, 1), got {_get(self, name)!r}")
        if self.generate.rm_questions < 0:
            raise ConfigError(f"generate.rm_questions: must be >= 0, got {self.generate.rm_questions!r}")
        if self.generate.rm_questions and not self.generate.rm_split:
            raise ConfigError("generate.rm_split: required when generate.rm_questions > 0 (the data split the "
                              "reward model's extra questions come from, e.g. rl)")
        if self.generate.rm_split in ("train", self.data.train_split, "test", self.data.test_split):
            raise ConfigError(f"generate.rm_split: '{self.generate.rm_split}' is the training or the test split; "
                              "the reward model's extra questions must come from another split")
        if not 0 <= self.collect.heldout_fraction < 1:
            raise ConfigError(f"collect.heldout_fraction: must be in [0, 1), got {self.collect.heldout_fraction!r}")
        return self


_DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_DEVICE_RE = re.compile(r"auto|cpu|mps|(?:cuda|xpu)(?::\d+)?")


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _at_least(config: Any, low: int, *names: str) -> None:
    for name in names:
        value = _get(config, name)
        if value is not None and value < low:
            raise ConfigError(f"{name}: must be >= {low}, got {value!r}")


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = _get(config, name)
        if not value > 0:
            raise ConfigError(f"{name}: must be > 0, got {value!r}")


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
        return build_dataclass(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        if item is str:          # names (data.columns): any scalar is read as its text
            return {str(k): str(v) for k, v in value.items()}
        return {str(k): _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
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


def build_dataclass(cls: type, data: dict[str, Any], where: str = ""):
    """`cls` from plain data (YAML, overrides), every value checked against its annotation; errors name the
    dotted field under `where` ("rl.kl_coef: expected a number, got 'abc'"). Used for RunConfig and the lab's
    LabSettings alike."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown field (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, mappings merged key by key (an override of one nested field keeps the others)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`rl.kl_coef=0.1` → {"rl": {"kl_coef": 0.1}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value, e.g. generate.temperature=0.7")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not valid YAML "
                          f"({getattr(e, 'problem', None) or str(e).splitlines()[0]}); quote it, e.g. "
                          f"{key.strip()}='...'") from None
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
        data = merge_dicts(data, parse_override(o))
    return build_dataclass(RunConfig, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML config (on top of `base` defaults), apply `key=value` overrides."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{line} invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = merge_dicts(data, loaded)
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def save_config_text(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: RunConfig, path: str | Path) -> None:
    from .io import write_text

    write_text(path, save_config_text(config))
