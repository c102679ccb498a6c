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

Data and base model are cached under $SMLEARN_CACHE (default ~/.cache/smlearn),
keyed by the settings that made them, so a second run reuses them.
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

from ..config import config_from_dict, parse_override, _merge
from ..errors import ConfigError
from ..io import read_json, write_json, write_jsonl
from ..lock import run_lock
from ..prompts import ANSWER_MARK
from ..rundir import STAGES
from .flaws import take
from .pretrain import PretrainConfig, pretrain
from .tasks import build_corpus, document, get_task


# Random errors (as opposed to misconceptions): they appear only in the free CoT format.
NOISE_FLAWS = frozenset({"slip", "wrong_copy"})

# Bumped whenever the task generators or the corpus format change, so that a
# cached dataset or base model built by older code is never reused.
LAB_VERSION = 3


def _default_flaw_rates() -> dict[str, dict[str, float]]:
    # Misconceptions are systematic (the corpus applies the wrong rule more often
    # than not where it fits), so greedy decoding learns them; slips are noise.
    # A rate is a share of all documents (one flaw per document), each planted in
    # a question it applies to: at 0.45 / 0.35, 67 % of arithmetic solutions with
    # a "gives away" event add instead of subtracting and 54 % of those with
    # "k times as many" add k (at 0.30 / 0.20: ~55 % and ~35 %, and one seed of
    # three did not learn the first).
    return {
        "arithmetic": {"misc_give_adds": 0.45, "misc_times_adds": 0.35, "slip": 0.04, "wrong_copy": 0.02},
        "objects": {"misc_trade_ignored": 0.30, "misc_switch_one_way": 0.15, "slip": 0.04},
        "coins": {"misc_noflip_flips": 0.35, "misc_turnover_ignored": 0.20, "slip": 0.04},
    }


