"""The Python API: every stage as a function of a run directory, and `run` for all of them.

    import smlearn
    run = smlearn.run("my_run.yaml", out="runs/gsm8k")      # all stages, resumable
    smlearn.evaluate("runs/gsm8k")                          # one stage on an existing run
"""
from __future__ import annotations

import functools
import inspect
import time
from pathlib import Path
from typing import Any, Callable

from . import dist
from .config import RunConfig, config_from_dict, load_config
from .lock import holds_lock, run_lock
from .rundir import STAGES, Run


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run.open(run)


def _locked(fn: Callable) -> Callable:
    """Run a stage function holding its run directory's writer lock (one writer per run directory).
    Under a multi-process launcher (smlearn.dist) every rank calls it; rank 0 holds the lock, and only
    rank 0 shows progress bars."""
    takes_progress = "progress" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(run, *args, **kwargs):
        run = _as_run(run)
        if takes_progress and not dist.is_main():
            kwargs["progress"] = False
        if holds_lock(run.root):       # a stage of `run`, which checked its inputs up front
            return fn(run, *args, **kwargs)
        dist.check_config(run.config)
        dist.init(run.config.model.device)
        _check_local_data(run)
        with run_lock(run.root):
            return fn(run, *args, **kwargs)
    return wrapper


def _check_local_data(run: Run) -> None:
    """A stage called on its own first validates every local data file (a bad row names its file and line,
    rather than showing up as "data changed")."""
    from .data import load_split
    from .rundir import input_files

    for role in input_files(run.config, "report"):
        if role.startswith("data "):
            load_split(run.config.data, role.split(" ", 1)[1])


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _log(stage: str, summary: dict[str, Any]) -> None:
    """One line per stage: its summary's scalars (and, for eval, each model's accuracy)."""
    parts = []
    for k, v in summary.items():
        if isinstance(v, dict) and "accuracy" in v:
            parts.append(f"{k} {v['accuracy']:.4f} ({v.get('correct')}/{v.get('total')})")
        elif not isinstance(v, (dict, list)):
            parts.append(f"{k} {_fmt(v)}")
    items = ", ".join(parts)
    if dist.is_main():
        print(f"[smlearn] {stage}: {items}", flush=True)


