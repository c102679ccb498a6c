"""Stage 2, collect — rationale collection: hint-free final answers, levels, SFT set, pairs.

For every rationale the base model reads the question and the rationale
(without the hint) and completes "The answer is" greedily; that final answer
is compared with the gold answer to give the rationale its level (levels.py).
Hinted rationales that leak their hint to this judge are flagged (`hint_leak`).
The final-answer pass is resumable like generation (`judged.jsonl.partial`).
The reward model's own questions (`generate.rm_questions`) are judged too; their
pairs join the RM's and hold its held-out set, and the SFT set and
collect_stats' totals are the training questions' (collect_stats["rm_questions"]
counts the others).
"""
from __future__ import annotations

import time

from .. import dist, stage_io
from ..answers import answers_match, extract_answer
from ..io import ChunkedJsonlWriter, read_jsonl, write_json, write_jsonl
from ..rundir import Run
from ..generate.engine import SamplingParams, generate_texts
from .levels import (assign_level, build_pairs, build_sft, collect_stats, hint_leak, rm_question_stats,
                     split_pairs)


def _judge_chunk(model, tokenizer, builder, by_id, rows, cfg, options=None) -> list[dict]:
    prompts = [builder.final_answer(by_id[r["question_id"]].question, r["rationale"]) for r in rows]
    params = SamplingParams(max_new_tokens=cfg.answer_max_new_tokens, do_sample=False,
                            stop_strings=("\n",))
    outs = generate_texts(model, tokenizer, prompts, params, batch_size=len(prompts),
                          labels=[f"rationale {r['id']}" for r in rows], progress=False, options=options)
    judged = []
    for r, out in zip(rows, outs):
        ex = by_id[r["question_id"]]
        final = extract_answer(f"{builder.trigger} {out}", ex.kind, ex.choices, builder.trigger)
        correct = answers_match(final, ex.answer, ex.kind)
        judged.append({**r, "final_output": out, "final_answer": final, "final_correct": correct,
                       "level": assign_level(r["source"], correct, r["rationale"]),
                       "hint_leak": hint_leak(r["rationale"], r["candidate"], builder.trigger)})
    return judged


def collect(run: Run, progress: bool = True) -> dict:
    """Write judged.jsonl, sft.jsonl, pairs.jsonl and collect_stats.json."""
    from tqdm.auto import tqdm

    run.require("generate", "collect")
    cfg = run.config.collect
    t0 = time.time()
    items = stage_io.examples(run, "train")
    rm_items = stage_io.rm_examples(run, items)          # the reward model's extra questions (none by default)
    by_id = {e.id: e for e in items + rm_items}
    rationales = read_jsonl(run.path("rationales.jsonl"))
    model, tokenizer = stage_io.load_model(run, "generator")     # the model that wrote the rationales
    builder = stage_io.prompt_builder(run, tokenizer, stage_io.dataset_kind(items))

    # Chunks follow rationales.jsonl's order, so a resumed run cuts the same chunks. Each chunk is one
    # generation batch, padded to its longest prompt: nothing is sorted across chunks.
    sizes = [min(cfg.batch_size, len(rationales) - i) for i in range(0, len(rationales), cfg.batch_size)]
    writer = ChunkedJsonlWriter(run.path("judged.jsonl"), sizes, fingerprint=run.stage_key("collect"))
    # Several processes (smlearn.dist): chunk c is rank c mod N's.
    share = sum(n for c, n in enumerate(sizes) if dist.mine(c))
    dist.say_share("collect", share, len(rationales), "rationales")
    bar = tqdm(total=share, desc="collect: final answers", disable=not progress)
    for c, start in enumerate(range(0, len(rationales), cfg.batch_size)):
        if not dist.mine(c):
            continue
        if c not in writer.done_chunks:
            writer.write_chunk(c, _judge_chunk(model, tokenizer, builder, by_id,
                                               rationales[start:start + cfg.batch_size], cfg,
                                               stage_io.engine_options(run)))
        bar.update(sizes[c])
    bar.close()
    judged = writer.finish()

    # SFT and pairs use the zero-shot prompt: that is how trained models are prompted.
    zero_shot = {e.id: builder.cot(e.question, few_shot=run.config.prompts.eval_few_shot_after_training)
                 for e in by_id.values()}
    gold = {e.id: e.answer for e in items}
    train_ids = set(gold)
    judged_train = [r for r in judged if r["question_id"] in train_ids]
    sft = build_sft(judged_train, zero_shot, gold, builder.trigger, cfg.max_sft_per_question)
    pairs = build_pairs(judged, zero_shot, builder.trigger, cfg.max_pairs_per_question, cfg.seed, cfg.pairs)
    # Held-out questions come from the RM-only questions when there are any: the RM then trains on every
    # training question's pairs, as SFT does on its rationales.
    pairs = split_pairs(pairs, cfg.heldout_fraction, cfg.seed,
                        among={e.id for e in rm_items} if rm_items else None)
    stats = collect_stats(judged_train, sft, [p for p in pairs if p["question_id"] in train_ids], list(gold),
                          run.config.data.name or run.config.data.source)
    if rm_items:
        stats["rm_questions"] = rm_question_stats(judged, pairs, train_ids, run.config.generate.rm_split)
        stats["pairs"], stats["pairs_train"], stats["pairs_heldout"] = (
            len(pairs), sum(p["split"] == "train" for p in pairs), sum(p["split"] == "heldout" for p in pairs))
    write_jsonl(run.path("sft.jsonl"), sft)
    write_jsonl(run.path("pairs.jsonl"), pairs)
    write_json(run.path("collect_stats.json"), stats)
    lift = stats["hint_use"]["gold_lift"]
    summary = {"rationales": len(judged_train), **stats["levels"], "hint_leak": stats["hint_leak"]["count"],
               **({"gold_hint_lift": round(lift["points"], 1)} if lift else {}),
               "sft_examples": len(sft), "pairs": len(pairs),
               **({"rm_questions": stats["rm_questions"]["questions"],
                   "rm_rationales": stats["rm_questions"]["rationales"]} if rm_items else {}),
               "yield_per_question": round(stats["yield_per_question"], 4), "seconds": round(time.time() - t0, 1),
               **stage_io.round_models(run, "generator")}
    run.mark_done("collect", summary)
    return summary
