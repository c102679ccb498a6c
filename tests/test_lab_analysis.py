"""Lab analysis on a hand-built, consistent run directory (no model: the RM scorer is a stub)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from smlearn.config import DataConfig, RunConfig
from smlearn.io import read_json, write_json, write_jsonl
from smlearn.lab import get_task
from smlearn.lab.analysis import (analyze, heldout_accuracy_by_task, heldout_accuracy_interval,
                                  heldout_level_gaps, heldout_level_means_by_task,
                                  step_fraction_gaps_within_question, write_metrics)
from smlearn.lab.report import MARKER_BEGIN, MARKER_END, fmt, format_level_gaps, report_section, write_lab_report
from smlearn.lab.stats import rankdata, roc_auc, spearman
from smlearn.prompts import answer_sentence, completion_text
from smlearn.rundir import Run

TASK_NAMES = ["arithmetic", "objects", "coins"]
N_TEST = 4                        # per task
N_TRAIN = 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# Hand cases for the statistics
# --------------------------------------------------------------------------

def test_auc_hand_cases():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0          # perfect separation
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0          # reversed
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5          # all tied
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75         # 3 of 4 pairs ordered
    assert roc_auc([1.0, 0.5, 0.5], [1, 1, 0]) == 0.75                  # a tie counts 1/2
    assert roc_auc([1.0, 2.0], [1, 1]) is None                          # one class only


def test_spearman_and_ranks():
    assert rankdata([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)   # 1 - 6*4/(5*24)
    assert spearman([1, 2, 3], [7, 7, 7]) is None


# --------------------------------------------------------------------------
# The fake run
# --------------------------------------------------------------------------

def _body(solution: str) -> str:
    """The reasoning part of "... The answer is X."."""
    return solution[: solution.rindex(" The answer is")].strip()


def _wrong_solution(task: str, ex: dict) -> tuple[str, str]:
    """A flawed worked solution whose answer is wrong (and whose steps the verifier rejects)."""
    fam = get_task(task)
    for flaw in ("slip", "wrong_copy", "skip", "swap"):
        for seed in range(20):
            try:
                text, answer = fam.flawed_rationale(ex, random.Random(seed), flaw)
            except ValueError:
                break
            if answer != ex["answer"] and not fam.verify(ex, text).valid:
                return text, answer
    raise AssertionError(f"no wrong flawed solution for {ex['id']}")


def _lucky_solution(task: str, ex: dict) -> str:
    """Flawed steps, then the gold answer: right for the wrong reason."""
    for flaw in ("slip", "skip", "swap"):
        for seed in range(20):
            try:
                text, _ = get_task(task).flawed_rationale(ex, random.Random(seed), flaw)
            except ValueError:
                break
            lucky = f"{_body(text)} {answer_sentence(ex['answer'])}"
            if not get_task(task).verify(ex, lucky).valid:
                return lucky
    raise AssertionError(f"no lucky solution for {ex['id']}")


def _pred(ex: dict, completion: str, stated: str) -> dict:
    return {"id": ex["id"], "completion": " " + completion, "prediction": stated, "gold": ex["answer"],
            "correct": stated == ex["answer"]}


class StubScorer:
    """Scores from a completion → score table; remembers the prompts it saw."""

    def __init__(self, table: dict[str, float], default: float = 0.0):
        self.table, self.default, self.prompts, self.calls = table, default, [], 0

    def score(self, prompts, completions, batch_size: int = 16):
        self.calls += 1
        self.prompts += list(prompts)
        return [self.table.get(c, self.default) for c in completions]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("labrun")
    data = root / "data"
    test = {t: get_task(t).generate(N_TEST, 3, "test") for t in TASK_NAMES}
    train = {t: get_task(t).generate(N_TRAIN, 3, "train") for t in TASK_NAMES}
    write_jsonl(data / "test.jsonl", [e for t in TASK_NAMES for e in test[t]])
    write_jsonl(data / "train.jsonl", [e for t in TASK_NAMES for e in train[t]])
    run_dir = root / "run"
    run = Run(run_dir, RunConfig(data=DataConfig(source=str(data))))
    run_dir.mkdir()

    # Per task: ex0 base wrong / sft ref / rl lucky (kept right, right for the wrong reason in RL)
    #           ex1 base wrong / sft wrong / rl ref + hallucinated next question (fixed)
    #           ex2 base ref / sft ref / rl wrong (broken)
    #           ex3 wrong everywhere (kept wrong)
    preds = {"base": [], "sft": [], "rl": []}
    for t in TASK_NAMES:
        fam = get_task(t)
        e0, e1, e2, e3 = test[t]
        ref = {e["id"]: fam.reference_solution(e) for e in test[t]}
        wrong = {e["id"]: _wrong_solution(t, e) for e in test[t]}
        for e in test[t]:
            assert fam.verify(e, ref[e["id"]]).valid
        preds["base"] += [_pred(e0, *wrong[e0["id"]]), _pred(e1, *wrong[e1["id"]]),
                          _pred(e2, ref[e2["id"]], e2["answer"]), _pred(e3, *wrong[e3["id"]])]
        preds["sft"] += [_pred(e0, ref[e0["id"]], e0["answer"]), _pred(e1, *wrong[e1["id"]]),
                         _pred(e2, ref[e2["id"]], e2["answer"]), _pred(e3, *wrong[e3["id"]])]
        preds["rl"] += [_pred(e0, _lucky_solution(t, e0), e0["answer"]),
                        _pred(e1, ref[e1["id"]] + "\nQ: Tom has 2 apples. 2 + 2 = 5.", e1["answer"]),
                        _pred(e2, *wrong[e2["id"]]), _pred(e3, *wrong[e3["id"]])]
    eval_metrics = {}
    for stage, rows in preds.items():
        write_jsonl(run.path("eval", stage, "predictions.jsonl"), rows)
        correct = sum(r["correct"] for r in rows)
        eval_metrics[stage] = {"accuracy": correct / len(rows), "correct": correct, "total": len(rows),
                               "few_shot": stage == "base", "seconds": 1.0}
    write_json(run.path("eval", "metrics.json"), eval_metrics)

    # Judged training rationales: per question a clean one (high), a flawed one (low), one without answer (mid).
    trigger = run.config.prompts.trigger
    judged, valid_completions, invalid_completions = [], [], []
    for t in TASK_NAMES:
        for e in train[t]:
            text, answer = _wrong_solution(t, e)
            for k, (rationale, final, level, source) in enumerate([(e["rationale"], e["answer"], 2, "gold"),
                                                                   (_body(text), answer, 0, "wrong"),
                                                                   (e["rationale"], None, 1, "free")]):
                judged.append({"id": f"{e['id']}-r{k}", "question_id": e["id"], "source": source,
                               "candidate": final, "rationale": rationale, "final_answer": final,
                               # the rationale without a parsable answer: the model wrote "unknown" itself
                               "final_output": f" {final or 'unknown'}.",
                               "final_correct": final == e["answer"], "level": level})
                c = completion_text(rationale, final or "unknown", trigger)
                (valid_completions if level == 2 else invalid_completions).append(c)
    write_jsonl(run.path("judged.jsonl"), judged)
    first_q = train["arithmetic"][0]
    write_jsonl(run.path("pairs.jsonl"), [{"question_id": first_q["id"], "prompt": "PAIR-PROMPT\nA:",
                                           "chosen": "x", "rejected": "y", "chosen_level": 2,
                                           "rejected_level": 0, "split": "heldout"}])
    write_json(run.path("rm", "metrics.json"), {
        "heldout_accuracy": 0.8125, "heldout_pairs": 16, "train_accuracy": 0.9375, "score_mean": 0.25,
        "score_std": 1.5, "levels": {"2": {"mean": 1.5, "std": 0.5, "n": 3, "scores": [1.0, 1.5, 2.0]},
                                     "1": {"mean": 0.0, "std": 0.0, "n": 2, "scores": [0.0, 0.0]},
                                     "0": {"mean": -1.25, "std": 0.25, "n": 2, "scores": [-1.5, -1.0]}}})
    write_jsonl(run.path("rl", "log.jsonl"), [
        {"step": s, "reward_mean": 0.1 * s, "kl_mean": 0.01 * s, "response_length_mean": 40.0 - s,
         "correct_mean": 0.2 + 0.05 * s, "rm_score_mean": 0.1 * s - 0.5} for s in range(6)])
    run.path("report.md").write_text("# smlearn report: run\n\n## Test accuracy\n\nbody\n")
    return {"run": run, "test": test, "train": train, "eval": eval_metrics,
            "valid": valid_completions, "invalid": invalid_completions, "first_q": first_q}


@pytest.fixture(scope="module")
def analyzed(fake_run):
    table = {c: 2.0 for c in fake_run["valid"]} | {c: -1.0 for c in fake_run["invalid"]}
    scorer = StubScorer(table)
    metrics = analyze(fake_run["run"], scorer=scorer)
    return metrics, scorer


# --------------------------------------------------------------------------
# The numbers
# --------------------------------------------------------------------------

def test_accuracy_per_task(analyzed):
    m, _ = analyzed
    assert m["stages"] == ["base", "sft", "rl"]                      # oracle missing: left out
    assert m["tasks"] == TASK_NAMES
    for t in TASK_NAMES:
        assert m["accuracy"]["base"][t] == {"accuracy": 0.25, "correct": 1, "n": 4}
        assert m["accuracy"]["sft"][t] == {"accuracy": 0.5, "correct": 2, "n": 4}
        assert m["accuracy"]["rl"][t] == {"accuracy": 0.5, "correct": 2, "n": 4}
    assert m["accuracy"]["sft"]["all"] == {"accuracy": 0.5, "correct": 6, "n": 12}
    assert m["accuracy"]["base"]["all"]["accuracy"] == 0.25


def test_validity_per_task(analyzed):
    m, _ = analyzed
    for t in TASK_NAMES + ["all"]:
        k = 3 if t == "all" else 1
        base, sft, rl = (m["validity"][s][t] for s in ("base", "sft", "rl"))
        assert (base["n"], base["valid"], base["valid_rate"]) == (4 * k, 1 * k, 0.25)
        assert (base["correct"], base["correct_invalid"], base["right_wrong_reason_rate"]) == (k, 0, 0.0)
        assert (sft["valid"], sft["valid_rate"], sft["right_wrong_reason_rate"]) == (2 * k, 0.5, 0.0)
        # RL: the lucky answer (flawed steps, gold answer) is right for the wrong reason; the clean one
        # followed by a hallucinated next question is still valid.
        assert (rl["valid"], rl["valid_rate"]) == (1 * k, 0.25)
        assert (rl["correct"], rl["correct_invalid"], rl["right_wrong_reason_rate"]) == (2 * k, 1 * k, 0.5)
        for v in (base, sft, rl):   # every invalid rationale has exactly one first error
            assert sum(v["first_error"].values()) == v["n"] - v["valid"]


def test_report_lists_first_errors(analyzed, fake_run):
    from smlearn.lab.flaws import ERROR_KINDS

    m, _ = analyzed
    text = report_section(m)
    assert "Where invalid rationales first go wrong" in text
    section = text.split("Where invalid rationales first go wrong")[1]
    row = next(line for line in section.splitlines() if line.startswith("| base | arithmetic |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    v = m["validity"]["base"]["arithmetic"]
    assert cells[2:] == [str(v["n"] - v["valid"])] + [str(v["first_error"][k]) for k in ERROR_KINDS]


def test_flips_sft_to_rl(analyzed):
    m, _ = analyzed
    f = m["flips"]
    assert (f["from"], f["to"]) == ("sft", "rl")
    for t in TASK_NAMES:
        assert f[t] == {"fixed": 1, "broken": 1, "kept_right": 1, "kept_wrong": 1, "n": 4}
    assert f["all"] == {"fixed": 3, "broken": 3, "kept_right": 3, "kept_wrong": 3, "n": 12}


def test_rm_vs_validity(analyzed, fake_run):
    m, scorer = analyzed
    rm = m["rm"]
    assert rm["heldout_accuracy"] == 0.8125 and rm["train_accuracy"] == 0.9375
    assert rm["levels"]["2"] == {"mean": 1.5, "std": 0.5, "n": 3}      # score lists stay out of the metrics
    vbl = rm["validity_by_level"]
    assert {k: (v["n"], v["valid"], v["valid_rate"]) for k, v in vbl.items()} == \
        {"2": (6, 6, 1.0), "1": (6, 0, 0.0), "0": (6, 0, 0.0)}
    # Share of valid steps: the fake mid rationales have every step right and a wrong answer; the low ones
    # carry wrong steps (a per-task mean over the rationales' own step fractions).
    assert (vbl["2"]["step_fraction_mean"], vbl["1"]["step_fraction_mean"]) == (1.0, 1.0)
    assert vbl["0"]["step_fraction_mean"] == pytest.approx(0.7611, abs=1e-4)
    by_task = rm["step_fraction_by_task_level"]
    assert set(by_task) == set(TASK_NAMES)
    assert all(by_task[t]["2"] == {"n": 2, "mean": 1.0} and by_task[t]["0"]["mean"] < 1.0 for t in TASK_NAMES)
    assert by_task["arithmetic"]["0"]["mean"] == pytest.approx(0.7083, abs=1e-4)
    vs = rm["vs_validity"]
    assert (vs["n"], vs["n_valid"], vs["judged_total"]) == (18, 6, 18)
    assert vs["auc"] == 1.0
    assert vs["spearman_valid"] == pytest.approx(1.0)
    assert (vs["score_mean_valid"], vs["score_mean_invalid"]) == (2.0, -1.0)
    assert set(vs["by_task"]) == set(TASK_NAMES) and all(v["auc"] == 1.0 for v in vs["by_task"].values())
    # The pairs' prompt is reused for its question; the others get the zero-shot prompt.
    assert scorer.prompts.count("PAIR-PROMPT\nA:") == 3
    q = fake_run["train"]["coins"][0]["question"]
    assert f"Q: {q}\nA:" in scorer.prompts


def test_rm_reversed_tied_and_capped(fake_run):
    run = fake_run["run"]
    reversed_scorer = StubScorer({c: -1.0 for c in fake_run["valid"]} | {c: 2.0 for c in fake_run["invalid"]})
    m = analyze(run, scorer=reversed_scorer, plots=False)
    assert m["rm"]["vs_validity"]["auc"] == 0.0
    assert m["rm"]["vs_validity"]["spearman_valid"] == pytest.approx(-1.0)
    m = analyze(run, scorer=StubScorer({}, default=0.3), plots=False)
    assert m["rm"]["vs_validity"]["auc"] == 0.5
    assert m["rm"]["vs_validity"]["spearman_valid"] is None
    capped = StubScorer({}, default=0.0)
    m = analyze(run, scorer=capped, max_rm_rationales=5, plots=False)
    assert len(capped.prompts) == 5 and m["rm"]["vs_validity"]["n"] == 5
    assert m["rm"]["vs_validity"]["judged_total"] == 18


def test_rl_summary(analyzed):
    rl = analyzed[0]["rl"]
    assert rl["steps"] == 6
    assert rl["reward_mean"]["first"] == 0.0 and rl["reward_mean"]["last"] == pytest.approx(0.5)
    assert rl["response_length_mean"] == {"first": 40.0, "last": 35.0, "min": 35.0, "max": 40.0}


# --------------------------------------------------------------------------
# Files: lab_metrics.json, metrics.json, plots, report
# --------------------------------------------------------------------------

def test_files_written(analyzed, fake_run):
    m, _ = analyzed
    run = fake_run["run"]
    write_metrics(run, m)
    on_disk = read_json(run.path("lab_metrics.json"))
    assert on_disk["accuracy"] == json.loads(json.dumps(m["accuracy"]))
    top = read_json(run.path("metrics.json"))
    assert top["accuracy"] == fake_run["eval"]
    assert top["lab"] == on_disk


def test_plots_are_pngs(analyzed, fake_run):
    m, _ = analyzed
    run = fake_run["run"]
    names = ["accuracy_by_task.png", "validity_by_task.png", "rm_scores_by_level.png",
             "rm_score_vs_validity.png", "rl_curves.png"]
    assert m["plots"] == [f"plots/{n}" for n in names]
    for n in names:
        data = Path(run.path("plots", n)).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, n


def _numbers(obj, skip=("plots", "stages", "tasks")):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in skip:
                yield from _numbers(v, skip)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v, skip)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_report_section_matches_metrics(analyzed):
    m, _ = analyzed
    lab = json.loads(json.dumps(m))              # as read back from lab_metrics.json
    text = report_section(lab)
    numbers = list(_numbers(lab))
    assert numbers
    for v in numbers:
        assert fmt(v) in text, v
    assert "0.2500 (1/4)" in text and "0.8125" in text and "1.0000" in text
    for p in lab["plots"]:
        assert f"]({p})" in text


def test_report_section_shows_the_level_gaps_with_their_intervals(analyzed):
    lab = json.loads(json.dumps(analyzed[0]))
    lab["rm"]["heldout_level_gaps"] = {"2-1": {"gap": 2.25, "ci": [1.5, 3.0], "n": [2, 1], "questions": 2},
                                       "1-0": None}
    assert ("- held-out mean-score gaps between levels (95 % CI, questions resampled): "
            "high − mid +2.25 [+1.50, +3.00], mid − low n/a") in report_section(lab)
    lab["rm"]["heldout_level_gaps"] = None
    assert "questions resampled): n/a" in report_section(lab)


def test_write_lab_report_replaces_previous_section(analyzed, fake_run):
    m, _ = analyzed
    run = fake_run["run"]
    write_lab_report(run, m)
    write_lab_report(run, m)
    text = run.path("report.md").read_text()
    assert text.startswith("# smlearn report: run\n\n## Test accuracy\n\nbody\n")
    assert text.count(MARKER_BEGIN) == 1 and text.count(MARKER_END) == 1
    assert text.count("## Reasoning lab") == 1
    assert report_section(m) in text


def test_missing_artifacts_are_left_out(fake_run, tmp_path):
    """Only base predictions: no RM, no judged, no RL — the analysis still runs and says n/a."""
    src = fake_run["run"]
    run = Run(tmp_path / "run", src.config)
    rows = [json.loads(line) for line in src.path("eval", "base", "predictions.jsonl").read_text().splitlines()]
    write_jsonl(run.path("eval", "base", "predictions.jsonl"), rows)
    m = analyze(run)                                  # default scorer: no rm/model here → none
    assert not run.path("lab_metrics.json").exists()  # write_metrics writes, analyze only computes
    write_metrics(run, m)
    assert m["stages"] == ["base"] and m["flips"] is None and m["rl"] is None
    assert m["rm"]["vs_validity"] is None and m["rm"]["heldout_accuracy"] is None
    assert m["accuracy"]["base"]["all"] == {"accuracy": 0.25, "correct": 3, "n": 12}
    assert "rl_curves.png" not in " ".join(m["plots"])
    text = report_section(m)
    assert "n/a" in text and "(no RL log)" in text
    assert read_json(run.path("metrics.json"))["lab"]["stages"] == ["base"]
    write_lab_report(run, m)                          # no report.md yet: created with the section only
    assert run.path("report.md").read_text().startswith(MARKER_BEGIN)


# --------------------------------------------------------------------------
# The oracle's own fingerprint (it lives outside the run's STAGES)
# --------------------------------------------------------------------------

def test_oracle_is_redone_when_its_config_changes(tmp_path, monkeypatch):
    """Bookkeeping only: training and evaluation are recorders here (test_integration trains for real)."""
    from smlearn.evaluate import evaluate as evaluate_module
    import smlearn.train.sft as sft_module
    from smlearn.lab import default

    calls = []

    def fake_train(run, rows, name, progress):
        calls.append(("train", run.config.sft.learning_rate))
        write_json(run.path(name, "model", "marker.json"), {"lr": run.config.sft.learning_rate})

    def fake_eval(run, name, progress):
        calls.append(("eval", name))
        metrics = {"accuracy": run.config.sft.learning_rate}
        write_json(run.path("eval", name, "metrics.json"), metrics)
        return metrics

    monkeypatch.setattr(sft_module, "fine_tune_base", fake_train)
    monkeypatch.setattr(evaluate_module, "evaluate_model", fake_eval)
    monkeypatch.setattr(default, "oracle_sft_rows", lambda run: [])
    run = Run(tmp_path, RunConfig())
    assert default._oracle(run, False)["accuracy"] == run.config.sft.learning_rate
    assert default._oracle(run, False)["accuracy"] == run.config.sft.learning_rate      # reused
    assert calls == [("train", run.config.sft.learning_rate), ("eval", "oracle")]
    changed = Run(tmp_path, RunConfig())
    changed.config.sft.learning_rate = 0.5
    assert default._oracle(changed, False)["accuracy"] == 0.5                              # redone, not reused
    assert calls[2:] == [("train", 0.5), ("eval", "oracle")]
    assert read_json(changed.path("oracle", "model", "marker.json")) == {"lr": 0.5}


def test_rm_heldout_accuracy_by_task(tmp_path):
    """Per task, held-out pairs only, scored by rationale id from rm/scores.jsonl: a task the RM cannot rank
    shows up on its own instead of dragging the overall figure down unseen."""
    run = Run(tmp_path, RunConfig())
    write_jsonl(run.path("pairs.jsonl"), [
        {"question_id": "coins-train-1", "chosen_id": "c1", "rejected_id": "r1", "split": "heldout"},
        {"question_id": "coins-train-1", "chosen_id": "c1", "rejected_id": "r2", "split": "heldout"},
        {"question_id": "arithmetic-train-2", "chosen_id": "c2", "rejected_id": "r3", "split": "heldout"},
        {"question_id": "arithmetic-train-3", "chosen_id": "c3", "rejected_id": "r4", "split": "train"}])
    write_jsonl(run.path("rm", "scores.jsonl"), [
        {"question_id": "coins-train-1", "split": "heldout", "level": 2, "score": 0.5, "rationale_ids": ["c1"]},
        {"question_id": "coins-train-1", "split": "heldout", "level": 0, "score": 1.0, "rationale_ids": ["r1"]},
        {"question_id": "coins-train-1", "split": "heldout", "level": 0, "score": 0.0, "rationale_ids": ["r2"]},
        {"question_id": "arithmetic-train-2", "split": "heldout", "level": 2, "score": 2.0, "rationale_ids": ["c2"]},
        {"question_id": "arithmetic-train-2", "split": "heldout", "level": 1, "score": -1.0, "rationale_ids": ["r3"]},
        {"question_id": "arithmetic-train-3", "split": "train", "level": 2, "score": -5.0, "rationale_ids": ["c3"]},
        {"question_id": "arithmetic-train-3", "split": "train", "level": 0, "score": 5.0, "rationale_ids": ["r4"]}])
    assert heldout_accuracy_by_task(run) == {"arithmetic": {"n": 1, "accuracy": 1.0},
                                             "coins": {"n": 2, "accuracy": 0.5}}
    assert heldout_accuracy_by_task(Run(tmp_path / "empty", RunConfig())) is None
    # the overall figure with its CI: 2 of 3 held-out pairs, from 2 questions (the unit resampled)
    found = heldout_accuracy_interval(run)
    assert found["accuracy"] == pytest.approx(2 / 3) and found["pairs"] == 3 and found["questions"] == 2
    lo, hi = found["ci"]
    assert lo == pytest.approx(0.5) and hi == 1.0        # resamples: coins twice 1/2, arithmetic twice 1, mixed 2/3
    assert heldout_accuracy_interval(Run(tmp_path / "empty", RunConfig())) is None
    # the level means per task, held-out only (the train rows' -5 / 5 are left out)
    assert heldout_level_means_by_task(run) == {
        "arithmetic": {"2": {"n": 1, "mean": 2.0}, "1": {"n": 1, "mean": -1.0}},
        "coins": {"2": {"n": 1, "mean": 0.5}, "0": {"n": 2, "mean": 0.5}}}
    assert heldout_level_means_by_task(Run(tmp_path / "empty", RunConfig())) is None
    # the gaps between level means, held-out only, with CIs resampling questions: high (0.5, 2.0) - mid (-1.0)
    # = 2.25; resamples with a mid: arithmetic twice (3.0) or both (2.25). mid - low = -1.0 - 0.5 = -1.5,
    # and only a resample holding both questions has both levels.
    gaps = heldout_level_gaps(run)
    assert gaps["2-1"]["gap"] == pytest.approx(2.25) and gaps["2-1"]["n"] == [2, 1] and gaps["2-1"]["questions"] == 2
    assert gaps["2-1"]["ci"] == pytest.approx([2.25, 3.0])
    assert gaps["1-0"]["gap"] == pytest.approx(-1.5) and gaps["1-0"]["ci"] == pytest.approx([-1.5, -1.5])
    # within a question: only arithmetic-train-2 holds high and mid, no question mid and low: not measured
    assert gaps["2-1"]["within_question"] is None and gaps["1-0"]["within_question"] is None
    write_jsonl(run.path("rm", "scores.jsonl"), [
        {"question_id": "coins-train-1", "split": "heldout", "level": 2, "score": 0.5, "rationale_ids": ["c1"]},
        {"question_id": "coins-train-1", "split": "heldout", "level": 0, "score": 1.0, "rationale_ids": ["r1"]}])
    assert heldout_level_gaps(run) == {"2-1": None, "1-0": None}          # no mid held out: neither gap
    assert heldout_level_gaps(Run(tmp_path / "empty", RunConfig())) is None


def test_level_gap_within_question_removes_what_the_question_mix_makes(tmp_path):
    """Two tasks on score scales of their own: every question puts mid 1 above low, but the mid rationales come
    from the high-scoring task and most low ones from the low-scoring one, so the pooled gap is far larger. The
    within-question gap is the mean of the questions' own differences, with a CI resampling those questions."""
    run = Run(tmp_path, RunConfig())
    rows = []
    for q, base in (("arithmetic-train-1", 10.0), ("arithmetic-train-2", 10.0), ("coins-train-3", 0.0)):
        rows += [{"question_id": q, "split": "heldout", "level": 1, "score": base + 1.0, "rationale_ids": [f"{q}m"]},
                 {"question_id": q, "split": "heldout", "level": 0, "score": base, "rationale_ids": [f"{q}l"]}]
    rows += [{"question_id": "coins-train-4", "split": "heldout", "level": 0, "score": -2.0, "rationale_ids": [f"l{i}"]}
             for i in range(3)]
    rows.append({"question_id": "coins-train-5", "split": "train", "level": 1, "score": -9.0, "rationale_ids": ["t"]})
    write_jsonl(run.path("rm", "scores.jsonl"), rows)
    gap = heldout_level_gaps(run)["1-0"]
    assert gap["gap"] == pytest.approx(23 / 3 - 14 / 6)                   # pooled: mid 7.67, low 2.33
    assert gap["within_question"] == {"gap": pytest.approx(1.0), "ci": pytest.approx([1.0, 1.0]), "questions": 3}
    assert heldout_level_gaps(run)["2-1"] is None                         # no high held out
    assert "mid − low +5.33 [" in format_level_gaps(heldout_level_gaps(run))
    assert "(within question +1.00 [+1.00, +1.00], 3 q)" in format_level_gaps(heldout_level_gaps(run))


