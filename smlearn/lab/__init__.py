"""The reasoning lab: synthetic task families with planted, checkable flaws.

See `smlearn.lab.tasks` for the registry (`TASKS`, `get_task`) and the corpus
builder; each family lives in its own module (arithmetic, objects, coins).
"""
from smlearn.lab.flaws import StepReport
from smlearn.lab.tasks import TASKS, TaskFamily, build_corpus, get_task

__all__ = ["StepReport", "TASKS", "TaskFamily", "build_corpus", "get_task"]
