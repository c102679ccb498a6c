"""Batched text generation with any causal LM (Hugging Face `generate`).

Requests are sorted by prompt length so each batch pads little, left-padded
(decoder-only models continue from the right), decoded, and cut at the stop
strings. A prompt that does not fit the model's context is a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import SmlearnError
from ..models import context_length


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()


def truncate_at_stop(text: str, stop_strings) -> str:
    cut = len(text)
    for s in stop_strings:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids as training sees them (TRL adds the tokenizer's special tokens, e.g. BOS),
    except where a chat template already wrote the BOS text."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and prompt.startswith(bos))
    return tokenizer(prompt, add_special_tokens=add).input_ids


def check_context(tokenizer, model, prompts: list[str], labels: list[str], max_new_tokens: int) -> list[list[int]]:
    """Tokenize prompts; a prompt + max_new_tokens beyond the context is a user error."""
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    limit = context_length(model)
    if limit is not None:
        for toks, label in zip(ids, labels):
            if len(toks) + max_new_tokens > limit:
                raise SmlearnError(
                    f"prompt longer than the model's context: {label} has {len(toks)} prompt tokens + "
                    f"{max_new_tokens} new tokens > {limit}; lower prompts.n_shots or max_new_tokens")
    return ids


@torch.no_grad()
def generate_batch(model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams) -> list[str]:
    """Generate one completion per prompt for a single batch (inputs left-padded)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attention[i, width - len(p):] = 1
    kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=pad, do_sample=params.do_sample)
    if params.do_sample:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
    if params.stop_strings:
        kwargs.update(stop_strings=list(params.stop_strings), tokenizer=tokenizer)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [truncate_at_stop(t, params.stop_strings) for t in texts]


def generate_texts(model, tokenizer, prompts: list[str], params: SamplingParams, batch_size: int = 16,
                   labels: list[str] | None = None, desc: str = "generate", progress: bool = True) -> list[str]:
    """One completion per prompt, in the order given; batches are formed by prompt length."""
    if not prompts:
        return []
    labels = labels or [f"prompt {i}" for i in range(len(prompts))]
    ids = check_context(tokenizer, model, prompts, labels, params.max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    results: list[str | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        texts = generate_batch(model, tokenizer, [ids[i] for i in batch], params)
        for i, t in zip(batch, texts):
            results[i] = t
        bar.update(len(batch))
    bar.close()
    return results  # type: ignore[return-value]
