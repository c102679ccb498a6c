"""Experiment tracking: every training stage's scalars to TensorBoard (default), W&B or Trackio.

`log.report_to` follows TRL's / transformers' `report_to` convention: a list of "tensorboard" (the
default), "wandb", "trackio", or ["none"]. TensorBoard event files go to `<run>/tb/<stage>/`
(`tensorboard --logdir <run>/tb`): the HF trainers (SFT, RM, GRPO/RLOO) write there through
transformers' `TensorBoardCallback` with our writer, and our PPO through `MetricLogger`, which logs every
metric of `rl/log.jsonl` (reward and its parts, KL, response length, clip fractions, ...).
W&B and Trackio runs are named `<run dir name>/<stage>` in the project `smlearn` (or $WANDB_PROJECT).
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

REPORT_TO = ("tensorboard", "wandb", "trackio", "none")
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "smlearn[wandb]"),
             "trackio": ("trackio", "smlearn[trackio]")}


def check_report_to(report_to: list[str]) -> str | None:
    """An error message for a bad `log.report_to`, or None."""
    import importlib.util

    for name in report_to:
        if name not in REPORT_TO:
            return f"'{name}' is not one of {', '.join(REPORT_TO)}"
    if "none" in report_to and len(report_to) > 1:
        return "'none' cannot be combined with other loggers"
    for name in report_to:
        if name in _PACKAGES and importlib.util.find_spec(_PACKAGES[name][0]) is None:
            return f"'{name}' needs the {_PACKAGES[name][0]} package (pip install '{_PACKAGES[name][1]}')"
    return None


def tb_dir(run, stage: str) -> Path:
    return run.path("tb", stage)


def _targets(run) -> list[str]:
    """The loggers to write to; none on the ranks other than 0 of a multi-process run (smlearn.dist)."""
    from . import dist

    if not dist.is_main():
        return []
    return [t for t in run.config.log.report_to if t != "none"]


def hf_report_to(run) -> list[str] | str:
    """`report_to` for an HF/TRL trainer: the hosted loggers only (TensorBoard is attached by us, so that
    its files land in <run>/tb/<stage>/ rather than in the trainer's output folder)."""
    hosted = [t for t in _targets(run) if t in ("wandb", "trackio")]
    if hosted:
        os.environ.setdefault("WANDB_PROJECT", "smlearn")
        os.environ.setdefault("TRACKIO_PROJECT", "smlearn")
    return hosted or "none"


def run_name(run, stage: str) -> str:
    return f"{Path(run.root).name}/{stage}"


def _fresh_tb_writer(run, stage: str):
    from torch.utils.tensorboard import SummaryWriter

    folder = tb_dir(run, stage)
    shutil.rmtree(folder, ignore_errors=True)      # a retrained stage replaces its curves
    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder))


def setup_trainer_callbacks(trainer, run, stage: str, progress: bool) -> None:
    """Quiet console and TensorBoard for an HF/TRL trainer: no printed dict per logging step (the progress
    bar stays when `progress`), and a TensorBoard writer on <run>/tb/<stage>/ when asked for."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None and progress:
        trainer.add_callback(_quiet_progress_class()(stage))
    if "tensorboard" in _targets(run):
        from transformers.integrations import TensorBoardCallback

        trainer.remove_callback(TensorBoardCallback)
        trainer.add_callback(TensorBoardCallback(tb_writer=_fresh_tb_writer(run, stage)))


def _quiet_progress_class():
    from transformers.trainer_callback import ProgressCallback

    class _QuietProgressCallback(ProgressCallback):
        """The trainer's progress bar, named after the stage, without the dict it writes under it at every
        logging step."""

        def __init__(self, desc: str):
            super().__init__()
            self.desc = desc

        def on_train_begin(self, args, state, control, **kwargs):
            from tqdm.auto import tqdm

            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc=self.desc)
            self.current_step = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            return None

    return _QuietProgressCallback


class MetricLogger:
    """Scalars of one stage (our PPO) to the loggers of `log.report_to`; numbers only, NaN skipped."""

    def __init__(self, run, stage: str, config: dict[str, Any] | None = None):
        self.targets = _targets(run)
        self.tb = _fresh_tb_writer(run, stage) if "tensorboard" in self.targets else None
        self.wandb = self.trackio = None
        if "wandb" in self.targets:
            import wandb

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "smlearn"), name=run_name(run, stage),
                                    config=config, dir=str(run.root), reinit="finish_previous")
        if "trackio" in self.targets:
            import trackio

            self.trackio = trackio
            trackio.init(project=os.environ.get("TRACKIO_PROJECT", "smlearn"), name=run_name(run, stage),
                         config=config)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
                   and not math.isnan(float(v))}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key if "/" in key else f"train/{key}", value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.trackio is not None:
            self.trackio.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self.trackio is not None:
            self.trackio.finish()
            self.trackio = None
