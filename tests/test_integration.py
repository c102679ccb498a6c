"""Every stage, end to end, on slices of two real benchmarks (numeric and multiple choice) with a tiny real Llama.

Checks each artifact's content against the rules that produced it, not only its existence.
"""
from __future__ import annotations

import json

import pytest

import smlearn
from smlearn.collect.levels import HIGH, LOW, MID, hint_leak
from smlearn.report.report import describe_hint_use
from smlearn.data import load_jsonl_examples
from smlearn.answers import answers_match
from smlearn.io import read_jsonl
from smlearn.models import load_causal_lm

from conftest import bench, tiny_config, write_slice

N_TRAIN, N_TEST = 8, 6


@pytest.fixture(scope="module", params=["multiarith", "commonsense_qa"])
def finished_run(request, tmp_path_factory, tiny_base):
    name = request.param
    data = write_slice(bench(name), tmp_path_factory.mktemp(f"{name}-data"), N_TRAIN, N_TEST)
    out = tmp_path_factory.mktemp(f"{name}-run") / "run"
    smlearn.run(tiny_config(tiny_base, data, name), out, progress=False)
    return name, data, out


def test_rationales(finished_run):
    name, data, out = finished_run
    items = {e.id: e for e in load_jsonl_examples(data / "train.jsonl")}
    rows = read_jsonl(out / "rationales.jsonl")
    free = [r for r in rows if r["source"] == "free"]
    gold = [r for r in rows if r["source"] == "gold"]
    wrong = [r for r in rows if r["source"] == "wrong"]
    assert len(free) == 2 * N_TRAIN and len(gold) == 2 * N_TRAIN
    assert len(wrong) == 2 * N_TRAIN            # 2 wrong candidates x 1 sample (choices have >= 3 options)
    assert len({r["id"] for r in rows}) == len(rows)
    for r in gold:
        assert r["candidate"] == items[r["question_id"]].answer and r["is_gold"] is True
    for r in wrong:
        ex = items[r["question_id"]]
        assert r["is_gold"] is False and not answers_match(r["candidate"], ex.answer, ex.kind)
        if ex.kind == "choice":
            assert r["candidate"] in ex.choices
    for r in free:
        assert r["candidate"] is None and r["is_gold"] is None
    for r in rows:
        assert r["temperature"] == 1.0 and isinstance(r["text"], str)
        assert "\nQ:" not in r["text"]          # cut at the stop string


def test_collection(finished_run):
    name, data, out = finished_run
    items = {e.id: e for e in load_jsonl_examples(data / "train.jsonl")}
    judged = read_jsonl(out / "judged.jsonl")
    assert len(judged) == len(read_jsonl(out / "rationales.jsonl"))
    for r in judged:
        ex = items[r["question_id"]]
        assert r["final_correct"] == answers_match(r["final_answer"], ex.answer, ex.kind)
        if not r["rationale"].strip():
            expected = LOW
        elif r["final_correct"]:
            expected = HIGH
        else:
            expected = MID if r["source"] == "gold" else LOW
        assert r["level"] == expected
        assert r["hint_leak"] == hint_leak(r["rationale"], r["candidate"], "The answer is")
    by_id = {r["id"]: r for r in judged}
    sft = read_jsonl(out / "sft.jsonl")
    for s in sft:
        src = by_id[s["rationale_id"]]
        assert src["level"] == HIGH and not src["hint_leak"]
        assert s["completion"].endswith(f"The answer is {items[s['question_id']].answer}.")
        assert s["prompt"].endswith("\nA:")
    pairs = read_jsonl(out / "pairs.jsonl")
    for p in pairs:
        c, r = by_id[p["chosen_id"]], by_id[p["rejected_id"]]
        assert c["question_id"] == r["question_id"] == p["question_id"]
        assert c["level"] == p["chosen_level"] > p["rejected_level"] == r["level"]
        assert not c["hint_leak"] and not r["hint_leak"]
    stats = json.loads((out / "collect_stats.json").read_text())
    assert stats["rationales"] == len(judged) and stats["sft_examples"] == len(sft) and stats["pairs"] == len(pairs)
    assert sum(stats["levels"].values()) == len(judged)
    assert stats["hint_leak"]["count"] == sum(r["hint_leak"] for r in judged)
    for source in stats["levels_by_source"]:   # hint use: the share right per source, leaked rationales left out
        kept = [r for r in judged if r["source"] == source and not r["hint_leak"]]
        high = sum(r["level"] == HIGH for r in kept)
        assert stats["hint_use"]["right_rate"][source] == {"n": len(kept), "high": high, "rate": high / len(kept)}
    assert stats["per_dataset"][name]["questions"] == N_TRAIN


def test_trained_models_and_rl_log(finished_run):
    name, data, out = finished_run
    base_params = dict(load_causal_lm(str(out / "sft" / "model")).named_parameters())
    rl_params = dict(load_causal_lm(str(out / "rl" / "model")).named_parameters())
    assert any(not (base_params[k] == rl_params[k]).all() for k in base_params), "RL did not change the policy"
    rm = json.loads((out / "rm" / "metrics.json").read_text())
    assert rm["heldout_accuracy"] is None or 0.0 <= rm["heldout_accuracy"] <= 1.0
    assert rm["score_std"] >= 0
    log = read_jsonl(out / "rl" / "log.jsonl")
    assert len(log) == 2
    for step in log:
        for key in ("reward_mean", "kl_mean", "response_length_mean", "correct_mean", "rm_score_mean"):
            assert key in step and step[key] == step[key]   # present and not NaN
        assert 0.0 <= step["correct_mean"] <= 1.0


