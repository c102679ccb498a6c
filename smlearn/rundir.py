"""The run directory: every stage's artifacts, the config that made them, and a manifest.

Layout (open formats only):
    config.yaml            the resolved config of this run
    manifest.json          per stage: fingerprint of the config it ran with, time, summary
    rationales.jsonl       stage generate
    judged.jsonl, sft.jsonl, pairs.jsonl, collect_stats.json      stage collect
    sft/model/             stage train sft (safetensors)
    rm/model/, rm/metrics.json                                    stage train rm
    rl/model/, rl/log.jsonl                                       stage train rl
    eval/<stage>/predictions.jsonl, metrics.json                  stage eval
    report.md                                                     stage report

A run of `rounds: N` > 1 (smlearn.rounds) holds one such directory per round,
round-1/ ... round-N/, beside its config.yaml, rounds.json and report.md.

A stage's fingerprint hashes the config sections it and every earlier stage
depend on (and, in round k >= 2, the models it starts from). Re-running a
finished stage with the same fingerprint is a no-op; with a different one it
is refused (the artifacts on disk were made with other settings) unless the
user asks to redo it with `force`. The same holds for the content of the input
files a stage reads (the data split files and an exemplar file, see
`input_digest`): a dataset edited in place is never silently reused.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import dist
from .config import RunConfig, load_config, save_config, save_config_text
from .errors import ConfigError, RunDirError, SmlearnError
from .io import read_json, write_json

# The pipeline's stages, in order (docstrings number them 1-7 in this order; the data is their input).
STAGES = ["generate", "collect", "sft", "rm", "rl", "eval", "report"]
# The models a run holds (a model is a checkpoint, not a stage): the configured base model, those the sft and
# rl stages train, and the reasoning lab's oracle reference; each but base is a folder of the run.
MODELS = ("base", "sft", "rl", "oracle")
MODEL_DIRS = {"sft": "sft/model", "rl": "rl/model", "oracle": "oracle/model"}
MODEL_LABELS = {"base": "base", "sft": "SFT", "rl": "RL (SML)", "oracle": "oracle"}
# Stage → the config sections whose values its artifacts depend on (its own and upstream).
_SECTIONS = {
    "generate": ["model", "data", "prompts", "generate"],
    "collect": ["collect"],
    "sft": ["sft"],
    "rm": ["rm"],
    "rl": ["rl"],
    "eval": ["eval"],
    "report": [],
}
# Fields that change speed or logging, never results: excluded from fingerprints.
_NEUTRAL = {"batch_size", "device"}


def _strip_neutral(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_neutral(v) for k, v in obj.items() if k not in _NEUTRAL}
    return obj


def stage_sections(stage: str) -> list[str]:
    sections: list[str] = []
    for s in STAGES[: STAGES.index(stage) + 1]:
        sections += _SECTIONS[s]
    return sections


# Stage → the `round` field (smlearn.rounds, round k >= 2) naming the model it starts from, when not the base
# model: generate (and so every later stage) depends on the generator, sft (and later) on the init model. Only
# a set field enters a fingerprint, so a one-round run keeps the fingerprints it had before rounds existed;
# the model's path never does (a moved run directory is the same run).
_ROUND_FIELDS = {"generate": "generator_fingerprint", "sft": "init_fingerprint"}


# Fields added after runs existed, with the default that behaves as before: they enter the fingerprint only
# when set otherwise, so a finished run keeps its fingerprint (and is not re-run) after an upgrade.
_ADDED_FIELDS = {("rm", "lm_coef"): 0.0, ("rm", "pooling"): "last", ("generate", "rm_split"): None,
                 ("generate", "rm_questions"): 0}


def fingerprint_view(config: RunConfig, stage: str, sections: list[str] | None = None) -> dict[str, Any]:
    """What `fingerprint` hashes: the config sections `stage` depends on (or `sections`, for work outside
    STAGES), less the neutral fields and the added fields at their old behaviour, and the round fields of the
    models it depends on, if set."""
    data = asdict(config)
    for (section, name), default in _ADDED_FIELDS.items():
        if data[section].get(name) == default:
            del data[section][name]
    view = {s: _strip_neutral(data[s]) for s in (sections or stage_sections(stage))}
    if sections is None:
        models = {f: data["round"][f] for s in STAGES[: STAGES.index(stage) + 1]
                  if (f := _ROUND_FIELDS.get(s)) and data["round"][f]}
        if models:
            view["round"] = models
    return view


def fingerprint(config: RunConfig, stage: str, sections: list[str] | None = None) -> str:
    """Hash of the config `stage` depends on (fingerprint_view)."""
    blob = json.dumps(fingerprint_view(config, stage, sections), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Stage → the input files it reads itself (besides its config): data splits by name, the exemplar file.
_INPUTS = {"generate": ["train", "rm", "exemplars"], "collect": ["train", "rm"], "rl": ["rl"], "eval": ["test"]}
_HASHES: dict[tuple, str] = {}   # (path, size, mtime_ns, inode) -> content hash


def _file_hash(path: Path) -> str:
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if key not in _HASHES:
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _HASHES[key] = h.hexdigest()[:16]
        return _HASHES[key]
    except OSError as e:
        raise SmlearnError(f"{path}: cannot read ({e.strerror or e})") from None


def input_files(config: RunConfig, stage: str) -> dict[str, Path]:
    """The local input files `stage` and every earlier stage read, by role ("data train", ...).

    Hub datasets have no local file here: their revision is part of the config instead."""
    data = config.data
    source = Path(data.source).expanduser() if data.source else None
    files: dict[str, Path] = {}
    for s in STAGES[: STAGES.index(stage) + 1]:
        for role in _INPUTS.get(s, []):
            if role == "exemplars":
                ex = config.prompts.exemplars
                if ex and ex != "builtin" and Path(ex).expanduser().is_file():
                    files["prompts.exemplars"] = Path(ex).expanduser()
                continue
            if role == "rm" and not (config.generate.rm_split and config.generate.rm_questions):
                continue
            split = {"rl": config.rl.split, "rm": config.generate.rm_split}.get(role, role)
            name = {"train": data.train_split, "test": data.test_split}.get(split, split)
            if source is not None and source.is_file():
                files[f"data {split}"] = source
            elif source is not None and source.is_dir():
                for candidate in (source / f"{name}.jsonl", source / f"{name}.json"):
                    if _exists(candidate):
                        files[f"data {split}"] = candidate
                        break
    return files


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:       # an unreadable folder: hashing the file reports it in one line
        return True


def input_digest(config: RunConfig, stage: str) -> dict[str, str]:
    """Content hash of each input file of `stage` (see `input_files`)."""
    return {role: _file_hash(path) for role, path in input_files(config, stage).items()}


def _changed_inputs(entry: dict[str, Any], config: RunConfig, stage: str) -> list[str]:
    """Input files whose content differs from when `stage` ran ([] for runs that recorded none)."""
    old = entry.get("inputs")
    if old is None:          # made before inputs were recorded: judged by its config alone
        return []
    now = input_digest(config, stage)
    paths = input_files(config, stage)
    return [f"{paths[r] if r in paths else r}" for r in sorted(set(old) | set(now)) if old.get(r) != now.get(r)]


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


class Run:
    """A run directory bound to its config."""

    def __init__(self, root: str | Path, config: RunConfig):
        self.root = Path(root)
        self.config = config

    # -- opening --------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, config: RunConfig, force: bool = False) -> "Run":
        """Open `root` for `config`: new runs record it; existing runs must agree with it."""
        root = Path(root)
        config.validate()
        run = cls(root, config)
        if (root / "config.yaml").exists():
            old = load_config(root / "config.yaml")
            manifest = run.manifest()
            for stage in STAGES:
                if stage not in manifest:
                    continue
                if manifest[stage]["fingerprint"] != fingerprint(config, stage):
                    if not force:
                        changes = _diff(fingerprint_view(old, stage), fingerprint_view(config, stage))
                        raise RunDirError(
                            f"{root}: stage '{stage}' was run with a different config "
                            f"({'; '.join(changes[:3]) or 'settings changed'}); use a new --out, "
                            "or --force to redo it and every later stage")
                    run.invalidate_from(stage)
                    break
                changed = _changed_inputs(manifest[stage], config, stage)
                if changed:
                    if not force:
                        raise RunDirError(
                            f"{root}: stage '{stage}' was run on other data ({', '.join(changed)} changed since); "
                            "use a new --out, or --force to redo it and every later stage")
                    print(f"[smlearn] {', '.join(changed)} changed since stage '{stage}' ran: redoing it "
                          "and every later stage (--force)", flush=True)
                    run.invalidate_from(stage)
                    break
        root.mkdir(parents=True, exist_ok=True)
        text = save_config_text(config)
        path = root / "config.yaml"
        if not path.exists() or path.read_text(encoding="utf-8") != text:   # a finished run is not rewritten
            save_config(config, path)
        return run

    @classmethod
    def open(cls, root: str | Path, overrides: list[str] | None = None) -> "Run":
        root = Path(root)
        if not (root / "config.yaml").exists():
            raise RunDirError(f"{root}: not a run directory (no config.yaml); start one with smlearn run --out")
        config = load_config(root / "config.yaml", overrides)
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"{root / 'config.yaml'}: {e}") from None
        if config.rounds > 1:
            raise RunDirError(f"{root}: a run of {config.rounds} rounds, each its own run directory; name one, "
                              f"e.g. --run {root / 'round-1'}")
        return cls(root, config)

    # -- manifest -------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.root / "manifest.json"
        return read_json(path) if path.exists() else {}

    def is_done(self, stage: str) -> bool:
        return stage in self.manifest()

    def is_current(self, stage: str) -> bool:
        entry = self.manifest().get(stage)
        return (bool(entry) and entry.get("fingerprint") == fingerprint(self.config, stage)
                and not _changed_inputs(entry, self.config, stage))

    def stage_key(self, stage: str) -> str:
        """The config fingerprint and input-file hashes of `stage`, as one string (resumable partial files)."""
        inputs = json.dumps(input_digest(self.config, stage), sort_keys=True)
        return f"{fingerprint(self.config, stage)}-{hashlib.sha256(inputs.encode()).hexdigest()[:16]}"

    def mark_done(self, stage: str, summary: dict[str, Any]) -> None:
        manifest = self.manifest()
        manifest[stage] = {"fingerprint": fingerprint(self.config, stage),
                           "inputs": input_digest(self.config, stage),
                           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary}
        write_json(self.root / "manifest.json", manifest)      # rank 0 only (smlearn.dist)
        dist.barrier()          # every rank ends the stage here: the manifest is up to date for all

    def summary(self, stage: str) -> dict[str, Any]:
        return self.manifest().get(stage, {}).get("summary", {})

    def invalidate_from(self, stage: str) -> None:
        """Forget `stage` and every later stage (their artifacts will be rewritten)."""
        manifest = self.manifest()
        for s in STAGES[STAGES.index(stage):]:
            manifest.pop(s, None)
        write_json(self.root / "manifest.json", manifest)

    def require(self, stage: str, for_stage: str) -> None:
        entry = self.manifest().get(stage)
        if entry and entry.get("fingerprint") == fingerprint(self.config, stage):
            changed = _changed_inputs(entry, self.config, stage)
            if changed:
                raise RunDirError(f"{self.root}: stage '{for_stage}' needs stage '{stage}' redone: "
                                  f"{', '.join(changed)} changed since it ran "
                                  f"(run: smlearn {_command(stage)} --run {self.root}, or smlearn run --force)")
        if not self.is_current(stage):
            raise RunDirError(f"{self.root}: stage '{for_stage}' needs stage '{stage}' first "
                              f"(run: smlearn {_command(stage)} --run {self.root})")

    # -- paths ----------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


def _command(stage: str) -> str:
    return {"sft": "train sft", "rm": "train rm", "rl": "train rl"}.get(stage, stage)
