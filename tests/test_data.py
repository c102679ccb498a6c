"""Data loading: every bad row is an error naming file, line and field; hub datasets fail fast offline."""
from __future__ import annotations

import json
import time

import pytest

from smlearn.config import DataConfig
from smlearn.data import load_jsonl_examples, load_split
from smlearn.errors import DataError, SmlearnError

from conftest import bench


def write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"id": "a", "question": "2+2?", "answer": "4", "kind": "number"}


@pytest.mark.parametrize("row, needle", [
    ({"id": "b", "answer": "4", "kind": "number"}, "line 2, field 'question': missing required field"),
    ({**GOOD, "id": "b", "kind": "essay"}, "line 2, field 'kind': unknown answer kind 'essay'"),
    ({**GOOD, "id": "b", "answer": "four"}, "line 2, field 'answer': a number answer must be exactly one number"),
    ({**GOOD, "id": "b", "kind": "yes_no", "answer": "maybe"}, "line 2, field 'answer'"),
    ({**GOOD, "id": "b", "kind": "choice", "answer": "C", "choices": {"A": "x", "B": "y"}},
     "line 2, field 'answer': answer 'C' is not one of the choices"),
    ({**GOOD, "id": "b", "kind": "choice", "answer": "A"}, "line 2, field 'choices'"),
    ({**GOOD}, "line 2, field 'id': duplicate id 'a' (first on line 1)"),
    ({**GOOD, "id": "b", "question": ""}, "line 2, field 'question': empty value"),
    ('{"id": "b", "question": ', "line 2: malformed JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
])
def test_bad_rows_name_file_line_field(tmp_path, row, needle):
    path = write(tmp_path, [GOOD, row])
    with pytest.raises(DataError) as err:
        load_jsonl_examples(path)
    assert str(err.value).startswith(str(path)) and needle in str(err.value)


# Gold numbers are read whole: what is unambiguous is accepted in canonical form, anything else refused.
@pytest.mark.parametrize("answer, canonical", [
    ("18", "18"), ("-2.5", "-2.5"), ("1,000", "1000"), ("1,234,567.5", "1234567.5"), ("1e3", "1000"),
    ("2.5E-2", "0.025"), ("7/2", "3.5"), ("3 1/2", "3.5"), ("-3 1/4", "-3.25"), ("$18", "18"), (".5", "0.5"),
    ("\u22124", "-4"), (" 42 ", "42"), (1000, "1000"), (2.5, "2.5"), (1e20, "100000000000000000000"),
])
def test_gold_number_accepted_forms(tmp_path, answer, canonical):
    ex = load_jsonl_examples(write(tmp_path, [{**GOOD, "answer": answer}]))[0]
    assert ex.answer == canonical


@pytest.mark.parametrize("answer", [
    "1 000", "0.1+0.2", "1,00", "1e400", "1e-400", "3 4/2", "1/0", "18 apples", "about 18", "5-6", "1,0000",
    "1.2.3", "12%", "inf", "nan", "1e", "3 1/2/4", "--4",
])
def test_gold_number_ambiguous_or_garbage_is_refused(tmp_path, answer):
    path = write(tmp_path, [GOOD, {**GOOD, "id": "b", "answer": answer}])
    with pytest.raises(DataError) as err:
        load_jsonl_examples(path)
    assert str(err.value).startswith(f"{path}, line 2, field 'answer': a number answer must be exactly one number")
    assert repr(answer)[1:-1] in str(err.value) or answer in str(err.value)


def test_gold_number_overflowing_json_number_is_refused(tmp_path):
    path = write(tmp_path, [GOOD, '{"id": "b", "question": "q", "answer": 1e400, "kind": "number"}'])
    with pytest.raises(DataError, match="line 2, field 'answer': a number answer must be exactly one number"):
        load_jsonl_examples(path)


def test_empty_and_missing(tmp_path):
    with pytest.raises(SmlearnError, match="dataset is empty"):
        load_jsonl_examples(write(tmp_path, []))
    with pytest.raises(SmlearnError, match="file not found"):
        load_jsonl_examples(tmp_path / "nope.jsonl")
    with pytest.raises(SmlearnError, match="no 'test.jsonl' file"):
        load_split(DataConfig(source=str(tmp_path)), "test")


def test_normalisation_columns_and_kind_default(tmp_path):
    path = write(tmp_path, [{"qid": "x1", "q": "Is it?", "label": "True"}])
    ex = load_jsonl_examples(path, kind="yes_no", columns={"id": "qid", "question": "q", "answer": "label"})[0]
    assert (ex.id, ex.question, ex.answer, ex.kind) == ("x1", "Is it?", "yes", "yes_no")
    ex = load_jsonl_examples(write(tmp_path, [{**GOOD, "answer": "1,000.0"}], "n.jsonl"))[0]
    assert ex.answer == "1000"


def test_every_shared_benchmark_loads():
    root = bench("gsm8k").parent
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for split in ("train", "test"):
            items = load_split(DataConfig(source=str(folder)), split)
            assert items and len({e.id for e in items}) == len(items)


def test_hub_dataset_offline_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(SmlearnError) as err:
        load_split(DataConfig(source="openai/gsm8k", name="gsm8k"), "train")
    assert time.time() - t0 < 30
    msg = str(err.value)
    assert "cannot load hub dataset 'openai/gsm8k'" in msg and "HF_HUB_OFFLINE=1" in msg


def test_hub_adapters_map_rows():
    from smlearn.data.hub import ADAPTERS

    row = ADAPTERS["gsm8k"].to_row({"question": "q?", "answer": "a <<1+1=2>>2\n#### 1,234"}, 0)
    assert row["answer"] == "1234" and row["kind"] == "number" and "<<" not in row["rationale"]
    row = ADAPTERS["commonsense_qa"].to_row({"id": "c1", "question": "Where?", "answerKey": "B",
                                             "choices": {"label": ["A", "B"], "text": ["home", "park"]}}, 0)
    assert row["question"] == "Where? Answer choices: (A) home, (B) park." and row["choices"]["B"] == "park"
    assert ADAPTERS["strategy_qa"].to_row({"qid": "s", "question": "Q?", "answer": False}, 0)["answer"] == "no"
    row = ADAPTERS["svamp"].to_row({"ID": "v", "Body": "He had 3.", "Question": "How many?", "Answer": 3.0}, 0)
    assert row["question"] == "He had 3. How many?" and row["answer"] == "3.0"