def test_eval_and_report(finished_run):
    name, data, out = finished_run
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"base", "sft", "rl"}
    for stage, m in metrics.items():
        assert m["total"] == N_TEST
        preds = read_jsonl(out / "eval" / stage / "predictions.jsonl")
        assert len(preds) == N_TEST and sum(p["correct"] for p in preds) == m["correct"]
        assert m["accuracy"] == pytest.approx(m["correct"] / N_TEST)
        # Scoring the raw completions again gives the same number (generation and scoring are separate).
        pred_file = out / f"{stage}-preds.jsonl"
        pred_file.write_text("".join(json.dumps({"id": p["id"], "completion": p["completion"]}) + "\n" for p in preds))
        assert smlearn.score(data / "test.jsonl", pred_file).correct == m["correct"]
    assert metrics["base"]["few_shot"] is True and metrics["sft"]["few_shot"] is False
    report = (out / "report.md").read_text()
    for stage in ("base", "sft", "rl"):
        m = metrics[stage]
        assert f"{m['accuracy']:.4f} | {m['correct']} / {m['total']}" in report
    stats = json.loads((out / "collect_stats.json").read_text())
    assert f"high {stats['levels']['high']}, mid {stats['levels']['mid']}, low {stats['levels']['low']}" in report
    assert f"pairs): {stats['hint_leak']['count']} (rate " in report
    assert f"- hint use: {describe_hint_use(stats['hint_use'])}" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest) == ["generate", "collect", "sft", "rm", "rl", "eval", "report"]


def test_second_run_skips_finished_stages(finished_run, capsys):
    name, data, out = finished_run
    before = (out / "manifest.json").read_text()
    smlearn.run(smlearn.Run.open(out).config, out, progress=False)
    assert (out / "manifest.json").read_text() == before
    assert capsys.readouterr().out.count("done already, skipped") == 7


def run_examples(run):
    from smlearn import stage_io

    return stage_io.examples(run, "train")


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_critic_free_rl_variants(finished_run, tmp_path, algorithm):
    """GRPO / RLOO (TRL) on the same corrected reward: they train, log and save a model."""
    import shutil

    name, data, out = finished_run
    if name != "commonsense_qa":
        pytest.skip("one dataset is enough for the variants")
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    run = smlearn.Run.open(copy, [f"rl.algorithm={algorithm}", "rl.steps=2", "rl.rollout_batch_size=4",
                                  "rl.num_generations=2", "rl.eval_questions=3", "rl.eval_every=1"])
    run.invalidate_from("rl")
    summary = smlearn.train_rl(run, progress=False)
    assert summary["algorithm"] == algorithm and summary["steps"] == 2
    log = read_jsonl(copy / "rl" / "log.jsonl")
    assert len(log) == 2 and all(-10 < r["reward_mean"] < 10 and 0 <= r["correct_mean"] <= 1 for r in log)
    # Held-out greedy accuracy: the SFT model's before step 1, then after every step (rl.eval_every=1).
    assert "initial_eval_accuracy" in log[0] and all(0 <= r["eval_accuracy"] <= 1 for r in log)
    assert summary["heldout_questions"] == 3 and summary["questions"] == len(run_examples(run)) - 3
    assert (copy / "rl" / "model" / "model.safetensors").exists()
    # TensorBoard: TRL's own metrics in tb/rl/, the reward's parts per step in tb/rl-reward/.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trl_tags = EventAccumulator(str(copy / "tb" / "rl")).Reload().Tags()["scalars"]
    assert "train/loss" in trl_tags
    parts = EventAccumulator(str(copy / "tb" / "rl-reward")).Reload()
    assert [e.value for e in parts.Scalars("train/correct_mean")] == pytest.approx([r["correct_mean"] for r in log])


def test_rl_lora_stage(finished_run, tmp_path):
    """rl.lora.enabled through the stage (PPO): adapters on the SFT policy and on the RM backbone; rl/model is
    the merged plain model, rl/adapter the policy's adapter."""
    import shutil

    from safetensors.torch import load_file

    name, data, out = finished_run
    if name != "multiarith":
        pytest.skip("one dataset is enough")
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    run = smlearn.Run.open(copy, ["rl.lora.enabled=true", "rl.lora.r=4", "rl.steps=2"])
    run.invalidate_from("rl")
    summary = smlearn.train_rl(run, progress=False)
    assert summary["steps"] == 2
    weights = load_file(copy / "rl" / "model" / "model.safetensors")
    sft = load_file(out / "sft" / "model" / "model.safetensors")
    assert set(weights) == set(sft) and not any("lora" in k for k in weights)
    assert (copy / "rl" / "adapter" / "adapter_model.safetensors").exists()
    assert any(not (weights[k] == sft[k]).all() for k in weights if "proj" in k)    # the adapter was merged in
