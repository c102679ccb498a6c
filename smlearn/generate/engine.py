"""Batched text generation with any causal LM.

`generate_texts` sorts requests by prompt length (so a batch pads little),
generates one completion per prompt and cuts it at the stop strings. A prompt
that does not fit the model's context is a clear error. Two engines do the
generating, with the same results:

- the **fast engine** (Llama-family models: llama, mistral, qwen2, qwen3) is
  a plain decode loop of our own over the model's forward. The few-shot block
  that all prompts of a stage share is run through the model once, and its
  keys/values are shared by every row of every batch (kvcache.py); each row
  only runs its own suffix (question, hint, ...). Rows leave the batch as
  soon as they finish (EOS or a stop string), and the batch ends when all
  rows have. Greedy output is the token-for-token output of Hugging Face
  `generate` run on each prompt alone (tests/test_engine.py checks it);
  up to float rounding, as with any change of batch shape.
- the **Hugging Face engine** (`model.generate`, left-padded batches) for every
  other model, or where the model's generation config asks for something the
  fast loop does not do (beam search, n-gram blocking, ...): see
  `fast_path_blockers`.

Sampling (temperature, top_p; top_k off) follows the global torch RNG: the
same `torch.manual_seed` before a call gives the same completions.

GPU notes: the fast engine runs on any device. Its per-row KV buffers are
preallocated at a fixed capacity per batch, which is what CUDA graphs /
`torch.compile(mode="reduce-overhead")` need; `EngineOptions.compile` is the
hook for that and is untested (see docs/performance.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import SmlearnError
from ..models import context_length
from ..prompts import truncate_at_stop
from .kvcache import SharedPrefixKV, shared_prefix_attention

# Model types whose attention goes through transformers' AttentionInterface with RoPE positions taken
# from `position_ids`: the fast engine's requirements. Others use Hugging Face `generate`.
FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    stop_strings: tuple[str, ...] = ()
    # False: ignore the model's generation_config processors (repetition_penalty, no_repeat_ngram_size, ...)
    # and sample from the plain softmax(logits / temperature) (top_p if set). RL rollouts need this: PPO's
    # log-probs and KL are computed for that distribution, so the rollouts must be drawn from it.
    use_generation_config: bool = True


@dataclass
class EngineOptions:
    """How to generate (results do not depend on it, up to float rounding).

    engine: "auto" (fast engine where supported, else Hugging Face), "fast" (an error where
    unsupported) or "hf" (always `model.generate`).
    share_prefix: run the prompts' common token prefix once and share its KV (fast engine).
    compile: wrap the model's forward in `torch.compile` for the decode loop (GPU hook; untested).
    """
    engine: str = "auto"
    share_prefix: bool = True
    compile: bool = False


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


# ---------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------

class StopChecker:
    """Has a row's generated text reached a stop string? Looks only at the decoded tail.

    A stop string completed by the newest token lies within the last len(stop) tokens (every token
    decodes to at least one character), so decoding a short tail per step suffices; the full text
    is cut by `truncate_at_stop` at the end anyway, so a stop noticed a step late costs nothing but
    that step, and no tail can show a stop string the full text lacks.
    """

    def __init__(self, tokenizer, stop_strings):
        self.tokenizer = tokenizer
        self.stops = [s for s in stop_strings if s]
        self.window = max((len(s) for s in self.stops), default=0) + 2

    def __bool__(self) -> bool:
        return bool(self.stops)

    def hit(self, tokens: list[int]) -> bool:
        text = self.tokenizer.decode(tokens[-self.window:], skip_special_tokens=True)
        return any(s in text for s in self.stops)


def _eos_ids(model, tokenizer) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


# ---------------------------------------------------------------------------
# Hugging Face engine
# ---------------------------------------------------------------------------

def _stop_criteria(tokenizer, stop_strings, prompt_width: int):
    from transformers import StoppingCriteria, StoppingCriteriaList

    checker = StopChecker(tokenizer, stop_strings)

    class _StopOnStrings(StoppingCriteria):
        # Cheaper than `generate(stop_strings=...)`: a tail decode per unfinished row, no token tables;
        # and it looks at the generated text only, like `truncate_at_stop`.
        def __init__(self):
            self.done: set[int] = set()

        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids[:, prompt_width:].tolist()
            for i, toks in enumerate(generated):
                if i not in self.done and checker.hit(toks):
                    self.done.add(i)
            flags = torch.zeros(len(generated), dtype=torch.bool, device=input_ids.device)
            if self.done:
                flags[list(self.done)] = True
            return flags

    return StoppingCriteriaList([_StopOnStrings()])


def _generate_hf(model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[int]]:
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
        kwargs.update(stopping_criteria=_stop_criteria(tokenizer, params.stop_strings, width))
    saved = model.generation_config
    if not params.use_generation_config:
        # `generate` fills whatever a passed config leaves unset from model.generation_config, so the model's
        # own processors are switched off by swapping in a config that has none, for this call only.
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig(eos_token_id=sorted(_eos_ids(model, tokenizer)) or None,
                                                   bos_token_id=getattr(saved, "bos_token_id", None),
                                                   pad_token_id=pad)
    try:
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
    finally:
        model.generation_config = saved
    return out[:, width:].tolist()


# ---------------------------------------------------------------------------
# Fast engine
# ---------------------------------------------------------------------------

# Generation-config fields that add a logits processor or change the search; the fast loop does
# none of them, so a model that sets one is generated by Hugging Face `generate` instead.
# (repetition_penalty is done by the fast loop; temperature/top_p/top_k come from SamplingParams.)
_BLOCKING_FIELDS = {
    "num_beams": (None, 1), "num_beam_groups": (None, 1), "penalty_alpha": (None,), "dola_layers": (None,),
    "constraints": (None,), "force_words_ids": (None,), "diversity_penalty": (None, 0.0),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "encoder_repetition_penalty": (None, 1.0),
    "bad_words_ids": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "sequence_bias": (None,), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "token_healing": (None, False), "max_time": (None,),
}
_SAMPLING_BLOCKING_FIELDS = {"min_p": (None, 0.0), "top_h": (None,), "typical_p": (None, 1.0),
                             "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0)}


def fast_path_blockers(model, params: SamplingParams, max_total_tokens: int | None = None) -> list[str]:
    """Why the fast engine cannot generate for this model (empty list: it can)."""
    reasons = []
    config = model.config
    if getattr(config, "model_type", None) not in FAST_MODEL_TYPES:
        reasons.append(f"model_type {getattr(config, 'model_type', None)!r} not in {FAST_MODEL_TYPES}")
    if getattr(config, "is_encoder_decoder", False):
        reasons.append("encoder-decoder model")
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if any(t != "full_attention" for t in layer_types) or (getattr(config, "use_sliding_window", False)):
        if window is None or max_total_tokens is None or max_total_tokens > window:
            reasons.append("sliding-window attention")
    elif window is not None and (max_total_tokens is None or max_total_tokens > window):
        reasons.append(f"sliding_window {window} shorter than prompt + new tokens")
    gen = getattr(model, "generation_config", None)
    if gen is not None and params.use_generation_config:
        fields = dict(_BLOCKING_FIELDS, **(_SAMPLING_BLOCKING_FIELDS if params.do_sample else {}))
        for name, neutral in fields.items():
            value = getattr(gen, name, None)
            if value not in neutral:
                reasons.append(f"generation_config.{name}={value!r}")
    return reasons


def _forward(model, state: SharedPrefixKV, tokens: torch.Tensor, positions: torch.Tensor,
             valid: torch.Tensor) -> torch.Tensor:
    """Run `tokens` [B, q] through the model into `state`; logits of the last column, float32 [B, V]."""
    state.begin(valid)
    out = model(input_ids=tokens, position_ids=positions, use_cache=False, logits_to_keep=1, smlearn_kv=state)
    state.end()
    return out.logits[:, -1, :].float()


def _forward_fn(model, options: EngineOptions):
    if not options.compile:
        return model
    # GPU hook (untested): shapes change with the batch, so dynamic shapes; the KV buffers do not move.
    compiled = getattr(model, "_smlearn_compiled_forward", None)
    if compiled is None:
        compiled = torch.compile(model, dynamic=True)
        model._smlearn_compiled_forward = compiled
    return compiled


class PrefixKV:
    """The keys/values of a token prefix (batch 1), per layer [kv_heads, P, d]; extendable."""

    def __init__(self, tokens: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]] | None):
        self.tokens = tokens
        self.kv = kv

    @classmethod
    def empty(cls) -> "PrefixKV":
        return cls([], None)

    def extend(self, model, tokens: list[int]) -> "PrefixKV":
        """A new PrefixKV for `tokens`, which start with self.tokens; only the new tokens are run."""
        assert tokens[:len(self.tokens)] == self.tokens
        extra = tokens[len(self.tokens):]
        if not extra:
            return self
        device = next(model.parameters()).device
        state = SharedPrefixKV(self.kv, 1, len(extra), device)
        start = len(self.tokens)
        ids = torch.tensor([extra], dtype=torch.long, device=device)
        pos = torch.arange(start, start + len(extra), device=device)[None]
        _forward(model, state, ids, pos, torch.ones_like(ids, dtype=torch.bool))
        kv = []
        for layer in range(len(state.keys)):
            k, v = state.layer_kv(layer)
            if self.kv is not None:
                k = torch.cat([self.kv[layer][0], k[0]], dim=1)
                v = torch.cat([self.kv[layer][1], v[0]], dim=1)
            else:
                k, v = k[0], v[0]
            kv.append((k.contiguous(), v.contiguous()))
        return PrefixKV(list(tokens), kv)


def common_prefix(seqs: list[list[int]]) -> list[int]:
    """The longest common token prefix, one token short of the shortest sequence (each row must
    keep at least one token of its own: the logits of its last prompt token start its completion)."""
    first = seqs[0]
    n = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return first[:max(n, 0)]


def _next_tokens(logits: torch.Tensor, params: SamplingParams, penalty: float, seen: torch.Tensor | None):
    """Pick each row's next token from float32 logits [B, V], as `generate` would (same processor order)."""
    if seen is not None:
        logits = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
    if not params.do_sample or params.temperature <= 0:
        return logits.argmax(dim=-1)
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_p < 1.0:
        # Hugging Face's TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p, keep >= 1 token.
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - params.top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(1)


