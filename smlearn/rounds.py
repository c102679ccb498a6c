"""Rounds: the whole pipeline again, the improved model writing the next round's rationales (STaR's outer loop).

    rounds: 3               # in the config (default 1: one round, in the run directory itself, as ever)
    rounds_init: base       # where each round's training starts: base (as STaR) or previous

Round k is an ordinary run directory, <out>/round-k/, run by `pipeline.run` with a config derived from
the run's (`round_config`). Round 1 is exactly a one-round run. In round k >= 2, round k-1's final
model (its RL model; its SFT model if it has none) generates and judges the rationales, and SFT (and
rm.init=base) start from the base model (rounds_init: base) or from that same model (previous); RL
starts from the round's SFT model and eval's `base` is the configured base model, as in every run.
Which models a round started from is in its config.yaml (`round`) and in the manifest entries of
its generate, collect and sft stages: their path and fingerprint (`final_model`).

Each round resumes like any run: a finished round is skipped stage by stage, a killed one goes on
where it stopped, and a round whose previous round was redone (`--force`) is refused or redone with
it, since its fingerprints include that round's model. `until` stops the last round after that
stage (every earlier round runs whole: the next one needs its final model).

    <out>/config.yaml     the run's config (rounds: N)
    <out>/round-k/        round k: a run directory (smlearn.rundir), its config.yaml one round's (`round_config`)
    <out>/rounds.json     per round: the models it started from, yield, RM held-out accuracy, test accuracy
    <out>/report.md       the same as a table, with links to each round's own report.md
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from . import dist
from .config import RoundConfig, RunConfig, config_from_dict, save_config, save_config_text
from .errors import RunDirError, SmlearnError
from .io import write_json
from .lock import run_lock
from .rundir import MODEL_DIRS, Run


def round_dir(out: str | Path, k: int) -> Path:
    return Path(out) / f"round-{k}"


def check_layout(out: str | Path, rounds: int) -> None:
    """A run directory holds one round at its top or several in round-k/ folders: never both."""
    out = Path(out)
    if rounds > 1 and (out / "manifest.json").exists():
        raise RunDirError(f"{out}: a one-round run (its stages are at the top); rounds={rounds} needs a new --out")
    if rounds == 1 and round_dir(out, 1).is_dir():
        raise RunDirError(f"{out}: a run of several rounds (round-1/, ...); set rounds to their number, "
                          "or use a new --out")


def final_model(run: Run) -> tuple[str, str]:
    """A finished round's final model, its RL model (its SFT model if RL did not run): the folder's absolute
    path and its fingerprint, a hash of the manifest entry of the stage that trained it (its config fingerprint,
    input files and finish time): a model trained again gets a new one, a moved run directory keeps it."""
    manifest = run.manifest()
    for stage in ("rl", "sft"):
        if run.is_current(stage):
            entry = {"stage": stage, **{k: manifest[stage].get(k) for k in ("fingerprint", "inputs", "finished_at")}}
            digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
            return str(run.path(MODEL_DIRS[stage]).resolve()), digest
    raise SmlearnError(f"{run.root}: this round has no trained model (sft or rl) for the next round to start from")


def round_config(config: RunConfig, k: int, previous: Run | None) -> RunConfig:
    """The config of round k: the run's, as one round (rounds and rounds_init at their defaults), with `round`
    naming the models it starts from (round 1, `previous` None: the base model, so that its config is a one-round
    run's; round k >= 2: `previous`'s final model, and, with rounds_init: previous, for training too)."""
    data = config.to_dict()
    data["rounds"], data["rounds_init"] = 1, "base"
    data["round"] = asdict(RoundConfig())
    if previous is not None:
        path, fp = final_model(previous)
        start = config.rounds_init == "previous"
        data["round"] = {"index": k, "generator": path, "generator_fingerprint": fp,
                         "init": path if start else "", "init_fingerprint": fp if start else ""}
    return config_from_dict(data).validate()


def run_rounds(config: RunConfig, out: str | Path, force: bool = False, progress: bool = True,
               until: str | None = None) -> Run:
    """`config.rounds` rounds into out/round-k/ (see the module docstring); returns the last round's run."""
    from . import pipeline

    config.validate()
    out = Path(out)
    dist.check_config(config)
    dist.init(config.model.device)
    with run_lock(out):
        check_layout(out, config.rounds)
        if dist.is_main() and not (out / "config.yaml").exists():
            save_config(config, out / "config.yaml")
        previous = None
        for k in range(1, config.rounds + 1):
            if dist.is_main():
                print(f"[smlearn] round {k} of {config.rounds}: {round_dir(out, k)}", flush=True)
            previous = pipeline.run(round_config(config, k, previous), round_dir(out, k), force=force,
                                    progress=progress, until=until if k == config.rounds else None)
        if dist.is_main():
            _save_config(config, out)          # every round accepted this config (a refused one keeps the old)
            summary = summarize(out, config)
            write_json(out / "rounds.json", summary)
            from .report.report import rounds_report

            print(f"[smlearn] rounds: {rounds_report(out, summary)}", flush=True)
    return previous


def _save_config(config: RunConfig, out: Path) -> None:
    path = out / "config.yaml"
    if not path.exists() or path.read_text(encoding="utf-8") != save_config_text(config):
        save_config(config, path)


def summarize(out: str | Path, config: RunConfig) -> dict:
    """rounds.json: per round, what it started from and its numbers, read from its manifest (stages not finished
    yet are left out)."""
    out = Path(out)
    rows = []
    for k in range(1, config.rounds + 1):
        path = round_dir(out, k)
        if not (path / "config.yaml").exists():
            break
        run = Run.open(path)
        manifest = run.manifest()
        summary = {s: entry.get("summary", {}) for s, entry in manifest.items()}
        r = run.config.round
        row = {"round": k, "dir": path.name, "finished": [s for s in manifest if run.is_current(s)],
               "generator": _label(out, r.generator), "generator_fingerprint": r.generator_fingerprint or None,
               "init": _label(out, r.init), "init_fingerprint": r.init_fingerprint or None}
        collect = summary.get("collect", {})
        row.update({key: collect.get(key) for key in ("rationales", "high", "yield_per_question", "sft_examples",
                                                       "pairs")})
        row["rm_heldout_accuracy"] = summary.get("rm", {}).get("heldout_accuracy")
        row["accuracy"] = dict(summary.get("eval", {}))          # model -> test accuracy
        rows.append(row)
    return {"rounds": config.rounds, "rounds_init": config.rounds_init, "model": config.model.name_or_path,
            "per_round": rows}


def _label(out: Path, path: str) -> str:
    """A round model as the summary names it: `base`, or its folder relative to the run (round-1/rl/model)."""
    if not path:
        return "base"
    try:
        return str(Path(path).relative_to(out.resolve()))
    except ValueError:
        return path
