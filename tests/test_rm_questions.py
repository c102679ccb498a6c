"""The reward model's own questions (generate.rm_split / rm_questions): rationales for the RM only.

They are generated after the training questions (every training rationale, the SFT set and so SFT stay as
they were), judged like them, give the RM its held-out pairs (and more training pairs), never reach SFT,
and are left out of RL's questions when RL trains on the same split.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import bench, read_rows, tiny_config
from smlearn import pipeline, stage_io
from smlearn.config import config_from_dict
from smlearn.errors import ConfigError
from smlearn.io import read_jsonl
from smlearn.rundir import Run, fingerprint


@pytest.fixture(scope="module")
def data_with_extra(tmp_path_factory) -> Path:
    """6 training and 4 test CommonsenseQA questions, and an `extra` split of 24 other training-split
    questions whose first row repeats a training question under another id."""
    dst = tmp_path_factory.mktemp("csqa_extra")
    rows = read_rows(bench("commonsense_qa") / "train.jsonl", 30)
    test = read_rows(bench("commonsense_qa") / "test.jsonl", 4)
    extra = [{**rows[0], "id": "repeat-of-a-training-question"}] + rows[6:30]
    for split, part in (("train", rows[:6]), ("test", test), ("extra", extra)):
        (dst / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return dst


def _config(tiny_base, data, **generate):
    return tiny_config(tiny_base, data, "commonsense_qa",
                       generate={"samples_gold": 1, "samples_wrong": 1, "samples_free": 2, "batch_size": 4,
                                 "max_new_tokens": 16, **generate},
                       collect={"answer_max_new_tokens": 6, "batch_size": 16, "heldout_fraction": 0.5})


def test_rm_questions_feed_the_reward_model_only(tmp_path, tiny_base, data_with_extra):
    plain = pipeline.run(_config(tiny_base, data_with_extra), tmp_path / "plain", progress=False, until="collect")
    extra = pipeline.run(_config(tiny_base, data_with_extra, rm_split="extra", rm_questions=20),
                         tmp_path / "extra", progress=False, until="collect")
    train_ids = {json.loads(line)["id"] for line in (data_with_extra / "train.jsonl").read_text().splitlines()}
    rm_ids = [e.id for e in stage_io.rm_examples(extra)]
    # The first 20 extra questions that are not training questions: the repeat is skipped.
    assert len(rm_ids) == 20 and "repeat-of-a-training-question" not in rm_ids and not set(rm_ids) & train_ids

    a, b = read_jsonl(plain.path("rationales.jsonl")), read_jsonl(extra.path("rationales.jsonl"))
    assert [r for r in b if r["question_id"] in train_ids] == a        # training rationales unchanged
    assert {r["question_id"] for r in b} - train_ids == set(rm_ids)    # and the RM questions' after them
    assert read_jsonl(extra.path("sft.jsonl")) == read_jsonl(plain.path("sft.jsonl"))   # SFT never sees them

    pairs = read_jsonl(extra.path("pairs.jsonl"))
    heldout = {p["question_id"] for p in pairs if p["split"] == "heldout"}
    assert heldout and heldout <= set(rm_ids)                          # held out among the RM questions only
    assert all(p["split"] == "train" for p in pairs if p["question_id"] in train_ids)
    stats = json.loads(extra.path("collect_stats.json").read_text())
    assert stats["questions"] == 6 and stats["rm_questions"]["questions"] == 20
    assert stats["rm_questions"]["rationales"] == sum(r["question_id"] in rm_ids for r in b)
    assert stats["pairs"] == len(pairs) and stats["pairs_heldout"] == sum(p["split"] == "heldout" for p in pairs)
    assert extra.summary("generate")["rm_questions"] == 20
    summary = extra.summary("collect")        # the console line: training rationales; the RM's apart
    assert summary["rationales"] == len(a) and summary["high"] + summary["mid"] + summary["low"] == len(a)
    assert summary["rm_questions"] == 20 and summary["rm_rationales"] == len(b) - len(a)
    from smlearn.report.report import collection_section

    line = [x for x in collection_section(stats) if "reward model's own questions" in x]
    assert line and f"extra split; no SFT, no RL): 20, rationales judged {len(b) - len(a)}" in line[0]

    from smlearn.train.rl import rl_questions

    rl_run = Run(extra.root, config_from_dict(
        {**_config(tiny_base, data_with_extra, rm_split="extra", rm_questions=20),
         "rl": {"split": "extra", "eval_questions": 1}}))
    trains, watched = rl_questions(rl_run)      # the 25 extra rows less the 20 RM questions
    assert not {e.id for e in trains + watched} & set(rm_ids) and len(trains) + len(watched) == 5


def test_rm_question_settings_are_checked_and_old_runs_keep_their_fingerprints(tiny_base, data_with_extra):
    with pytest.raises(ConfigError, match="generate.rm_split: required"):
        config_from_dict(_config(tiny_base, data_with_extra, rm_questions=3)).validate()
    with pytest.raises(ConfigError, match="generate.rm_split: 'train' is the training or the test split"):
        config_from_dict(_config(tiny_base, data_with_extra, rm_split="train", rm_questions=3)).validate()
    with pytest.raises(ConfigError, match="generate.rm_questions: must be >= 0"):
        config_from_dict(_config(tiny_base, data_with_extra, rm_split="extra", rm_questions=-1)).validate()
    base = config_from_dict(_config(tiny_base, data_with_extra))
    explicit = config_from_dict(_config(tiny_base, data_with_extra, rm_split=None, rm_questions=0))
    assert fingerprint(base, "generate") == fingerprint(explicit, "generate")
    with_rm = config_from_dict(_config(tiny_base, data_with_extra, rm_split="extra", rm_questions=3))
    assert fingerprint(with_rm, "generate") != fingerprint(base, "generate")
