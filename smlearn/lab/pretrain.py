"""Pretraining a tiny causal LM from scratch on a text corpus (the reasoning lab's base model).

Documents are joined with EOS into one token stream and the model is trained
on random windows of it (next-token prediction), with AdamW and a cosine
schedule. Small and plain on purpose: the lab's base model must be built
offline, in minutes, on a CPU.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class PretrainConfig:
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 256
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    seed: int = 0


def token_stream(texts: list[str], tokenizer, seed: int = 0) -> torch.Tensor:
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def _lr(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, tokenizer, texts: list[str], cfg: PretrainConfig, progress: bool = True) -> list[float]:
    """Train `model` in place on `texts`; returns the loss per step."""
    torch.manual_seed(cfg.seed)
    stream = token_stream(texts, tokenizer, cfg.seed)
    seq_len = min(cfg.seq_len, len(stream) - 1)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    for step in bar:
        starts = torch.randint(0, len(stream) - seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + seq_len + 1] for s in starts]).to(device)
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone())
        # HF shifts labels internally: logits at t predict token t+1 of the same window.
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
