"""The lab's shipped base model is the one the current default settings build, and it still fits the
current corpus (so a change to the corpus or the settings cannot leave a stale model in the package).

Rebuilding it: `smlearn lab pretrain --ship` (about 8 minutes on 2 CPU cores; see docs/results.md)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from smlearn.lab.default import QUESTION_COUNTS, LabSettings, corpus_texts, ensure_base_model, packaged_base_model
from smlearn.lab.pretrain import token_stream
from smlearn.models import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def shipped():
    folder = packaged_base_model(LabSettings())
    assert folder is not None, "no shipped base model for the default lab settings: run smlearn lab pretrain --ship"
    return folder


def test_shipped_model_is_the_default_settings_model(shipped, monkeypatch, tmp_path):
    record = json.loads((shipped / "pretrain.json").read_text())
    # pretrain.json records the settings as the cache keys see them (LabSettings.cache_view).
    defaults = {k: v for k, v in LabSettings().cache_view().items() if k not in QUESTION_COUNTS}
    assert {k: v for k, v in record["settings"].items() if k not in QUESTION_COUNTS} == defaults
    # The default job uses it (no pretraining), whatever the cache holds.
    monkeypatch.setenv("SMLEARN_CACHE", str(tmp_path))
    assert ensure_base_model(LabSettings(), progress=False) == shipped
    # Other settings are not served the shipped model.
    assert packaged_base_model(LabSettings(seed=12345)) is None


def test_shipped_model_fits_the_current_corpus(shipped):
    """Loss on solution tokens of current corpus documents is near the loss it finished pretraining with
    (a corpus-format change that the model was not trained on would push it far above)."""
    record = json.loads((shipped / "pretrain.json").read_text())
    settings = LabSettings()
    texts, _ = corpus_texts(dataclasses.replace(settings, corpus_per_task=60))
    tok = load_tokenizer(str(shipped))
    model = load_causal_lm(str(shipped), dtype="float32", device="cpu")
    ids, labels, starts = token_stream(texts, tok, seed=1, loss_on="answer")
    losses = []
    with torch.no_grad():
        bounds = starts.tolist() + [len(ids)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            out = model(input_ids=ids[a:b][None], labels=labels[a:b][None])
            losses.append(out.loss.item())
    loss = sum(losses) / len(losses)
    assert loss < 2 * record["final_loss"] + 0.05, (loss, record["final_loss"])
