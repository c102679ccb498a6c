"""The reasoning lab: `smlearn run` with no arguments.

Everything is built offline, from scratch, on a CPU:
1. data: the three synthetic task families (arithmetic → number, objects →
   choice, coins → yes/no) as one mixed dataset in the benchmark schema;
2. base model: a BPE tokenizer and a small Llama pretrained on worked
   solutions with planted *systematic* flaws (misconceptions) at set rates, in
   the pipeline's own formats (free CoT, and answer-hinted rationalization whose
   rationale is consistent with its hint) — so, like a real LM, it makes
   learned errors and, given a wrong hint, writes a flawed rationale for it;
3. the full Self-motivated Learning pipeline on that model and data;
4. an oracle reference (SFT on the clean reference rationales, never used by SML)
   and the lab analysis (step validity, RM vs validity, flips, RL curves).

What is built is set by LabSettings (`lab.*` overrides; `smlearn lab config` prints
them). Data and base model are cached under $SMLEARN_CACHE (default
~/.cache/smlearn), keyed by the settings that made them, so a second run reuses them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import build_dataclass, config_from_dict, merge_dicts, parse_override
from ..errors import ConfigError
from ..io import read_json, write_json, write_jsonl
from ..lock import run_lock
from ..models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama
from ..prompts import ANSWER_MARK
from ..rundir import STAGES
from .flaws import take
from .pretrain import PretrainConfig, pretrain
from .tasks import TASKS, build_corpus, check_flaw_rates, document, get_task


# Random errors (as opposed to misconceptions): they appear only in the free CoT format.
NOISE_FLAWS = frozenset({"slip", "wrong_copy"})

# Bumped whenever the task generators or the corpus format change, so that a
# cached dataset or base model built by older code is never reused.
LAB_VERSION = 3


@dataclass
class LabModel:
    """The base model: a byte-level BPE tokenizer and a tiny Llama (as many key/value heads as query heads)."""
    vocab_size: int = 1024
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512     # the longest prompt + completion it can read

    def spec(self) -> TinyLlamaSpec:
        return TinyLlamaSpec(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                             num_attention_heads=self.num_attention_heads,
                             num_key_value_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
                             max_position_embeddings=self.max_position_embeddings)


def _default_flaw_rates() -> dict[str, dict[str, float]]:
    return {name: dict(family.default_flaw_rates) for name, family in TASKS.items()}


@dataclass
class LabSettings:
    """What the default job builds: its data, and the base model with its corpus and pretraining.

    On the command line: `lab.<field>=value`, nested fields with dots (`lab.pretrain.steps=900`,
    `lab.flaw_rates.arithmetic.slip=0.1`); every field not named keeps its default. `smlearn lab config`
    prints the result. Typed and checked like the run config: errors name the field.
    """
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    n_train: int = 150                 # training questions per task (SML's dataset: answers only are used)
    n_test: int = 100                  # test questions per task
    n_rl: int = 2000                   # further training-split questions per task for RL (answers only; free here)
    corpus_per_task: int = 5000        # pretraining worked solutions per task
    hinted_fraction: float = 0.5       # share of clean and misconception solutions in the answer-hinted format
    copy_drill_fraction: float = 0.5   # extra "Repeat:" documents (a question copied verbatim), per corpus document
    # Per task, flaw -> share of its corpus documents that carry it; defaults beside each family's
    # misconceptions (DEFAULT_FLAW_RATES in arithmetic.py, objects.py, coins.py).
    flaw_rates: dict[str, dict[str, float]] = field(default_factory=_default_flaw_rates)
    model: LabModel = field(default_factory=LabModel)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seed: int = 0                      # questions, corpus, initial weights and pretraining

    def validate(self) -> "LabSettings":
        """Every value checked before any data or model is built; errors name the field."""
        for name in self.tasks:
            if name not in TASKS:
                raise ConfigError(f"lab.tasks: unknown task {name!r} (valid: {', '.join(TASKS)})")
        for name, low in (("n_train", 1), ("n_test", 1), ("n_rl", 0), ("corpus_per_task", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"lab.{name}: must be >= {low}, got {getattr(self, name)!r}")
        for name in ("hinted_fraction", "copy_drill_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"lab.{name}: must be in [0, 1], got {getattr(self, name)}")
        for task, rates in self.flaw_rates.items():
            if task not in TASKS:
                raise ConfigError(f"lab.flaw_rates.{task}: unknown task (valid: {', '.join(TASKS)})")
            check_flaw_rates(TASKS[task], rates, where=f"lab.flaw_rates.{task}")
        for name, value in dataclasses.asdict(self.model).items():
            if value < 1:
                raise ConfigError(f"lab.model.{name}: must be >= 1, got {value!r}")
        self.pretrain.validate(prefix="lab.pretrain.")
        return self

    # -- cache keys -----------------------------------------------------------
    def cache_view(self) -> dict[str, Any]:
        """The settings as the cache keys hash them: flat, under their names before `model` and `pretrain`
        were nested (_KEY_NAMES), so the same settings find the same cached data and base model, and the
        default ones the shipped model. A field the flat settings did not have (pretrain.warmup_steps,
        pretrain.weight_decay) enters only when set away from its default: adding a field moves no key."""
        fields, defaults = _dotted(self), _dotted(LabSettings())
        return {_KEY_NAMES.get(k, k): v for k, v in fields.items() if k in _KEY_NAMES or v != defaults[k]}

    def data_key(self) -> str:
        """Names the cached data folder (the questions)."""
        view = self.cache_view()
        return _digest({k: view[k] for k in DATA_FIELDS})

    def model_key(self) -> str:
        """Names the cached (or shipped) base model folder: everything but the question counts."""
        return _digest({k: v for k, v in self.cache_view().items() if k not in QUESTION_COUNTS})


# The flat names the cache keys use (the settings' fields up to LAB_VERSION 3), by field.
_KEY_NAMES = {name: name for name in ("tasks", "n_train", "n_test", "n_rl", "corpus_per_task", "hinted_fraction",
                                      "copy_drill_fraction", "flaw_rates", "seed")} | {
    "model.vocab_size": "vocab_size", "model.hidden_size": "hidden_size",
    "model.num_hidden_layers": "num_hidden_layers", "model.num_attention_heads": "num_attention_heads",
    "model.intermediate_size": "intermediate_size", "model.max_position_embeddings": "context",
    "pretrain.steps": "pretrain_steps", "pretrain.batch_size": "pretrain_batch_size",
    "pretrain.seq_len": "pretrain_seq_len", "pretrain.learning_rate": "pretrain_lr",
    "pretrain.window_start": "pretrain_window_start", "pretrain.loss_on": "pretrain_loss_on"}
DATA_FIELDS = ("tasks", "n_train", "n_test", "n_rl", "seed")
# The base model does not depend on how many questions SML trains, tests and runs RL on.
QUESTION_COUNTS = ("n_train", "n_test", "n_rl")


def _dotted(settings: LabSettings) -> dict[str, Any]:
    """Every field by its dotted name ("n_train", "pretrain.steps"); a mapping (flaw_rates) is one field."""
    out: dict[str, Any] = {}
    for name, value in dataclasses.asdict(settings).items():
        if dataclasses.is_dataclass(getattr(settings, name)):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            out[name] = value
    return out


def _digest(view: dict[str, Any]) -> str:
    blob = json.dumps({**view, "lab_version": LAB_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def split_overrides(overrides: list[str] | None) -> tuple[LabSettings, list[str]]:
    """`lab.*` overrides, merged onto the default settings, make the LabSettings (built like the run config:
    typed, errors name the field; checked before anything is built); the rest go to the run config."""
    data: dict[str, Any] = {"lab": dataclasses.asdict(LabSettings())}
    rest = []
    for o in overrides or []:
        if o.startswith("lab."):
            data = merge_dicts(data, parse_override(o))
        else:
            rest.append(o)
    for name in data["lab"]:
        if name in _MOVED:
            raise ConfigError(f"lab.{name}: moved to lab.{_MOVED[name]}")
    return build_dataclass(LabSettings, data["lab"], "lab").validate(), rest


# Flat names of earlier versions, now nested fields (lab.pretrain_steps is lab.pretrain.steps).
_MOVED = {flat: dotted for dotted, flat in _KEY_NAMES.items() if flat != dotted}


def cache_root() -> Path:
    return Path(os.environ.get("SMLEARN_CACHE", Path.home() / ".cache" / "smlearn")).expanduser()


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def ensure_lab_data(settings: LabSettings) -> Path:
    """train.jsonl / test.jsonl / rl.jsonl with every task's questions (ids start with the task name).

    rl.jsonl holds n_rl more questions per task from the training split's question space (an independent
    stream, so a few may repeat train.jsonl's; none is a test question): RL trains on them (`rl.split: rl`),
    the way a user with more answered questions than SML's generation budget would."""
    folder = cache_root() / "lab" / f"data-{settings.data_key()}"
    if (folder / "rl.jsonl").exists():
        return folder
    for split, n in (("train", settings.n_train), ("test", settings.n_test)):
        rows = []
        for task in settings.tasks:
            rows += get_task(task).generate(n, settings.seed, split)
        write_jsonl(folder / f"{split}.jsonl", rows)
    # Interleaved by task, so that any prefix (and the held-out tail) mixes the tasks.
    streams = [take(get_task(task).iter_examples(settings.seed, "train", stream="rl"), settings.n_rl)
               for task in settings.tasks]
    rows = [{**row, "id": f"{row['id']}-rl"} for group in zip(*streams) for row in group]
    write_jsonl(folder / "rl.jsonl", rows)   # last: its presence marks the folder complete
    return folder


