"""Several processes on one run: `accelerate launch --num_processes N -m smlearn run --config C --out D`.

The launcher (accelerate, torchrun) starts N copies of the same command and sets RANK, WORLD_SIZE and
LOCAL_RANK; with none set, smlearn is one process and nothing here does anything. The N processes form
one process group through accelerate's `PartialState` (gloo on CPU, NCCL on GPUs, process i on GPU
LOCAL_RANK), which the TRL trainers then share. What each stage does with N processes:

- generate, collect: the fixed chunks of the resumable writer (`io.ChunkedJsonlWriter`) are dealt out,
  chunk c to rank c mod N; each chunk keeps its own seed, so the merged file is the one a single process
  writes, byte for byte. Each rank appends whole chunks to its own partial file; a resumed run (with any
  number of processes) skips every chunk that any partial file holds whole.
- eval (and RL's held-out accuracy): the batches of `generate_texts` are dealt out, batch b to rank b mod
  N; greedy decoding of the same batches gives the same completions as one process.
- SFT, RM, GRPO/RLOO: TRL's trainers are data-parallel under the launcher on their own;
  `sft.batch_size`, `rm.batch_size` and `rl.rollout_batch_size` stay the global batch (each process takes
  1/N of it), so a config means the same experiment whatever N is.
- PPO (ours): each process rolls out and scores 1/N of every rollout batch and gradients are averaged
  across processes before each optimiser step (the models stay identical on every rank).

Only rank 0 writes run artifacts (`io.write_*`, models, TensorBoard, the manifest) and holds the run
directory's lock; every rank prints its share of each sharded stage once, e.g.
`[rank 1/2] eval base: 12 of 24 questions`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from .errors import ConfigError, SmlearnError

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0 or not is_distributed()


def prefix() -> str:
    """`[rank r/N] ` in a multi-process run, else empty."""
    return f"[rank {rank()}/{world_size()}] " if is_distributed() else ""


def init(device: str = "auto") -> None:
    """Join the process group once (no-op for one process), through accelerate's PartialState so that the
    TRL trainers use the same group: gloo when the run's device is the CPU, NCCL on GPUs."""
    if not is_distributed():
        return
    import torch
    import torch.distributed as td

    from accelerate import PartialState

    if td.is_initialized():
        return
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    PartialState(cpu=cpu)               # initialises the group: MULTI_CPU (gloo) or MULTI_GPU (NCCL)
    if not td.is_initialized():
        td.init_process_group(backend="gloo" if cpu else "nccl")


def _group_ready() -> bool:
    if not is_distributed():
        return False
    import torch.distributed as td

    if not td.is_initialized():
        init()
    return True


def barrier() -> None:
    if _group_ready():
        import torch.distributed as td

        td.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank."""
    if not _group_ready():
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not _group_ready():
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


class SharedError(SmlearnError):
    """Rank 0's error, raised on the other ranks too (rank 0 prints it; they exit quietly)."""