def test_step_fraction_gaps_within_question():
    """The verifier's share of valid steps, level minus level inside each question, per task and over all:
    arithmetic's mid and low are equally valid in every question (0) even though its questions differ."""
    items = [{"task": "arithmetic", "question_id": q, "level": lvl, "step_fraction": f}
             for q, base in (("a1", 0.2), ("a2", 0.6)) for lvl, f in ((2, 1.0), (1, base), (0, base), (0, base))]
    items += [{"task": "coins", "question_id": "c1", "level": 1, "step_fraction": 0.5},
              {"task": "coins", "question_id": "c1", "level": 0, "step_fraction": 0.25}]
    gaps = step_fraction_gaps_within_question(items)
    assert set(gaps) == {"all", "arithmetic", "coins"}
    assert gaps["arithmetic"]["1-0"] == {"gap": 0.0, "ci": [0.0, 0.0], "questions": 2}
    assert gaps["arithmetic"]["2-1"]["gap"] == pytest.approx((0.8 + 0.4) / 2) and gaps["arithmetic"]["2-1"]["questions"] == 2
    assert gaps["coins"] == {"2-1": None, "1-0": None}                     # one question: no interval
    assert gaps["all"]["1-0"]["gap"] == pytest.approx(0.25 / 3) and gaps["all"]["1-0"]["questions"] == 3


def test_hint_use_per_task(analyzed):
    # The fake run's rationales: per question the gold-hinted one reaches the gold answer, the free and the
    # wrong-hinted ones do not — a model that uses the hint, in every task.
    m, _ = analyzed
    assert list(m["hint_use"]) == list(TASK_NAMES)
    for task, use in m["hint_use"].items():
        assert use["right_rate"]["gold"] == {"n": N_TRAIN, "high": N_TRAIN, "rate": 1.0}, task
        assert use["right_rate"]["free"]["high"] == use["right_rate"]["wrong"]["high"] == 0
        assert use["gold_lift"] == {"points": 100.0, "ci95": [100.0, 100.0]}
        assert use["wrong_pull"]["points"] == 0.0
    text = report_section(json.loads(json.dumps(m)))
    assert "| task | gold-hinted | free | wrong-hinted | gold − free, points [95 % CI] |" in text
    assert f"| arithmetic | 1.0000 ({N_TRAIN}/{N_TRAIN}) | 0.0000 (0/{N_TRAIN}) |" in text
