"""Chunked, resumable JSONL: whole chunks only, torn tails dropped, other configs never resumed."""
import json

from smlearn.io import ChunkedJsonlWriter, read_jsonl


def test_whole_chunks_survive_and_torn_tail_is_dropped(tmp_path):
    final = tmp_path / "out.jsonl"
    w = ChunkedJsonlWriter(final, [2, 2, 1], fingerprint="a")
    w.write_chunk(0, [{"id": 0}, {"id": 1}])
    with w.partial_path.open("a") as f:          # chunk 1 torn mid-write
        f.write(json.dumps({"id": 2, "chunk": 1}) + "\n" + '{"id": 3, "ch')
    w = ChunkedJsonlWriter(final, [2, 2, 1], fingerprint="a")
    assert w.done_chunks == {0}
    w.write_chunk(1, [{"id": 2}, {"id": 3}])
    w.write_chunk(2, [{"id": 4}])
    assert [r["id"] for r in w.finish()] == [0, 1, 2, 3, 4]
    assert [r["id"] for r in read_jsonl(final)] == [0, 1, 2, 3, 4] and not w.partial_path.exists()


def test_partial_rows_of_another_config_are_discarded(tmp_path, capsys):
    final = tmp_path / "out.jsonl"
    w = ChunkedJsonlWriter(final, [1, 1], fingerprint="old")
    w.write_chunk(0, [{"id": "old"}])
    w = ChunkedJsonlWriter(final, [1, 1], fingerprint="new")
    assert w.done_chunks == set() and "starting it afresh" in capsys.readouterr().out
    w.write_chunk(0, [{"id": "new"}])
    w = ChunkedJsonlWriter(final, [1, 1, 1], fingerprint="new")   # other chunking: also not resumable
    assert w.done_chunks == set()


def test_model_folder_is_published_atomically(tmp_path):
    from smlearn.stage_io import save_model
    from smlearn.models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama, load_causal_lm

    tok = build_bpe_tokenizer(["Q: 1 + 1? A: 2. The answer is 2."] * 20, vocab_size=300)
    spec = TinyLlamaSpec(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=32, max_position_embeddings=64)
    target = tmp_path / "sft" / "model"
    (tmp_path / "sft" / ".model.tmp").mkdir(parents=True)      # left by a process killed mid-save
    (tmp_path / "sft" / ".model.tmp" / "junk").write_text("x")
    save_model(build_tiny_llama(tok, spec, seed=0), tok, target)
    second = build_tiny_llama(tok, spec, seed=1)
    save_model(second, tok, target)                            # replaces the first one whole
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == ["model"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in target.iterdir()}
    loaded = load_causal_lm(str(target), device="cpu")
    assert all((a == b).all() for a, b in zip(loaded.state_dict().values(), second.state_dict().values()))
