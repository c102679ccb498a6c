"""A quiet console for the `smlearn` command: one line per stage plus progress bars.

Libraries print things a user of smlearn cannot act on: a bar per model load and save, a bar per
`datasets` map inside TRL, deprecation warnings about calls smlearn's dependencies make to each other,
and informational log lines. The command hides those; smlearn's own stage lines and the bars of the
long steps (generation, collection, each trainer, evaluation) stay. Errors and warnings that concern the
user's input are smlearn's own one-line messages and are not affected.
"""
from __future__ import annotations

import os
import warnings

_LIBRARIES = r"(transformers|trl|peft|accelerate|datasets|torch|huggingface_hub)(\..*)?$"


def quiet_libraries() -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_LIBRARIES)
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()     # "Loading weights", "Writing model shards"
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()                      # TRL's per-map bars ("Tokenizing train dataset")
    datasets.utils.logging.set_verbosity_error()
