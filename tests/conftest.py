"""Shared fixtures: real benchmark slices and a tiny real Llama, pretrained for a few seconds.

No model is downloaded: the tokenizer (byte-level BPE) and the model
(LlamaForCausalLM from a config) are built here, then briefly pretrained on
"Q: ... A: ... The answer is X." text from the benchmark train splits so that
the pipeline's artifacts have real content (answers in the right format,
some right, some wrong).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and OpenMP threads spinning
# against other processes on 2 cores slow a forward pass down 50-fold.
torch.set_num_threads(1)

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"


def bench(name: str) -> Path:
    path = BENCH / name
    if not path.exists():
        pytest.skip(f"shared benchmark folder not found: {path}")
    return path


def read_rows(path: Path, n: int) -> list[dict]:
    rows = []
    with path.open() as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) >= n:
                break
    return rows


def write_slice(src: Path, dst: Path, n_train: int, n_test: int) -> Path:
    """A folder with the first rows of a benchmark's train and test files."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = read_rows(src / f"{split}.jsonl", n)
        (dst / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def _copy_drills(n: int = 1500) -> list[str]:
    """Short answer-copying drills: the tiny model must learn to carry a hint into its rationale
    and a rationale's result into "The answer is" for collection to find any high rationales."""
    import random

    rng = random.Random(0)
    out = []
    for _ in range(n):
        a = str(rng.randint(0, 120)) if rng.random() < 0.6 else rng.choice("ABCDE")
        b = a if rng.random() < 0.85 else str(rng.randint(0, 120))
        out.append(f"Hint: the answer is {a}.\nA: We get {a}. The answer is {a}.\n\nA: We get {b}. The answer is {b}.")
    return out


def _warmup_texts(rows: list[dict]) -> list[str]:
    texts = _copy_drills()
    for r in rows:
        answer = r["answer"]
        reason = f"The answer must be {r['choices'][answer]}." if r.get("choices") else f"We get {answer}."
        texts.append(f"Q: {r['question']}\nA: {reason} The answer is {answer}.")
        texts.append(f"Q: {r['question']}\nHint: the answer is {answer}.\nA: {reason} The answer is {answer}.")
    return texts


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A saved tiny Llama + BPE tokenizer, pretrained ~20 s on two benchmarks' answer format."""
    from smlearn.lab.pretrain import PretrainConfig, pretrain
    from smlearn.models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama
    from smlearn.prompts import BUILTIN

    rows = read_rows(bench("multiarith") / "train.jsonl", 300) + read_rows(bench("commonsense_qa") / "train.jsonl", 300)
    texts = _warmup_texts(rows)
    exemplar_text = [f"Q: {e.question}\nA: {e.rationale} The answer is {e.answer}." for ex in BUILTIN.values() for e in ex]
    out = tmp_path_factory.mktemp("tiny_base")
    tok = build_bpe_tokenizer(texts + exemplar_text, vocab_size=600)
    model = build_tiny_llama(tok, TinyLlamaSpec(hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                                                max_position_embeddings=1024), seed=0)
    pretrain(model, tok, texts + exemplar_text, PretrainConfig(steps=200, batch_size=16, seq_len=128,
                                                               learning_rate=3e-3, window_start="random",
                                                               loss_on="all"), progress=False)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def tiny_config(model_dir: Path, data_dir: Path, name: str | None = None, **sections) -> dict:
    """A run config sized for tests: few samples, short generations, a few training steps."""
    cfg = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"source": str(data_dir), "name": name},
        "prompts": {"n_shots": 2},
        "generate": {"samples_gold": 2, "samples_wrong": 1, "max_wrong_candidates": 2, "samples_free": 2,
                     "max_new_tokens": 24, "batch_size": 8, "temperature": 1.0},
        "collect": {"answer_max_new_tokens": 6, "batch_size": 16, "heldout_fraction": 0.25},
        "sft": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 256},
        "rm": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 256},
        "rl": {"steps": 2, "rollout_batch_size": 4, "mini_batch_size": 4, "ppo_epochs": 1, "max_new_tokens": 16},
        "eval": {"max_new_tokens": 24, "batch_size": 16},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def cli_project(root: Path, tiny_base: Path) -> Path:
    """A folder as a user starts one: model/ (the tiny base), data/ (6 train, 4 test CommonsenseQA
    questions) and cfg.yaml with relative paths and one sample per source; returns root."""
    import shutil

    import yaml

    shutil.copytree(tiny_base, root / "model")
    write_slice(bench("commonsense_qa"), root / "data", 6, 4)
    cfg = tiny_config("./model", "./data", "commonsense_qa",
                      generate={"samples_gold": 1, "samples_wrong": 1, "samples_free": 1, "batch_size": 6,
                                "max_new_tokens": 12})
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root


def value_model_like(policy, seed: int = 5):
    """A value (or reward) model of the policy's shape: a fresh one-label sequence-classification Llama."""
    import copy

    import torch
    from transformers import LlamaForSequenceClassification

    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config)
