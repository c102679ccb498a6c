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
