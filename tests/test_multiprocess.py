"""Every stage under `accelerate launch` with 2 processes (gloo on CPU), on a tiny real Llama (issue 10).

The 2-process run directory must equal the 1-process one for the greedy and seeded stages (generate,
collect, the base model's eval: same files, same bytes), and the training stages must finish and produce
models. Only rank 0 writes artifacts; each rank prints its share once per sharded stage.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import smlearn
from smlearn.io import ChunkedJsonlWriter, read_jsonl

from conftest import bench, tiny_config, write_slice

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], cwd: Path, processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes N -m smlearn ...` (on CPU accelerate needs --multi_gpu to start
    several processes through torchrun; smlearn then joins them with gloo because model.device is cpu)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "smlearn", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


SAME_BYTES = ["rationales.jsonl", "judged.jsonl", "sft.jsonl", "pairs.jsonl", "collect_stats.json",
              "eval/base/predictions.jsonl"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("multiprocess")
    data = write_slice(bench("multiarith"), root / "data", 8, 6)
    cfg = tiny_config(tiny_base, data, "multiarith",
                      model={"device": "cpu"},
                      generate={"samples_gold": 2, "samples_wrong": 1, "samples_free": 2, "batch_size": 4,
                                "max_new_tokens": 16},
                      collect={"batch_size": 8},
                      eval={"batch_size": 2, "max_new_tokens": 16},
                      rl={"steps": 2, "rollout_batch_size": 4, "mini_batch_size": 4, "max_new_tokens": 8,
                          "eval_questions": 2, "eval_every": 1})
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    smlearn.run(cfg, root / "one", progress=False)
    result = launch(["run", "--config", "cfg.yaml", "--out", "two"], cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return root, result


def test_two_processes_write_the_same_files_as_one(runs):
    root, _ = runs
    for name in SAME_BYTES:
        one, two = (root / "one" / name).read_bytes(), (root / "two" / name).read_bytes()
        assert one == two, f"{name} differs between 1 and 2 processes"
    assert len(read_jsonl(root / "two" / "rationales.jsonl")) > 8          # several chunks: both ranks worked
    m1, m2 = (json.loads((root / r / "eval" / "base" / "metrics.json").read_text()) for r in ("one", "two"))
    assert {k: v for k, v in m1.items() if k != "seconds"} == {k: v for k, v in m2.items() if k != "seconds"}
    # Nothing of the ranks' own partial files is left.
    assert not list((root / "two").glob("*.partial*"))


def test_two_processes_train_every_stage_and_rank_0_writes(runs):
    root, result = runs
    two = root / "two"
    manifest = json.loads((two / "manifest.json").read_text())
    assert list(manifest) == ["generate", "collect", "sft", "rm", "rl", "eval", "report"]
    for model in ("sft", "rm", "rl"):
        assert (two / model / "model" / "model.safetensors").exists(), model
    for stage in ("base", "sft", "rl"):
        assert len(read_jsonl(two / "eval" / stage / "predictions.jsonl")) == 6
    log = read_jsonl(two / "rl" / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2] and all("eval_accuracy" in r for r in log)
    assert log[0]["episode"] == 4                  # the global rollout batch, 2 per process
    assert (two / "report.md").exists() and (two / "tb" / "sft").is_dir()
    assert not (two / ".smlearn.lock").exists()


def test_each_rank_prints_its_share_once_per_stage(runs):
    _, result = runs
    out = result.stdout
    # generate: 8 questions x (2 free + 2 gold + 1 x 2 wrong) = 48 rationales in 12 chunks of 4, 6 each.
    for rank in (0, 1):
        assert out.count(f"[rank {rank}/2] generate: 24 of 48 rationales") == 1, out
        assert out.count(f"[rank {rank}/2] collect: 24 of 48 rationales") == 1, out
    # eval: 6 test questions in 3 batches of 2: batches 0 and 2 to rank 0, batch 1 to rank 1.
    for stage in ("base", "sft", "rl"):
        assert out.count(f"[rank 0/2] eval {stage}: 4 of 6 questions") == 1, out
        assert out.count(f"[rank 1/2] eval {stage}: 2 of 6 questions") == 1, out
    # Training stages: each process's share of the global batches (sft/rm batch 8, 4 rollouts per RL step).
    for rank in (0, 1):
        assert out.count(f"[rank {rank}/2] sft: 4 of 8 examples per step") == 1, out
        assert out.count(f"[rank {rank}/2] rm: 4 of 8 pairs per step") == 1, out
        assert out.count(f"[rank {rank}/2] rl (ppo): 2 of 4 rollouts per step") == 1, out
    # One line per stage, from rank 0 only.
    assert out.count("[smlearn] eval: ") == 1 and out.count("[smlearn] run finished") == 1


def test_grpo_on_two_processes(runs):
    """GRPO (TRL, data-parallel over the 2 processes) as a stage command on the finished run."""
    import shutil

    root, _ = runs
    grpo = root / "grpo"
    shutil.copytree(root / "two", grpo)
    config = yaml.safe_load((grpo / "config.yaml").read_text())
    config["rl"].update(algorithm="grpo", num_generations=2)
    (grpo / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (grpo / "rl" / "model" / "model.safetensors").unlink()
    result = launch(["train", "rl", "--run", "grpo"], cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("[smlearn] train rl: algorithm grpo, steps 2") == 1, result.stdout
    assert result.stdout.count("[rank 1/2] rl (grpo): 2 of 4 rollouts per step") == 1, result.stdout
    log = read_jsonl(grpo / "rl" / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2] and all("eval_accuracy" in r for r in log)
    assert (grpo / "rl" / "model" / "model.safetensors").exists()


def test_a_global_batch_that_does_not_split_is_one_config_error(tmp_path, monkeypatch, capsys):
    """Checked from the launcher's environment before the processes meet: rank 0 prints the error, the
    others exit with the same status quietly (in-process here, as rank 0 and as rank 1 of 2)."""
    from smlearn.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": "./model"}, "data": {"source": "./data"}}))
    line = "smlearn: error: sft.batch_size: 3 does not split evenly over 2 processes; use a multiple of 2"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, printed in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "bad"), "sft.batch_size=3"]) == 2
        assert capsys.readouterr().err.count(line) == printed, rank
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------
# Resuming chunks that other processes wrote
# ---------------------------------------------------------------------------

def test_a_resumed_writer_takes_every_ranks_whole_chunks(tmp_path):
    """Partial files of an interrupted 2-process run (rank 1's with a torn chunk) resume in one process:
    the whole chunks of both files count as done, the torn one is redone, the merge is in chunk order."""
    final = tmp_path / "rationales.jsonl"
    sizes = [2, 2, 2, 2]
    w = ChunkedJsonlWriter(final, sizes, fingerprint="f")            # writes the fingerprint, as rank 0 would
    w.write_chunk(0, [{"id": 0}, {"id": 1}])
    w.write_chunk(2, [{"id": 4}, {"id": 5}])
    rank1 = tmp_path / "rationales.jsonl.partial.rank1"
    rank1.write_text(json.dumps({"id": 2, "chunk": 1}) + "\n" + json.dumps({"id": 3, "chunk": 1}) + "\n"
                     + json.dumps({"id": 6, "chunk": 3}) + "\n" + '{"id": 7, "ch')      # chunk 3 torn
    resumed = ChunkedJsonlWriter(final, sizes, fingerprint="f")
    assert resumed.done_chunks == {0, 1, 2}
    resumed.write_chunk(3, [{"id": 6}, {"id": 7}])
    assert [r["id"] for r in resumed.finish()] == list(range(8))
    assert [r["id"] for r in read_jsonl(final)] == list(range(8)) and not rank1.exists()
    # Under other settings the other ranks' partial files are discarded too.
    ChunkedJsonlWriter(final, sizes, fingerprint="f").write_chunk(0, [{"id": 0}, {"id": 1}])
    rank1.write_text(json.dumps({"id": 2, "chunk": 1}) + "\n" + json.dumps({"id": 3, "chunk": 1}) + "\n")
    assert ChunkedJsonlWriter(final, sizes, fingerprint="g").done_chunks == set() and not rank1.exists()