def _generate_fast(model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams,
                   prefix: PrefixKV, options: EngineOptions) -> list[list[int]]:
    """Generated token ids per prompt; every prompt starts with prefix.tokens (and is longer)."""
    device = next(model.parameters()).device
    forward_model = _forward_fn(model, options)
    n, p_len = len(prompt_ids), len(prefix.tokens)
    suffixes = [p[p_len:] for p in prompt_ids]
    width = max(len(s) for s in suffixes)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # Suffixes right-aligned: [holes | suffix]; positions continue the prefix's, holes are masked.
    tokens = torch.full((n, width), pad, dtype=torch.long)
    valid = torch.zeros((n, width), dtype=torch.bool)
    positions = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(suffixes):
        tokens[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        valid[i, width - len(s):] = True
        positions[i, width - len(s):] = torch.arange(p_len, p_len + len(s))
    next_pos = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=device)

    penalty = float(getattr(model.generation_config, "repetition_penalty", None) or 1.0) \
        if params.use_generation_config else 1.0
    seen = None
    state = SharedPrefixKV(prefix.kv, n, width + params.max_new_tokens, device)
    logits = _forward(forward_model, state, tokens.to(device), positions.to(device), valid.to(device))
    if penalty != 1.0:
        # Tokens already in prompt or completion (Hugging Face's RepetitionPenaltyLogitsProcessor).
        vocab = logits.shape[-1]
        seen = torch.zeros((n, vocab + 1), dtype=torch.bool, device=device)
        for i, p in enumerate(prompt_ids):
            seen[i, torch.tensor(p, device=device).clamp(max=vocab)] = True
        seen = seen[:, :vocab]

    eos = _eos_ids(model, tokenizer)
    stopper = StopChecker(tokenizer, params.stop_strings)
    out: list[list[int]] = [[] for _ in range(n)]
    alive = list(range(n))          # original index of each row still in the batch
    for step in range(params.max_new_tokens):
        nxt = _next_tokens(logits, params, penalty, seen)
        keep = []
        for row, tok in enumerate(nxt.tolist()):
            i = alive[row]
            out[i].append(tok)
            if not (tok in eos or (stopper and stopper.hit(out[i]))):
                keep.append(row)
        if not keep or step == params.max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            # Finished rows leave the batch: later steps compute only the rows still generating.
            rows = torch.tensor(keep, dtype=torch.long, device=device)
            state.select(rows)
            nxt, next_pos = nxt[rows], next_pos[rows]
            seen = None if seen is None else seen[rows]
            alive = [alive[r] for r in keep]
        if seen is not None:
            seen[torch.arange(len(alive), device=device), nxt] = True
        ones = torch.ones((len(alive), 1), dtype=torch.bool, device=device)
        logits = _forward(forward_model, state, nxt[:, None], next_pos[:, None], ones)
        next_pos = next_pos + 1
    return out


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def _use_fast(model, params: SamplingParams, prompt_ids: list[list[int]], options: EngineOptions) -> bool:
    if options.engine == "hf":
        return False
    longest = max(len(p) for p in prompt_ids) + params.max_new_tokens
    reasons = fast_path_blockers(model, params, longest)
    if reasons and options.engine == "fast":
        raise SmlearnError("the fast generation engine does not support this model: " + "; ".join(reasons))
    if options.engine not in ("auto", "fast"):
        raise SmlearnError(f"unknown generation engine '{options.engine}' (use auto, fast or hf)")
    return not reasons


