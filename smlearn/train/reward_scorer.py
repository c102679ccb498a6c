"""Reward-model scores: a trained RM's scalar for each (prompt, completion) (RM evaluation, RL rewards).

The text scored is exactly what TRL's `RewardTrainer` trained on:
`prompt + completion + eos_token` (EOS added when missing), tokenized with the
tokenizer's default special tokens. Batches are right-padded, as in training:
a causal model's hidden states at real tokens do not depend on pads to their
right, and the sequence-classification head reads the value at the rightmost
non-pad token, so a text gets the same score whatever batch it is in. Texts
longer than the model's context are truncated from the left (the end of a
completion, where the value is read, is kept).

Pooling (`rm.pooling`, recorded in the saved model's config.json as
`smlearn_reward_pooling`): "last" is the above, TRL's and every
`*ForSequenceClassification` model's own; "mean" makes the score the mean of the
head's per-token outputs over the completion's tokens (its EOS included, the
prompt's left out). A rationale that slips in one step then moves the score
where it slips, instead of only through the last token's hidden state. In the
lab, over five seeds and three head seeds each, it ranks as well as "last" on
the mean (held-out 0.797 against 0.791): far better on seed 0, worse on seeds
9, 11 and 12, with its level order holding less often (docs/results.md, "RM
pooling"); so "last" stays the default. Loaded with plain transformers, a "mean" model
scores with the last token: score with `RewardScorer`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import SmlearnError
from ..models import _check_model_path, context_length, load_tokenizer, resolve_device, resolve_dtype


def load_reward_backbone(path: str | Path, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                         revision: str | None = None):
    """`AutoModelForSequenceClassification` with one output (a new head on a causal LM), from safetensors only."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    _check_model_path(str(path))
    # Loading a causal LM checkpoint adds a fresh `score` head and skips `lm_head`: transformers warns about
    # both, which is expected here, so its warnings are silenced for this call only.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            revision=revision)
    except OSError as e:
        raise SmlearnError(f"cannot load reward model from '{path}': {str(e).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


POOLING_KEY = "smlearn_reward_pooling"      # the saved model's config.json records its pooling under this key


def reward_pooling(model) -> str:
    """How `model` turns per-token head outputs into one score: "last" (the default) or "mean"."""
    return getattr(model.config, POOLING_KEY, None) or "last"


def _score_head(model) -> torch.nn.Module:
    """The scalar head of a sequence-classification model (under PEFT: its modules_to_save wrapper)."""
    modules = dict(model.named_modules())
    names = [n for n in modules if n == "score" or n.endswith(".score")]
    if not names:
        raise SmlearnError(f"{type(model).__name__} has no `score` head: rm.pooling=mean needs a "
                           "*ForSequenceClassification model of the Llama family (llama, mistral, qwen2, ...)")
    return modules[min(names, key=len)]


@contextlib.contextmanager
def mean_pooled(model, completion_mask: torch.Tensor):
    """Within the block the model's sequence score is the mean of its head's per-token outputs over
    `completion_mask` [B, T] (True at the tokens to average). The head's output is replaced by that mean at
    every position, so the model's own last-token read (and TRL's loss on it) returns it, gradients included."""
    weights = completion_mask.float()[..., None]                          # [B, T, 1]
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)

    def hook(module, args, out):
        w = weights.to(device=out.device, dtype=out.dtype)
        return ((out * w).sum(dim=1, keepdim=True) / count.to(out.device, out.dtype)).expand_as(out)

    handle = _score_head(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def scored_text(tokenizer, prompt: str, completion: str) -> str:
    """The text a reward model reads, as TRL's RewardTrainer builds it: prompt + completion + EOS (added when
    missing)."""
    eos = tokenizer.eos_token or ""
    text = prompt + completion
    return text + eos if eos and not text.endswith(eos) else text


def completion_start(tokenizer, prompt: str, ids: list[int]) -> int:
    """Where the completion's tokens start in `ids` (prompt + completion tokenized as one text): after the
    tokens it shares with the prompt tokenized alone (a token merged across the join counts as completion)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    n = 0
    while n < min(len(prompt_ids), len(ids)) and prompt_ids[n] == ids[n]:
        n += 1
    return n


def completion_mask(starts: list[int], attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] True at the real (non-pad) tokens from each row's completion start on (right-padded rows)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    start = torch.tensor(starts, device=attention_mask.device)[:, None]
    return attention_mask.bool() & (positions[None, :] >= start)


class RewardScorer:
    """Scalar rewards for (prompt, completion) pairs from a `*ForSequenceClassification` model with num_labels=1."""

    def __init__(self, model, tokenizer, max_length: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:
            text_config.pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = text_config.pad_token_id
        limits = [n for n in (max_length, context_length(model)) if n]
        self.max_length = min(limits) if limits else None
        self.pooling = reward_pooling(model)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
             trust_remote_code: bool = False, max_length: int | None = None) -> "RewardScorer":
        """`dtype="auto"`: bf16 on a bf16 GPU, fp32 on CPU — the precision `train_rm` evaluated and saved in
        (with the default `model.dtype: auto`), so scores match rm/metrics.json's mean/std."""
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        torch_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
        tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        model = load_reward_backbone(path, dtype=torch_dtype, trust_remote_code=trust_remote_code).to(dev)
        return cls(model, tokenizer, max_length=max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompt: str, completion: str) -> tuple[list[int], int]:
        """The token ids scored, and where the completion starts in them (mean pooling reads from there)."""
        ids = self.tokenizer(scored_text(self.tokenizer, prompt, completion))["input_ids"]
        start = completion_start(self.tokenizer, prompt, ids) if self.pooling == "mean" else 0
        if self.max_length is not None and len(ids) > self.max_length:
            cut = len(ids) - self.max_length
            ids, start = ids[cut:], max(0, start - cut)
        return ids, start

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], batch_size: int = 16) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        # Similar lengths together: less padding; results are put back in input order.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            for i, value in zip(idx, self._forward([encoded[i] for i in idx])):
                scores[i] = value
        return scores

    def _forward(self, encoded: list[tuple[list[int], int]]) -> list[float]:
        batch = [ids for ids, _ in encoded]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        attention_mask = attention_mask.to(self.device)
        pooling = (mean_pooled(self.model, completion_mask([s for _, s in encoded], attention_mask))
                   if self.pooling == "mean" else contextlib.nullcontext())
        with pooling:
            out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask, use_cache=False)
        return out.logits[:, 0].float().cpu().tolist()
