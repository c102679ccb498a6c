"""smlearn: Self-motivated Learning (Feng et al., LREC-COLING 2024) for any Hugging Face causal LM.

Stages follow the data (docs/method.md): generate → collect → sft → rm → rl → eval → report.
"""
# `score` first: importing it loads the package smlearn.evaluate, which would otherwise replace the function
# smlearn.evaluate imported below.
from .evaluate.score import score
from .config import RunConfig, load_config
from .pipeline import collect, evaluate, generate, report, run, train_rl, train_rm, train_sft
from .rundir import Run

__version__ = "0.1.0"
__all__ = ["Run", "RunConfig", "collect", "evaluate", "generate", "load_config", "report", "run", "score",
           "train_rl", "train_rm", "train_sft"]
