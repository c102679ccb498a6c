"""What every stage reads from a run and writes into it: examples, models and their tokenizers, the prompt builder.

A *stage* is a step of the pipeline (rundir.STAGES), a *model* a checkpoint it
reads or makes (rundir.MODELS: the configured base model, or a folder of the run).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .data import Example, load_split
from .errors import SmlearnError
from .models import load_causal_lm, load_tokenizer
from .prompts import PromptBuilder, load_exemplars
from .rundir import MODEL_DIRS, Run



def examples(run: Run, split: str) -> list[Example]:
    return load_split(run.config.data, split)


def rm_examples(run: Run, train: list[Example] | None = None) -> list[Example]:
    """The reward model's extra questions: the first generate.rm_questions of generate.rm_split that are not
    training questions (same id or same question text), [] when none are configured. SFT never sees them; the
    RL stage leaves them out of its questions when it trains on the same split."""
    cfg = run.config.generate
    if not (cfg.rm_split and cfg.rm_questions):
        return []
    train = examples(run, "train") if train is None else train
    ids, texts = {e.id for e in train}, {" ".join(e.question.split()) for e in train}
    fresh = [e for e in load_split(run.config.data, cfg.rm_split)
             if e.id not in ids and " ".join(e.question.split()) not in texts]
    if not fresh:
        raise SmlearnError(f"generate.rm_split: split '{cfg.rm_split}' has no question that is not a training "
                           "question; name another split or set generate.rm_questions=0")
    return fresh[:cfg.rm_questions]


# The models a stage starts from, beside rundir.MODELS: `generator` writes and judges the rationales, `init` is
# where SFT (and rm.init=base) starts. Both are the base model, except in round k >= 2 of a multi-round run
# (smlearn.rounds), where `round.generator` / `round.init` name round k-1's final model.
ROUND_MODELS = ("generator", "init")


def model_path(run: Run, which: str) -> str:
    """`base` → the configured model; `generator` / `init` → see ROUND_MODELS; `sft` / `rl` / `oracle` → the
    run's trained model folder."""
    if which in ROUND_MODELS:
        path = getattr(run.config.round, which)
        if not path:
            return _base_path(run)
        if not Path(path).exists():
            raise SmlearnError(f"round.{which}: {path}: the previous round's model is not there (moved or deleted?)")
        return path
    if which == "base":
        return _base_path(run)
    path = run.path(MODEL_DIRS[which])
    if not path.exists():
        raise SmlearnError(f"{path}: no {which} model in this run yet")
    return str(path)


def is_base(run: Run, which: str) -> bool:
    """Whether the model `which` is the configured base model (its revision applies)."""
    return which == "base" or (which in ROUND_MODELS and not getattr(run.config.round, which))


def round_models(run: Run, which: str) -> dict[str, str]:
    """For a stage's summary (so its manifest entry records it): the round model `which` it started from and
    its fingerprint, when that is not the base model; {} otherwise."""
    path = getattr(run.config.round, which)
    return {which: path, f"{which}_fingerprint": getattr(run.config.round, f"{which}_fingerprint")} if path else {}


def _base_path(run: Run) -> str:
    cfg = run.config.model
    if cfg.gguf_file:
        from .gguf import ensure_safetensors_copy

        return str(ensure_safetensors_copy(cfg.name_or_path, cfg.gguf_file))
    return cfg.name_or_path


def load_model(run: Run, which: str = "base"):
    cfg = run.config.model
    path = model_path(run, which)
    trust = cfg.trust_remote_code
    revision = cfg.revision if is_base(run, which) and not cfg.gguf_file else None
    tokenizer = load_tokenizer(path, trust_remote_code=trust, revision=revision)
    model = load_causal_lm(path, dtype=cfg.dtype, device=cfg.device, trust_remote_code=trust, revision=revision)
    model.eval()
    return model, tokenizer


def dataset_kind(items: list[Example]) -> str:
    kinds = sorted({e.kind for e in items})
    return kinds[0] if len(kinds) == 1 else "mixed"


def prompt_builder(run: Run, tokenizer, kind: str) -> PromptBuilder:
    p = run.config.prompts
    key = p.exemplars_key or run.config.data.name
    exemplars = load_exemplars(p.exemplars, key, kind, p.trigger)
    return PromptBuilder(exemplars=exemplars, trigger=p.trigger, n_shots=p.n_shots, tokenizer=tokenizer,
                         chat_template=run.config.model.chat_template)


def save_model(model, tokenizer, path: str | Path, state_dict: dict | None = None) -> None:
    """Publish a model folder atomically, like every other artifact: written whole beside its final name,
    then renamed into place, so a killed process (or a full disk) never leaves a half-written model there.
    Only rank 0 of a multi-process run writes (smlearn.dist)."""
    from . import dist

    if not dist.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # state_dict: the weights gathered from DeepSpeed ZeRO-3's partitions (smlearn.dist), if any.
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def engine_options(run: Run):
    from .generate.engine import EngineOptions

    return EngineOptions(engine=run.config.model.engine)
