"""Trustworthy evaluation (issue 12): greedy accuracy and predictions do not depend on the batch size, and
two greedy evaluations of the same model are identical."""
from __future__ import annotations

import pytest

from smlearn.config import config_from_dict
from smlearn.evaluate.evaluate import evaluate_model
from smlearn.io import read_jsonl
from smlearn.rundir import Run

from conftest import bench, tiny_config, write_slice

N_TEST = 20


def _eval(tiny_base, data, root, batch_size: int, engine: str) -> tuple[dict, list[dict]]:
    cfg = tiny_config(tiny_base, data, "multiarith", eval={"batch_size": batch_size, "max_new_tokens": 24},
                      model={"engine": engine})
    run = Run.create(root, config_from_dict(cfg))
    metrics = evaluate_model(run, "base", progress=False)
    return metrics, read_jsonl(run.path("eval", "base", "predictions.jsonl"))


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_eval_is_batch_size_invariant_and_repeatable(tiny_base, tmp_path, engine):
    data = write_slice(bench("multiarith"), tmp_path / "data", 4, N_TEST)
    results = {bs: _eval(tiny_base, data, tmp_path / f"run-{bs}", bs, engine) for bs in (1, 7, 64)}
    again = _eval(tiny_base, data, tmp_path / "run-again", 7, engine)
    ref_metrics, ref_rows = results[1]
    assert ref_metrics["total"] == N_TEST
    for bs, (metrics, rows) in [*results.items(), ("again", again)]:
        assert metrics["accuracy"] == ref_metrics["accuracy"], bs
        assert [r["completion"] for r in rows] == [r["completion"] for r in ref_rows], bs
        assert [r["prediction"] for r in rows] == [r["prediction"] for r in ref_rows], bs
    # The completions are real text (not all empty), so the comparison means something.
    assert sum(bool(r["completion"].strip()) for r in ref_rows) >= N_TEST // 2
