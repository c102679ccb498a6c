"""KV cache and attention for a batch that continues one shared prompt prefix.

Every prompt of a stage starts with the same few-shot block, so the engine
computes that block's keys/values once (batch 1) and stores them here as the
*prefix*; each row of the batch then only owns the KV of its own *suffix*
(question, hint, ...) and of the tokens it generates, in a preallocated
buffer written in place.

    prefix (shared, [kv_heads, P, d])   rows ([B, kv_heads, capacity, d], per row)
    | few-shot exemplars ........... |  | holes | suffix | generated ...    |

Suffixes have different lengths; they are right-aligned in the row buffer so
that all rows take their next token in the same column, and the holes in
front of short suffixes are masked out (`valid`). Positions (RoPE) are given
explicitly by the engine, so a hole does not shift the positions after it.

Why not Hugging Face's `DynamicCache`: it `torch.cat`s the whole cache at
every step (on CPU that copy cost as much as the rest of the decode step) and
holds one copy of the prefix per row; here the prefix is read once per step
for the whole batch (one matrix product per KV head instead of one per row)
and nothing is copied while decoding.

The attention function is registered with transformers' `AttentionInterface`
and switched on only inside `shared_prefix_attention(model)`; the per-batch
state travels to it as the `smlearn_kv` keyword of the model's forward.
Masks are built here, not by transformers (its mask builder does not know
this implementation and returns None for it).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

IMPLEMENTATION = "smlearn_shared_prefix"


class SharedPrefixKV:
    """Per-layer keys/values of one batch: a shared prefix plus per-row buffers.

    `prefix`: one (keys, values) pair per layer, each [kv_heads, P, head_dim]
    (P may be 0), shared by every row. Rows are written from column 0 of
    buffers of `capacity` columns; `length` columns are filled.
    """

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None, batch: int, capacity: int,
                 device: torch.device):
        self.prefix = prefix
        self.batch = batch
        self.capacity = capacity
        self.device = device
        self.length = 0
        self.keys: dict[int, torch.Tensor] = {}     # layer -> [B, kv_heads, capacity, d], allocated on first write
        self.values: dict[int, torch.Tensor] = {}
        self.valid = torch.zeros((batch, capacity), dtype=torch.bool, device=device)
        self._q = 0
        self._mask: torch.Tensor | None = None      # [B, 1, 1, q, length + q] for the forward in progress

    # -- the engine's side ---------------------------------------------------
    def begin(self, new_valid: torch.Tensor) -> None:
        """Before a forward over q new columns: mark which of them are real tokens, build the mask."""
        q = new_valid.shape[1]
        if self.length + q > self.capacity:
            raise RuntimeError(f"KV buffer full: {self.length} + {q} > {self.capacity}")
        self.valid[:, self.length:self.length + q] = new_valid
        total = self.length + q
        keys_ok = self.valid[:, None, :total]                                   # [B, 1, total]
        if q > 1:  # causal among the new columns; every earlier column is in the past
            causal = torch.ones((q, total), dtype=torch.bool, device=self.device).tril(self.length)
            keys_ok = keys_ok & causal
        # [B, 1 (kv heads), 1 (query group), q, total]: broadcasts over heads
        self._mask = keys_ok.view(self.batch, 1, 1, -1, total).expand(self.batch, 1, 1, q, total)
        self._q = q

    def end(self) -> None:
        self.length += self._q
        self._q, self._mask = 0, None

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (finished rows leave the batch; only the small per-row part is copied)."""
        self.keys = {i: k.index_select(0, rows) for i, k in self.keys.items()}
        self.values = {i: v.index_select(0, rows) for i, v in self.values.items()}
        self.valid = self.valid.index_select(0, rows)
        self.batch = int(rows.numel())

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled row keys/values of a layer, [B, kv_heads, length, d] (for building a prefix)."""
        return self.keys[layer][:, :, :self.length], self.values[layer][:, :, :self.length]

    # -- the attention function's side ----------------------------------------
    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.keys:
            shape = (self.batch, key.shape[1], self.capacity, key.shape[3])
            self.keys[layer] = torch.zeros(shape, dtype=key.dtype, device=key.device)
            self.values[layer] = torch.zeros(shape, dtype=value.dtype, device=value.device)
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length:end] = key
        self.values[layer][:, :, self.length:end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                      scaling: float | None = None, dropout: float = 0.0, smlearn_kv: SharedPrefixKV | None = None,
                      **kwargs):
    """Attention of the new tokens over [shared prefix | own row], same maths as transformers' eager attention.

    query [B, heads, q, d]; key/value [B, kv_heads, q, d] (this forward's tokens, RoPE applied).
    Returns ([B, q, heads, d], None) like the other attention functions.
    """
    if smlearn_kv is None:
        raise RuntimeError(f"attention implementation '{IMPLEMENTATION}' needs the smlearn_kv state")
    state = smlearn_kv
    b, heads, q, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads      # grouped-query attention: head h uses KV head h // groups
    scale = scaling if scaling is not None else d ** -0.5
    row_k, row_v = state.write(module.layer_idx, key, value)

    qg = query.reshape(b, kv_heads, groups * q, d)
    scores = [None, torch.matmul(qg, row_k.transpose(-1, -2))]     # [B, kvh, groups*q, L]
    prefix = state.prefix[module.layer_idx] if state.prefix else None
    if prefix is not None and prefix[0].shape[1] > 0:
        # All rows and query heads of one KV head against the one copy of the prefix: a single matmul.
        qp = qg.transpose(0, 1).reshape(kv_heads, b * groups * q, d)
        scores[0] = torch.matmul(qp, prefix[0].transpose(-1, -2)).view(kv_heads, b, groups * q, -1).transpose(0, 1)
    n_prefix = 0 if scores[0] is None else scores[0].shape[-1]

    row_scores = scores[1].view(b, kv_heads, groups, q, -1)
    # finfo.min rather than -inf: a query with no visible key (a hole, without prefix) gets finite garbage
    # that nothing reads, instead of NaNs that would poison the matmul with the values.
    row_scores = row_scores.masked_fill(~state._mask, torch.finfo(row_scores.dtype).min)
    row_scores = row_scores.view(b, kv_heads, groups * q, -1)
    joint = row_scores if n_prefix == 0 else torch.cat([scores[0], row_scores], dim=-1)
    weights = torch.softmax((joint * scale).float(), dim=-1).to(query.dtype)

    out = torch.matmul(weights[..., n_prefix:], row_v)                 # [B, kvh, groups*q, d]
    if n_prefix:
        wp = weights[..., :n_prefix].transpose(0, 1).reshape(kv_heads, b * groups * q, n_prefix)
        out = out + torch.matmul(wp, prefix[1]).view(kv_heads, b, groups * q, d).transpose(0, 1)
    out = out.reshape(b, heads, q, d).transpose(1, 2).contiguous()
    return out, None


_registered = False


@contextmanager
def shared_prefix_attention(model):
    """Route the model's attention through `attention_forward` for the duration of the block."""
    global _registered
    from transformers import AttentionInterface

    if not _registered:
        AttentionInterface.register(IMPLEMENTATION, attention_forward)
        _registered = True
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = before