def main_first(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only (the others wait); its error, if any, is raised on every rank. Returns fn's
    result on rank 0 and None elsewhere."""
    if not is_distributed():
        return fn()
    result, status = None, None
    if is_main():
        try:
            result = fn()
        except SmlearnError as e:
            broadcast(("error", str(e)))
            raise
        except BaseException as e:
            broadcast(("bug", f"{type(e).__name__}: {e}"))
            raise
        broadcast(("ok", None))
        return result
    status = broadcast(None)
    if status[0] == "error":
        raise SharedError(status[1])
    if status[0] == "bug":
        raise SharedError(f"rank 0 failed ({status[1]})")
    return None


def say_share(stage: str, mine: int, total: int, unit: str) -> None:
    """Each rank's share of a sharded stage, printed once: `[rank 1/2] eval base: 12 of 24 questions`."""
    if is_distributed():
        print(f"{prefix()}{stage}: {mine} of {total} {unit}", flush=True)


def mine(index: int) -> bool:
    """Whether work item `index` (a chunk, a batch) is this rank's: item i goes to rank i mod N."""
    return index % world_size() == rank()


def shard() -> tuple[int, int] | None:
    """(rank, number of processes) for `generate_texts(shard=...)`, or None for one process."""
    return (rank(), world_size()) if is_distributed() else None


def merge_shards(results: list) -> list:
    """Per-rank lists with None where another rank did the work → the full list, on every rank."""
    if not is_distributed():
        return results
    merged = list(results)
    for other in all_gather(results):
        for i, value in enumerate(other):
            if value is not None:
                merged[i] = value
    return merged


def mean_across(values: dict[str, Any]) -> dict[str, Any]:
    """Numeric entries averaged over the ranks (each rank's over equal shares: the global mean)."""
    if not is_distributed():
        return values
    gathered = all_gather(values)
    out = dict(values)
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            nums = [g[key] for g in gathered if isinstance(g.get(key), (int, float))]
            out[key] = sum(nums) / len(nums) if key != "step" else value
    return out


def per_process(total: int, field: str) -> int:
    """A global batch size split evenly over the processes; an uneven split is a config error."""
    n = world_size()
    if total % n:
        raise ConfigError(f"{field}: {total} does not split evenly over {n} processes; use a multiple of {n}")
    return total // n


def check_config(config) -> None:
    """Checked before any stage runs: batch sizes that are global across processes split evenly, and the
    settings DeepSpeed ZeRO-3 cannot run are refused (naming the field)."""
    if is_distributed():
        per_process(config.sft.batch_size, "sft.batch_size")
        per_process(config.rm.batch_size, "rm.batch_size")
        per_process(config.rl.rollout_batch_size, "rl.rollout_batch_size")
        if config.rl.algorithm == "ppo":
            per_process(config.rl.mini_batch_size, "rl.mini_batch_size")
    if zero_stage() == 3:
        lora = [("sft.lora.enabled", config.sft.lora.enabled), ("rm.lora.enabled", config.rm.lora.enabled),
                ("rl.lora.enabled", config.rl.lora.enabled and config.rl.algorithm != "ppo")]
        for field, on in lora:
            if on:
                raise ConfigError(f"{field}: LoRA under DeepSpeed ZeRO-3 is not supported (the partitioned backbone "
                                  "is not merged into the saved model); launch with configs/accelerate/zero2.yaml "
                                  "or without DeepSpeed")
        if config.rm.lm_coef:
            raise ConfigError("rm.lm_coef: the language-modelling regulariser reads the whole output embedding, "
                              "which ZeRO-3 partitions; set rm.lm_coef=0 or launch with configs/accelerate/zero2.yaml")
        if config.rl.algorithm == "ppo" and not config.rl.lora.enabled:
            raise ConfigError("rl.lora.enabled: smlearn's PPO does not partition its models with DeepSpeed ZeRO-3, "
                              "so full-parameter PPO on a model that needs ZeRO-3 cannot fit; set "
                              "rl.lora.enabled=true (PPO then runs data-parallel) or rl.algorithm=grpo")


def zero_stage() -> int | None:
    """The DeepSpeed ZeRO stage `accelerate launch` was given (a DeepSpeed config), or None."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return None
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        return int(os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and os.path.exists(path):
        import json

        with open(path, encoding="utf-8") as f:
            return int(json.load(f).get("zero_optimization", {}).get("stage", 0))
    return None


def gathered_state_dict(trainer) -> dict | None:
    """Under DeepSpeed ZeRO-3 the trained weights are partitioned over the processes: their full state dict
    (on rank 0; every rank must call this), to save. None without ZeRO-3 (the model holds its weights)."""
    if zero_stage() != 3:
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def broadcast_tensors_(tensors: list) -> None:
    """Rank 0's values of `tensors` on every rank, in place."""
    if not _group_ready():
        return
    import torch.distributed as td

    for t in tensors:
        td.broadcast(t, src=0)


def all_reduce_mean_(tensors: list) -> None:
    """Average gradients (or any tensors) across the processes, in place, in buckets."""
    if not _group_ready() or not tensors:
        return
    import torch
    import torch.distributed as td

    n = world_size()
    bucket: list = []
    size = 0
    limit = 1 << 24                     # 16M elements per flat buffer

    def flush():
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([t.reshape(-1).float() for t in bucket])
        td.all_reduce(flat)
        flat /= n
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        bucket, size = [], 0

    for t in tensors:
        bucket.append(t)
        size += t.numel()
        if size >= limit:
            flush()
    flush()
