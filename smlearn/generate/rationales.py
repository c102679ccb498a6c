"""Stage 1, generate — rationale generation (docs/method.md).

For each training question the base model writes, with few-shot CoT prompts:
free CoT samples (no answer shown), rationales conditioned on the gold answer,
and rationales conditioned on wrong candidates. Output: `rationales.jsonl`.
The reward model's own questions (`generate.rm_split` / `rm_questions`, none by
default) get the same samples, after every training question's.

Resumable: requests are laid out in a fixed order and cut into chunks of
`batch_size`; each chunk is sampled with its own seed (seed, chunk index) and
appended whole, so a killed run resumes at the first missing chunk and, with
the same seed, ends with the same file as an uninterrupted run.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import dist, stage_io
from ..answers import extract_answer
from ..data import Example
from ..io import ChunkedJsonlWriter
from ..prompts import STOP_STRINGS, split_rationale
from ..rundir import Run
from .candidates import n_wrong_candidates, wrong_candidates
from .engine import SamplingParams, check_context, generate_texts


@dataclass(frozen=True)
class Request:
    question_id: str
    source: str            # free | gold | wrong
    candidate: str | None  # the hinted answer (None for free samples)
    candidate_index: int
    sample_index: int


def free_requests(items: list[Example], samples: int) -> list[Request]:
    return [Request(e.id, "free", None, 0, s) for e in items for s in range(samples)]


def hinted_requests(items: list[Example], wrong: dict[str, list[str]], cfg) -> list[Request]:
    out = []
    for e in items:
        out += [Request(e.id, "gold", e.answer, 0, s) for s in range(cfg.samples_gold)]
        for ci, cand in enumerate(wrong[e.id]):
            out += [Request(e.id, "wrong", cand, ci + 1, s) for s in range(cfg.samples_wrong)]
    return out


def _chunks(n: int, size: int) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


def _sample_chunk(model, tokenizer, builder, by_id, requests, params, seed, chunk, options=None) -> list[dict]:
    prompts = [builder.cot(by_id[r.question_id].question) if r.source == "free"
               else builder.hint(by_id[r.question_id].question, r.candidate) for r in requests]
    torch.manual_seed(seed * 1_000_003 + chunk)  # per-chunk seed: resumed runs match uninterrupted ones
    texts = generate_texts(model, tokenizer, prompts, params, batch_size=len(prompts),
                           labels=[f"question id {r.question_id}" for r in requests], progress=False,
                           options=options)
    rows = []
    for r, text in zip(requests, texts):
        ex = by_id[r.question_id]
        rationale, stated = split_rationale(text, builder.trigger)
        rows.append({
            "id": f"{r.question_id}/{r.source}/{r.candidate_index}/{r.sample_index}",
            "question_id": r.question_id, "source": r.source, "candidate": r.candidate,
            "is_gold": None if r.source == "free" else r.source == "gold",
            "text": text, "rationale": rationale,
            "stated_answer": extract_answer(f"{builder.trigger} {stated}", ex.kind, ex.choices, builder.trigger)
            if stated is not None else None,
            "sample_index": r.sample_index, "temperature": params.temperature, "top_p": params.top_p,
            "seed": seed, "chunk_seed": seed * 1_000_003 + chunk,
        })
    return rows


def _run_chunks(writer, model, tokenizer, builder, by_id, requests, params, cfg, offset, bar, options) -> None:
    for c, start in enumerate(range(0, len(requests), cfg.batch_size)):
        chunk = offset + c
        if not dist.mine(chunk):          # another process's chunk (smlearn.dist)
            continue
        if chunk in writer.done_chunks:
            bar.update(writer.chunk_sizes[chunk])
            continue
        rows = _sample_chunk(model, tokenizer, builder, by_id, requests[start:start + cfg.batch_size],
                             params, cfg.seed, chunk, options)
        writer.write_chunk(chunk, rows)
        bar.update(len(rows))


def generate(run: Run, progress: bool = True) -> dict:
    """Write `rationales.jsonl` for the training split (and the reward model's extra questions,
    `stage_io.rm_examples`, after them); returns the stage summary."""
    cfg = run.config.generate
    t0 = time.time()
    items = stage_io.examples(run, "train")
    rm_items = stage_io.rm_examples(run, items)
    by_id = {e.id: e for e in items + rm_items}
    model, tokenizer = stage_io.load_model(run, "generator")     # the base model, or round k-1's (smlearn.rounds)
    builder = stage_io.prompt_builder(run, tokenizer, stage_io.dataset_kind(items))
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                            top_p=cfg.top_p, stop_strings=tuple(STOP_STRINGS))
    # Chunks in a fixed order: the training questions' free then hinted samples, then the RM questions' (so
    # adding RM questions leaves every training rationale as it was).
    groups = [g for g in (items, rm_items) if g]
    layout = []
    for group in groups:
        n_free = len(group) * cfg.samples_free
        n_hinted = sum(cfg.samples_gold + n_wrong_candidates(e, cfg.max_wrong_candidates) * cfg.samples_wrong
                       for e in group)
        layout.append((_chunks(n_free, cfg.batch_size), _chunks(n_hinted, cfg.batch_size)))
    sizes = [n for free, hinted in layout for n in free + hinted]
    # Fail before sampling anything if a prompt cannot fit the model's context.
    everything = items + rm_items
    check_context(tokenizer, model, [builder.hint(e.question, e.answer) for e in everything],
                  [f"question id {e.id}" for e in everything], cfg.max_new_tokens)
    writer = ChunkedJsonlWriter(run.path("rationales.jsonl"), sizes, fingerprint=run.stage_key("generate"))
    # Several processes (smlearn.dist): chunk c is rank c mod N's; each chunk keeps its own seed.
    share = sum(n for c, n in enumerate(sizes) if dist.mine(c))
    dist.say_share("generate", share, sum(sizes), "rationales")
    bar = tqdm(total=share, desc="generate rationales", disable=not progress)
    rng = random.Random(cfg.seed)
    offset = 0
    for group, (free_chunks, hinted_chunks) in zip(groups, layout):
        # Phase 1: free CoT samples (they also supply wrong candidates for numbers and text).
        _run_chunks(writer, model, tokenizer, builder, by_id, free_requests(group, cfg.samples_free), params, cfg,
                    offset, bar, stage_io.engine_options(run))
        free_answers: dict[str, list] = {e.id: [] for e in group}
        dist.barrier()                     # every process's free samples are on disk
        for row in writer.rows():
            if row["source"] == "free" and row["question_id"] in free_answers:
                free_answers[row["question_id"]].append(row["stated_answer"])
        # Phase 2: rationalization for the gold answer and for wrong candidates.
        wrong = {e.id: wrong_candidates(e, cfg.max_wrong_candidates, free_answers[e.id], rng) for e in group}
        _run_chunks(writer, model, tokenizer, builder, by_id, hinted_requests(group, wrong, cfg), params, cfg,
                    offset + len(free_chunks), bar, stage_io.engine_options(run))
        offset += len(free_chunks) + len(hinted_chunks)
    bar.close()
    rows = writer.finish()
    n_free = sum(sum(free) for free, _ in layout)
    summary = {"questions": len(items), "rationales": len(rows), "free": n_free, "hinted": len(rows) - n_free,
               **({"rm_questions": len(rm_items)} if rm_items else {}),
               "seconds": round(time.time() - t0, 1), **stage_io.round_models(run, "generator")}
    run.mark_done("generate", summary)
    return summary