# ---------------------------------------------------------------------------
# Base model
# ---------------------------------------------------------------------------

def corpus_texts(settings: LabSettings) -> tuple[list[str], dict[str, Any]]:
    """Pretraining documents in the pipeline's formats, and the corpus's flaw statistics."""
    rng = random.Random(settings.seed)
    texts, stats = [], {}
    for task in settings.tasks:
        entries = build_corpus(task, settings.corpus_per_task, settings.seed, settings.flaw_rates.get(task, {}))
        counts: dict[str, int] = {}
        for e in entries:
            counts[e["flaw"] or "clean"] = counts.get(e["flaw"] or "clean", 0) + 1
            # Rationalization format: the hint is the answer this rationale reaches
            # (its solution ends "The answer is <answer>."), so a wrong hint teaches a
            # flawed rationale that arrives at it. Only systematic flaws (misconceptions)
            # go hinted: a hinted slip would teach the model to bend its arithmetic until
            # it lands on any hint, and then its gold-hinted rationales reach the gold
            # answer through false steps.
            hinted = e["flaw"] not in NOISE_FLAWS and rng.random() < settings.hinted_fraction
            texts.append(document(e["question"], e["rationale"], hint=e["answer"] if hinted else None))
        stats[task] = {k: v / len(entries) for k, v in sorted(counts.items())}
        # Copy drills: every solution starts by restating the question's facts, which a
        # tiny model learns only once it has induction (copying) heads; documents that
        # are nothing but a copy give that skill a strong, clean signal early on.
        n_drills = round(settings.copy_drill_fraction * len(entries))
        texts += [f"Repeat: {e['question']}{ANSWER_MARK} {e['question']}" for e in rng.sample(entries, n_drills)]
    return texts, stats