def _unwrap(model):
    """A PEFT (LoRA) model generates through the transformers model it wraps: its LoRA layers stay active."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "disable_adapter") else model


def _decode(tokenizer, generated: list[list[int]], params: SamplingParams) -> list[str]:
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [truncate_at_stop(t, params.stop_strings) for t in texts]


@torch.no_grad()
def generate_ids(model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams,
                 options: EngineOptions | None = None, prefix: PrefixKV | None = None) -> list[list[int]]:
    """The generated token ids of each prompt, one batch, as sampled: up to and including the EOS token or
    the token that completed a stop string (the fast engine stops there; Hugging Face's may run a little past
    and pad, which the caller cuts). RL rollouts use the ids, which their log-probs are computed on."""
    options = options or EngineOptions()
    model = _unwrap(model)
    if not _use_fast(model, params, prompt_ids, options):
        return _generate_hf(model, tokenizer, prompt_ids, params)
    with shared_prefix_attention(model):
        prefix = prefix or PrefixKV.empty()
        if options.share_prefix:
            prefix = prefix.extend(model, common_prefix(prompt_ids))
        return _generate_fast(model, tokenizer, prompt_ids, params, prefix, options)


def generate_batch(model, tokenizer, prompt_ids: list[list[int]], params: SamplingParams,
                   options: EngineOptions | None = None, prefix: PrefixKV | None = None) -> list[str]:
    """Generate one completion per prompt for a single batch, decoded and cut at the stop strings."""
    return _decode(tokenizer, generate_ids(model, tokenizer, prompt_ids, params, options, prefix), params)


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], params: SamplingParams, batch_size: int = 16,
                   labels: list[str] | None = None, desc: str = "generate", progress: bool = True,
                   options: EngineOptions | None = None, shard: tuple[int, int] | None = None) -> list[str]:
    """One completion per prompt, in the order given; batches are formed by prompt length.

    shard=(rank, n): only batches b with b mod n == rank are generated (the others' entries are None): the
    batches, and the prefix shared by all prompts, are those of the whole call, so n processes together
    produce what one does (smlearn.dist.merge_shards puts the pieces together)."""
    if not prompts:
        return []
    options = options or EngineOptions()
    model = _unwrap(model)
    labels = labels or [f"prompt {i}" for i in range(len(prompts))]
    ids = check_context(tokenizer, model, prompts, labels, params.max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    results: list[str | None] = [None] * len(prompts)
    fast = _use_fast(model, params, ids, options)
    # The prefix all prompts share (the few-shot block) is run once for the whole call; each batch
    # extends it with whatever more its own prompts share.
    prefix = None
    if fast and options.share_prefix:
        with shared_prefix_attention(model):
            prefix = PrefixKV.empty().extend(model, common_prefix(ids))
    starts = list(range(0, len(order), batch_size))
    if shard is not None:
        starts = [s for b, s in enumerate(starts) if b % shard[1] == shard[0]]
    bar = tqdm(total=sum(len(order[s:s + batch_size]) for s in starts), desc=desc, disable=not progress, leave=False)
    for start in starts:
        batch = order[start:start + batch_size]
        texts = generate_batch(model, tokenizer, [ids[i] for i in batch], params, options, prefix)
        for i, t in zip(batch, texts):
            results[i] = t
        bar.update(len(batch))
    bar.close()
    return results  # type: ignore[return-value]