def _say_batch_share(stage: str, batch: int, unit: str) -> None:
    """A training stage's share, with several processes: `[rank 1/2] sft: 4 of 8 examples per step`."""
    dist.say_share(stage, batch // dist.world_size(), batch, f"{unit} per step")


@_locked
def generate(run, progress: bool = True) -> dict:
    from .generate.rationales import generate as _generate

    return _generate(_as_run(run), progress)


@_locked
def collect(run, progress: bool = True) -> dict:
    from .collect.collect import collect as _collect

    return _collect(_as_run(run), progress)


@_locked
def train_sft(run, progress: bool = True) -> dict:
    from .train.sft import train_sft as _train

    run = _as_run(run)
    run.require("collect", "train sft")
    _say_batch_share("sft", run.config.sft.batch_size, "examples")
    return _train(run, progress)


@_locked
def train_rm(run, progress: bool = True) -> dict:
    from .train.rm import train_rm as _train

    run = _as_run(run)
    run.require("collect", "train rm")
    if run.config.rm.init == "sft":
        run.require("sft", "train rm")
    _say_batch_share("rm", run.config.rm.batch_size, "pairs")
    return _train(run, progress)


@_locked
def train_rl(run, progress: bool = True) -> dict:
    from .train.rl import train_rl as _train

    run = _as_run(run)
    run.require("sft", "train rl")
    run.require("rm", "train rl")
    _say_batch_share(f"rl ({run.config.rl.algorithm})", run.config.rl.rollout_batch_size, "rollouts")
    return _train(run, progress)


@_locked
def evaluate(run, stages: list[str] | None = None, progress: bool = True) -> dict:
    from .evaluate.evaluate import evaluate as _evaluate

    return _evaluate(_as_run(run), stages, progress)


@_locked
def report(run) -> Path:
    from .report.report import report as _report

    return _report(_as_run(run))


STAGE_FUNCTIONS: dict[str, Callable] = {
    "generate": generate, "collect": collect, "sft": train_sft, "rm": train_rm, "rl": train_rl,
    "eval": evaluate, "report": lambda run, progress=True: {"path": str(report(run))},
}


def _config(config: RunConfig | str | Path | dict | None, overrides: list[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config_from_dict(config.to_dict(), overrides) if overrides else config
    if isinstance(config, dict):
        return config_from_dict(config, overrides)
    return load_config(config, overrides)


def preflight(config: RunConfig) -> None:
    """Fail on bad input before anything is written: data rows, exemplars, the model path and tokenizer."""
    from .stage_io import dataset_kind
    from .data import load_split
    from .models import _check_model_path, load_tokenizer
    from .prompts import load_exemplars

    splits = {split: load_split(config.data, split) for split in ("train", "test")}
    p = config.prompts
    exemplars = load_exemplars(p.exemplars, p.exemplars_key or config.data.name, dataset_kind(splits["test"]),
                               p.trigger)
    if config.model.gguf_file:
        from .gguf import resolve_gguf_file

        resolve_gguf_file(config.model.name_or_path, config.model.gguf_file)   # cheap: converts nothing
        return
    m = config.model
    _check_model_path(m.name_or_path)
    tokenizer = load_tokenizer(m.name_or_path, trust_remote_code=m.trust_remote_code, revision=m.revision)
    _check_prompt_lengths(config, splits, exemplars, tokenizer)


def _check_prompt_lengths(config: RunConfig, splits: dict, exemplars, tokenizer) -> None:
    """Generation prompts (train) and evaluation prompts (test) fit the model's context with their new
    tokens: checked before anything runs, not when evaluation starts after all the training."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from .generate.engine import check_context
    from .prompts import PromptBuilder

    m = config.model
    try:
        model_config = AutoConfig.from_pretrained(m.name_or_path, trust_remote_code=m.trust_remote_code,
                                                  revision=m.revision)
    except (OSError, ValueError):
        return      # loading the model reports it, with its own message
    p = config.prompts
    builder = PromptBuilder(exemplars=exemplars, trigger=p.trigger, n_shots=p.n_shots, tokenizer=tokenizer,
                            chat_template=m.chat_template)
    model = SimpleNamespace(config=model_config)
    train = splits["train"]
    check_context(tokenizer, model, [builder.hint(e.question, e.answer) for e in train],
                  [f"question id {e.id}" for e in train], config.generate.max_new_tokens)
    test = splits["test"]
    few_shot = p.n_shots > 0 and ("base" in config.eval.stages or p.eval_few_shot_after_training)
    check_context(tokenizer, model, [builder.cot(e.question, few_shot=few_shot) for e in test],
                  [f"test question id {e.id}" for e in test], config.eval.max_new_tokens)


def run(config: RunConfig | str | Path | dict | None, out: str | Path, overrides: list[str] | None = None,
        force: bool = False, progress: bool = True, until: str | None = None) -> Run:
    """Run every stage in order into `out`; finished stages with the same config are skipped.

    With `rounds: N` > 1, N rounds into out/round-k/ (smlearn.rounds); the last round's run is returned.
    Under `accelerate launch` / torchrun every process runs this; see smlearn.dist for what each stage
    shares out. Rank 0 checks the inputs, holds the lock and writes; the others follow."""
    from .rounds import check_layout, run_rounds

    config = _config(config, overrides).validate()
    if config.rounds > 1:
        return run_rounds(config, out, force=force, progress=progress, until=until)
    dist.check_config(config)          # from the launcher's environment alone: before joining the group
    dist.init(config.model.device)
    progress = progress and dist.is_main()

    def open_run() -> Run:
        check_layout(out, config.rounds)
        preflight(config)
        return Run.create(out, config, force=force)

    with run_lock(out):          # first: a second writer is refused before any slow check
        the_run = dist.main_first(open_run) or Run(Path(out), config)
        t0 = time.time()
        for stage in STAGES:
            if dist.broadcast(the_run.is_current(stage)):          # rank 0 decides, for every rank
                if dist.is_main():
                    print(f"[smlearn] {stage}: done already, skipped", flush=True)
            else:
                _log(stage, STAGE_FUNCTIONS[stage](the_run, progress=progress))
            if stage == until:
                break
    if dist.is_main():
        print(f"[smlearn] run finished in {time.time() - t0:.0f} s: {the_run.root}", flush=True)
    return the_run
