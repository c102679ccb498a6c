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
        # Which keys each new query sees, [B, 1 (kv heads), 1 (query group), q, length + q], for the forward
        # in progress (built once per forward in `begin`, read by every layer).
        self.mask: torch.Tensor | None = None

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
        self.mask = keys_ok.view(self.batch, 1, 1, -1, total).expand(self.batch, 1, 1, q, total)
        self._q = q

    def end(self) -> None:
        self.length += self._q
        self._q, self.mask = 0, None

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
            # Uninitialised is fine: only columns [0, end) are ever read, and each was written first.
            self.keys[layer] = torch.empty(shape, dtype=key.dtype, device=key.device)
            self.values[layer] = torch.empty(shape, dtype=value.dtype, device=value.device)
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length:end] = key
        self.values[layer][:, :, self.length:end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                      scaling: float | None = None, dropout: float = 0.0, smlearn_kv: SharedPrefixKV | None = None,
                      **kwargs):
    """Attention of the new tokens over [shared prefix | own row]: the maths of transformers' eager
    attention (inference only: no dropout), with the softmax split over the two parts.

    query [B, heads, q, d]; key/value [B, kv_heads, q, d] (this forward's tokens, RoPE applied).
    Returns ([B, q, heads, d], None) like the other attention functions.
    """
    if smlearn_kv is None:
        raise RuntimeError(f"attention implementation '{IMPLEMENTATION}' needs the smlearn_kv state")
    state = smlearn_kv
    b, heads, q, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads      # grouped-query attention: head h uses KV head h // groups
    rows = groups * q               # query rows per (batch row, KV head)
    row_k, row_v = state.write(module.layer_idx, key, value)
    # Scale the queries, not the (larger) scores; the same numbers when the scale is a power of two.
    qg = (query * (scaling if scaling is not None else d ** -0.5)).reshape(b, kv_heads, rows, d)

    # Own row: [B, kvh, rows, L]; masked keys (holes, the future) get finfo.min rather than -inf, so a
    # query with no visible key at all (a hole, without prefix) gets finite garbage that nothing
    # reads instead of NaNs that would reach the other rows through the value products.
    row_s = torch.matmul(qg, row_k.transpose(-1, -2)).float()
    row_s.view(b, kv_heads, groups, q, -1).masked_fill_(~state.mask, torch.finfo(row_s.dtype).min)
    top = row_s.amax(dim=-1)                                            # [B, kvh, rows]

    prefix = state.prefix[module.layer_idx] if state.prefix else None
    if prefix is not None and prefix[0].shape[1] == 0:
        prefix = None
    if prefix is not None:
        # The prefix is the same for every row: all rows and query heads of one KV head against its one
        # copy is a single matmul, [kvh, B*rows, P], kept in that layout (no transposed copy of scores).
        qp = qg.transpose(0, 1).reshape(kv_heads, b * rows, d)
        pre_s = torch.matmul(qp, prefix[0].transpose(-1, -2)).float()
        top = torch.maximum(top, pre_s.amax(dim=-1).view(kv_heads, b, rows).transpose(0, 1))

    # Softmax over [prefix | row] without concatenating them: shared max, exponentials, one denominator.
    row_e = row_s.sub_(top[..., None]).exp_()
    denom = row_e.sum(dim=-1)
    out = torch.matmul(row_e.to(value.dtype), row_v).float()            # [B, kvh, rows, d]
    if prefix is not None:
        pre_e = pre_s.sub_(top.transpose(0, 1).reshape(kv_heads, b * rows, 1)).exp_()
        denom = denom + pre_e.sum(dim=-1).view(kv_heads, b, rows).transpose(0, 1)
        out = out + torch.matmul(pre_e.to(value.dtype), prefix[1]).float().view(kv_heads, b, rows, d).transpose(0, 1)
    out = (out / denom[..., None]).to(query.dtype)
    return out.reshape(b, heads, q, d).transpose(1, 2).contiguous(), None


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