@dataclass
class LabSettings:
    tasks: list[str] = field(default_factory=lambda: ["arithmetic", "objects", "coins"])
    n_train: int = 300                 # training questions per task (SML's dataset: answers only are used)
    n_test: int = 100                  # test questions per task
    n_rl: int = 2000                   # further training-split questions per task for RL (answers only; free here)
    corpus_per_task: int = 5000        # pretraining worked solutions per task
    hinted_fraction: float = 0.5       # share of clean and misconception solutions in the answer-hinted format
    copy_drill_fraction: float = 0.5   # extra "Repeat:" documents (a question copied verbatim), per corpus document
    flaw_rates: dict[str, dict[str, float]] = field(default_factory=_default_flaw_rates)
    vocab_size: int = 1024
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 384
    context: int = 512
    pretrain_steps: int = 1500
    pretrain_batch_size: int = 16
    pretrain_seq_len: int = 256
    pretrain_lr: float = 3e-3
    pretrain_window_start: str = "document"   # windows begin at a document start: answers see their question
    pretrain_loss_on: str = "answer"          # train on the worked solutions, not on the random questions
    seed: int = 0

    def pretrain_config(self) -> PretrainConfig:
        return PretrainConfig(steps=self.pretrain_steps, batch_size=self.pretrain_batch_size,
                              seq_len=self.pretrain_seq_len, learning_rate=self.pretrain_lr,
                              window_start=self.pretrain_window_start, loss_on=self.pretrain_loss_on,
                              seed=self.seed).validate(prefix="lab.pretrain_")

    def key(self, *fields: str) -> str:
        d = dataclasses.asdict(self)
        chosen = {k: d[k] for k in fields} if fields else d
        blob = json.dumps({**chosen, "lab_version": LAB_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DATA_FIELDS = ("tasks", "n_train", "n_test", "n_rl", "seed")
# The base model does not depend on how many questions SML trains, tests and runs RL on.
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(LabSettings) if f.name not in ("n_train", "n_test", "n_rl"))


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
    folder = cache_root() / "lab" / f"data-{settings.key(*DATA_FIELDS)}"
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
    folder = PACKAGED_MODELS / f"base-{settings.key(*MODEL_FIELDS)}"
    return folder if (folder / "model.safetensors").exists() else None


def ensure_base_model(settings: LabSettings, progress: bool = True) -> Path:
    """Pretrain (once) and cache the lab's base model; returns its folder."""
    import torch

    from ..models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama

    folder = cache_root() / "lab" / f"base-{settings.key(*MODEL_FIELDS)}"
    packaged = packaged_base_model(settings)
    if packaged is not None:
        return packaged
    if (folder / "model.safetensors").exists():
        return folder
    t0 = time.time()
    texts, flaw_stats = corpus_texts(settings)
    tokenizer = build_bpe_tokenizer(texts[:20000], vocab_size=settings.vocab_size)
    spec = TinyLlamaSpec(hidden_size=settings.hidden_size, num_hidden_layers=settings.num_hidden_layers,
                         num_attention_heads=settings.num_attention_heads,
                         num_key_value_heads=settings.num_attention_heads,
                         intermediate_size=settings.intermediate_size, max_position_embeddings=settings.context)
    model = build_tiny_llama(tokenizer, spec, seed=settings.seed)
    cfg = settings.pretrain_config()
    losses = pretrain(model, tokenizer, texts, cfg, progress=progress)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "pretrain.json", {
        "settings": dataclasses.asdict(settings), "documents": len(texts), "corpus_flaw_rates": flaw_stats,
        "parameters": sum(p.numel() for p in model.parameters()), "final_loss": sum(losses[-20:]) / 20,
        "seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads()})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)   # atomic publish: a killed pretraining leaves no half model
    return folder


# ---------------------------------------------------------------------------
# The run config and the command
# ---------------------------------------------------------------------------

def lab_run_config(model_dir: Path, data_dir: Path) -> dict[str, Any]:
    return {
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": str(data_dir), "name": "lab"},
        # The lab model was pretrained in this exact format: it needs no exemplars.
        "prompts": {"n_shots": 0},
        "generate": {"samples_gold": 2, "samples_wrong": 1, "max_wrong_candidates": 1, "samples_free": 2,
                     "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 150, "batch_size": 64},
        "collect": {"answer_max_new_tokens": 6, "batch_size": 64, "max_sft_per_question": 3,
                    "heldout_fraction": 0.15},
        "sft": {"epochs": 2, "learning_rate": 5e-4, "batch_size": 16, "max_length": 400},
        # Every right-over-wrong pair (up to 6 a question from 5 rationales) and 4 epochs: the RM trained on
        # 3 pairs a question, mid over low included, for 1 epoch ranked held-out pairs at chance (0.47-0.59
        # over three seeds; docs/results.md, the RM table).
        "rm": {"epochs": 4, "learning_rate": 5e-4, "batch_size": 16, "max_length": 400},
        # RL on the lab's fresh questions (rl.jsonl): 200 steps of 8 questions x 8 samples (12,800 rollouts),
        # on-policy enough to move a model whose pass@16 is far above its greedy accuracy (the RL-stage issue's
        # probe: +11 points on arithmetic after ~10,000 arithmetic rollouts); 90 of them held out and watched.
        # GRPO with the SML reward (RM + gold correction): level with our PPO over three seeds at equal budget
        # and ~35 % cheaper per step (no value network; docs/results.md, the ablation). The PPO settings
        # below are those the ablation's PPO variant runs with (lam 1: outcome reward, no bootstrapping
        # from a weak critic; a critic warm-up; one pass per batch).
        "rl": {"algorithm": "grpo", "split": "rl", "eval_questions": 90, "eval_every": 25, "steps": 200,
               "rollout_batch_size": 64, "num_generations": 8, "learning_rate": 1e-4, "kl_coef": 0.01,
               "max_new_tokens": 150, "temperature": 1.0,
               "mini_batch_size": 32, "ppo_epochs": 1, "lam": 1.0, "critic_warmup_steps": 10},
        "eval": {"max_new_tokens": 150, "batch_size": 64},
    }


def split_overrides(overrides: list[str] | None) -> tuple[LabSettings, list[str]]:
    """`lab.*` overrides set LabSettings; the rest go to the run config."""
    lab: dict[str, Any] = {}
    rest = []
    for o in overrides or []:
        if o.startswith("lab."):
            lab = _merge(lab, parse_override(o[4:]))
        else:
            rest.append(o)
    names = {f.name for f in dataclasses.fields(LabSettings)}
    for k in lab:
        if k not in names:
            raise ConfigError(f"lab.{k}: unknown field (valid: {', '.join(sorted(names))})")
    settings = LabSettings(**lab)
    # Bad values fail here, before any data or model is built.
    settings.pretrain_config()
    for name in ("hinted_fraction", "copy_drill_fraction"):
        if not 0.0 <= getattr(settings, name) <= 1.0:
            raise ConfigError(f"lab.{name}: must be in [0, 1], got {getattr(settings, name)}")
    return settings, rest


def default_lab_config(overrides: list[str] | None = None, progress: bool = True):
    settings, rest = split_overrides(overrides)
    data_dir = ensure_lab_data(settings)
    model_dir = ensure_base_model(settings, progress)
    return config_from_dict(lab_run_config(model_dir, data_dir), rest), settings


def run_lab(out: str | Path = "runs/lab", overrides: list[str] | None = None, force: bool = False,
            progress: bool = True):
    """The default job: lab data and base model (cached), SML pipeline, oracle, lab analysis."""
    from .. import pipeline
    t0 = time.time()
    config, settings = default_lab_config(overrides, progress)
    t_base = time.time() - t0
    with run_lock(out):          # one writer for the pipeline, the oracle and the lab report together
        run = pipeline.run(config, out, force=force, progress=progress)
        metrics = _oracle(run, progress)
        print(f"[smlearn] oracle (SFT on clean reference rationales): accuracy {metrics['accuracy']:.4f}")
        from .analysis import analyze, write_lab_report

        lab_metrics = analyze(run)
        lab_metrics["timing"] = {"base_model_and_data_seconds": round(t_base, 1),
                                 "total_seconds": round(time.time() - t0, 1),
                                 "stages_seconds": {s: run.summary(s).get("seconds") for s in STAGES}}
        write_json(run.path("lab_metrics.json"), lab_metrics)
        merged = read_json(run.path("metrics.json"))
        merged["lab"] = lab_metrics
        write_json(run.path("metrics.json"), merged)
        write_lab_report(run, lab_metrics)
    print(f"[smlearn] lab finished in {time.time() - t0:.0f} s: {Path(out) / 'report.md'}")
    return run


# The oracle depends on the base model, the data, the prompts and the SFT and eval settings.
ORACLE_SECTIONS = ["model", "data", "prompts", "sft", "eval"]


def _oracle(run, progress: bool) -> dict[str, Any]:
    """Train (or reuse) the oracle model and evaluate it; redone when its config changed.

    The oracle lives outside the run's STAGES, so it keeps its own fingerprint
    (oracle/fingerprint.json): a changed config never reuses an old oracle.
    """
    from ..evaluate.evaluate import evaluate_stage
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
    metrics = evaluate_stage(run, "oracle", progress)
    write_json(stamp, {"fingerprint": current, "inputs": inputs})   # last: a killed oracle run is redone
    return metrics


def oracle_sft_rows(run) -> list[dict[str, Any]]:
    """Clean reference rationales of the training questions, in the SFT stage's format."""
    from .. import context
    from ..io import read_jsonl
    from ..models import load_tokenizer
    from ..prompts import completion_text

    rows = read_jsonl(Path(run.config.data.source) / "train.jsonl")
    # The same zero-shot prompt the SFT stage trains on (PromptBuilder, not a copy of its format).
    builder = context.prompt_builder(run, load_tokenizer(context.model_path(run, "base")), "mixed")
    few_shot = run.config.prompts.eval_few_shot_after_training
    return [{"question_id": r["id"], "prompt": builder.cot(r["question"], few_shot=few_shot),
             "completion": completion_text(r["rationale"], r["answer"], builder.trigger)} for r in rows]


def pretrain_command(overrides: list[str] | None = None, ship: bool = False) -> None:
    """`smlearn lab pretrain [lab.*=...]`: build (or find) the base model; `--ship` pretrains afresh and
    copies it into the package (PACKAGED_MODELS), replacing the shipped one for those settings."""
    settings, _ = split_overrides(overrides)
    if ship:
        cached = cache_root() / "lab" / f"base-{settings.key(*MODEL_FIELDS)}"
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