# The default settings' base model ships with smlearn (4 MB of safetensors + tokenizer), so the default job
# spends its time on SML rather than on 8 minutes of pretraining. It is exactly what `smlearn lab pretrain
# --ship` builds for the default settings (tests/test_lab_base_model.py checks that it is the current
# settings' model and that it still fits the current corpus); any other settings are pretrained and cached.
PACKAGED_MODELS = Path(__file__).parent / "models"


def packaged_base_model(settings: LabSettings) -> Path | None:
    folder = PACKAGED_MODELS / f"base-{settings.model_key()}"
    return folder if (folder / "model.safetensors").exists() else None


def ensure_base_model(settings: LabSettings, progress: bool = True) -> Path:
    """Pretrain (once) and cache the lab's base model; returns its folder."""
    import torch

    folder = cache_root() / "lab" / f"base-{settings.model_key()}"
    packaged = packaged_base_model(settings)
    if packaged is not None:
        return packaged
    if (folder / "model.safetensors").exists():
        return folder
    t0 = time.time()
    texts, flaw_stats = corpus_texts(settings)
    tokenizer = build_bpe_tokenizer(texts[:20000], vocab_size=settings.model.vocab_size)
    model = build_tiny_llama(tokenizer, settings.model.spec(), seed=settings.seed)
    losses = pretrain(model, tokenizer, texts, settings.pretrain, seed=settings.seed, progress=progress)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "pretrain.json", {
        "settings": settings.cache_view(), "documents": len(texts), "corpus_flaw_rates": flaw_stats,
        "parameters": sum(p.numel() for p in model.parameters()), "final_loss": sum(losses[-20:]) / 20,
        "seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads()})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)   # atomic publish: a killed pretraining leaves no half model
    return folder


# ---------------------------------------------------------------------------
# The run config and the command
# ---------------------------------------------------------------------------

# The reward model's own questions (below): at most this many, and at most a quarter of the RL pool.
RM_QUESTIONS = 450


def lab_run_config(model_dir: Path, data_dir: Path, settings: LabSettings | None = None) -> dict[str, Any]:
    settings = settings or LabSettings()
    rm_questions = min(RM_QUESTIONS, settings.n_rl * len(settings.tasks) // 4)
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": str(data_dir), "name": "lab"},
        # The lab model was pretrained in this exact format: it needs no exemplars.
        "prompts": {"n_shots": 0},
        # The reward model's own questions: M0's rationales on 450 fresh answered questions of the RL pool
        # (left out of RL's), judged like the training questions' and never shown to SFT; a third of those
        # with pairs are the RM's held-out set, the rest train it beside every training question's pairs.
        # The RM is data-limited: on the 150 training questions' pairs alone its held-out accuracy missed 0.70
        # on 2 of 15 seeds; with its own questions it met it on 7 of 7, SML's margin over SFT unchanged
        # (docs/results.md, "The RL stage: the reward model's own questions").
        "generate": {"samples_gold": 2, "samples_wrong": 1, "max_wrong_candidates": 1, "samples_free": 2,
                     "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 150, "batch_size": 64,
                     "rm_split": "rl", "rm_questions": rm_questions},
        "collect": {"answer_max_new_tokens": 6, "batch_size": 64, "max_sft_per_question": 3,
                    "heldout_fraction": 0.33},
        "sft": {"epochs": 2, "learning_rate": 5e-4, "batch_size": 16, "max_length": 400},
        # Every right-over-wrong pair (up to 6 a question from 5 rationales) and 4 epochs: the RM trained on
        # 3 pairs a question, mid over low included, for 1 epoch ranked held-out pairs at chance (0.47-0.59
        # over three seeds; docs/results.md, the RM table).
        "rm": {"epochs": 4, "learning_rate": 5e-4, "batch_size": 16, "max_length": 400},
        # RL on the lab's fresh questions (rl.jsonl): 250 steps of 8 questions x 8 samples (16,000 rollouts),
        # on-policy enough to move a model whose pass@16 is far above its greedy accuracy (the RL-stage issue's
        # probe: +11 points on arithmetic after ~10,000 arithmetic rollouts); 90 of them held out and watched.
        # GRPO with the SML reward (RM + gold correction): level with our PPO over three seeds at equal budget
        # and ~35 % cheaper per step (no value network; docs/results.md, the ablation). The PPO settings
        # below are those the ablation's PPO variant runs with (lam 1: outcome reward, no bootstrapping
        # from a weak critic; a critic warm-up; one pass per batch).
        "rl": {"algorithm": "grpo", "split": "rl", "eval_questions": 90, "eval_every": 25, "steps": 250,
               "rollout_batch_size": 64, "num_generations": 8, "learning_rate": 1e-4, "kl_coef": 0.01,
               "max_new_tokens": 150, "temperature": 1.0,
               "mini_batch_size": 32, "ppo_epochs": 1, "lam": 1.0, "critic_warmup_steps": 10},
        "eval": {"max_new_tokens": 150, "batch_size": 64},
    }


def default_lab_config(overrides: list[str] | None = None, progress: bool = True):
    settings, rest = split_overrides(overrides)
    data_dir = ensure_lab_data(settings)
    model_dir = ensure_base_model(settings, progress)
    return config_from_dict(lab_run_config(model_dir, data_dir, settings), rest), settings


def run_lab(out: str | Path = "runs/lab", overrides: list[str] | None = None, force: bool = False,
            progress: bool = True, until: str | None = None):
    """The default job: lab data and base model (cached), SML pipeline, oracle, lab analysis.

    `until`: stop after that pipeline stage (`smlearn run --until`); the oracle and the analysis need all of them.
    `rounds=N` (an override): N rounds into out/round-k/ (smlearn.rounds); the oracle and the lab analysis
    are those of the last round (its report.md; out/report.md is the table of rounds).
    """
    from .. import pipeline
    t0 = time.time()
    config, settings = default_lab_config(overrides, progress)
    t_base = time.time() - t0
    with run_lock(out):          # one writer for the pipeline, the oracle and the lab report together
        run = pipeline.run(config, out, force=force, progress=progress, until=until)
        if until not in (None, STAGES[-1]):
            return run          # stopped early: the oracle and the lab analysis follow the last stage
        metrics = _oracle(run, progress)
        print(f"[smlearn] oracle (SFT on clean reference rationales): accuracy {metrics['accuracy']:.4f}")
        from .analysis import analyze, write_metrics
        from .report import write_lab_report

        lab_metrics = analyze(run)
        lab_metrics["timing"] = {"base_model_and_data_seconds": round(t_base, 1),
                                 "total_seconds": round(time.time() - t0, 1),
                                 "stages_seconds": {s: run.summary(s).get("seconds") for s in STAGES}}
        write_metrics(run, lab_metrics)
        write_lab_report(run, lab_metrics)
    print(f"[smlearn] lab finished in {time.time() - t0:.0f} s: {run.root / 'report.md'}")
    return run


# The oracle depends on the base model, the data, the prompts and the SFT and eval settings.
ORACLE_SECTIONS = ["model", "data", "prompts", "sft", "eval"]


def _oracle(run, progress: bool) -> dict[str, Any]:
    """Train (or reuse) the oracle model and evaluate it; redone when its config changed.

    The oracle lives outside the run's STAGES, so it keeps its own fingerprint
    (oracle/fingerprint.json): a changed config never reuses an old oracle.
    """
    from ..evaluate.evaluate import evaluate_model
    from ..rundir import fingerprint, input_digest
    from ..train.sft import fine_tune_base

    stamp = run.path("oracle", "fingerprint.json")
    current = fingerprint(run.config, "oracle", ORACLE_SECTIONS)
    inputs = input_digest(run.config, "eval")          # the train and test files' content
    metrics_path = run.path("eval", "oracle", "metrics.json")
    old = read_json(stamp) if stamp.exists() else {}
    if old.get("fingerprint") == current and old.get("inputs", inputs) == inputs and metrics_path.exists():
        return read_json(metrics_path)
    shutil.rmtree(run.path("oracle"), ignore_errors=True)
    shutil.rmtree(run.path("eval", "oracle"), ignore_errors=True)
    fine_tune_base(run, oracle_sft_rows(run), "oracle", progress)
    metrics = evaluate_model(run, "oracle", progress)
    write_json(stamp, {"fingerprint": current, "inputs": inputs})   # last: a killed oracle run is redone
    return metrics


def oracle_sft_rows(run) -> list[dict[str, Any]]:
    """Clean reference rationales of the training questions, in the SFT stage's format."""
    from .. import stage_io
    from ..io import read_jsonl
    from ..models import load_tokenizer
    from ..prompts import completion_text

    rows = read_jsonl(Path(run.config.data.source) / "train.jsonl")
    # The same zero-shot prompt the SFT stage trains on (PromptBuilder, not a copy of its format).
    builder = stage_io.prompt_builder(run, load_tokenizer(stage_io.model_path(run, "base")), "mixed")
    few_shot = run.config.prompts.eval_few_shot_after_training
    return [{"question_id": r["id"], "prompt": builder.cot(r["question"], few_shot=few_shot),
             "completion": completion_text(r["rationale"], r["answer"], builder.trigger)} for r in rows]


def pretrain_command(overrides: list[str] | None = None, ship: bool = False) -> None:
    """`smlearn lab pretrain [lab.*=...]`: build (or find) the base model; `--ship` pretrains afresh and
    copies it into the package (PACKAGED_MODELS), replacing the shipped one for those settings."""
    settings, _ = split_overrides(overrides)
    if ship:
        cached = cache_root() / "lab" / f"base-{settings.model_key()}"
        target = PACKAGED_MODELS / cached.name
        if not (cached / "model.safetensors").exists():
            shutil.rmtree(target, ignore_errors=True)       # pretrain afresh, not a copy of the shipped one
        folder = ensure_base_model(settings)
        if folder != target:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
        folder = target
    else:
        folder = ensure_base_model(settings)
    print(f"[smlearn] lab base model: {folder}")


def config_command(overrides: list[str] | None = None) -> None:
    """`smlearn lab config [lab.*=...]`: the lab settings a run with these overrides would use, as YAML, and
    where its data and base model are cached; builds nothing."""
    import yaml

    settings, rest = split_overrides(overrides)
    if rest:
        raise ConfigError(f"smlearn lab config takes lab.* overrides only, got '{rest[0]}'")
    data = cache_root() / "lab" / f"data-{settings.data_key()}"
    cached = cache_root() / "lab" / f"base-{settings.model_key()}"
    shipped = packaged_base_model(settings)
    model = (f"{shipped} (shipped with smlearn)" if shipped else
             f"{cached} ({'cached' if (cached / 'model.safetensors').exists() else 'pretrained on first use'})")
    print(yaml.safe_dump({"lab": dataclasses.asdict(settings)}, sort_keys=False), end="")
    print(f"# data: {data} ({'cached' if (data / 'rl.jsonl').exists() else 'built on first use'})")
    print(f"# base model: {model}")
