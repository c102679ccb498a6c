"""Pretraining a tiny causal LM from scratch on a text corpus (the reasoning lab's base model).

Documents are joined with EOS into one token stream and the model is trained
on windows of it (next-token prediction), with AdamW and a cosine schedule.
Windows start at a document's first token (`window_start="document"`), so
every answer token sees its whole question; `"random"` starts anywhere, the
usual LM recipe. With `loss_on="answer"` only the tokens after each
document's "\nA:" (the worked solution and its EOS) are trained on: the
questions are random draws (names, numbers) nothing can predict. The question
is then tokenized on its own, exactly as the pipeline's prompt "Q: ...\nA:"
is. (Measured in docs/results.md: neither change alone made the lab model copy
the question; copy drills in the corpus did.) Small and plain on purpose: the
lab's base model must be built offline, in minutes, on a CPU.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..prompts import ANSWER_MARK

WINDOW_STARTS = ("document", "random")
LOSS_ON = ("answer", "all")


@dataclass
class PretrainConfig:
    """How the base model is pretrained; the lab's settings hold one (`lab.pretrain.*`), defaults included."""
    steps: int = 1500
    batch_size: int = 16               # windows per step
    seq_len: int = 256                 # tokens per window
    learning_rate: float = 3e-3        # peak; linear warm-up, then cosine decay to a tenth
    warmup_steps: int = 20
    weight_decay: float = 0.01
    window_start: str = "document"     # "document" | "random"
    loss_on: str = "answer"            # "answer" (tokens after "\nA:") | "all"

    def validate(self, prefix: str = "") -> "PretrainConfig":
        """Errors name the field as the user wrote it (`prefix` e.g. "lab.pretrain.")."""
        for name, allowed in (("window_start", WINDOW_STARTS), ("loss_on", LOSS_ON)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{prefix}{name}: must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}: must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{prefix}{name}: must be >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"{prefix}learning_rate: must be > 0, got {self.learning_rate!r}")
        return self


def token_stream(texts: list[str], tokenizer, seed: int = 0,
                 loss_on: str = "all") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shuffled documents joined by EOS: (token ids, labels, offset where each document starts).

    labels equal the ids, except that with loss_on="answer" each document's
    prompt (up to and including "\nA:") is -100, i.e. not trained on.
    """
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    ids: list[int] = []
    labels: list[int] = []
    starts: list[int] = []
    for t in texts:
        starts.append(len(ids))
        cut = t.find(ANSWER_MARK) if loss_on == "answer" else -1
        # loss_on="all" tokenizes each document whole, as plain LM pretraining does.
        prompt, answer = (t[:cut + len(ANSWER_MARK)], t[cut + len(ANSWER_MARK):]) if cut >= 0 else ("", t)
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []
        answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids += prompt_ids + answer_ids
        labels += ([-100] * len(prompt_ids) if loss_on == "answer" else prompt_ids) + answer_ids
    return (torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long),
            torch.tensor(starts, dtype=torch.long))


def _lr(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model, tokenizer, texts: list[str], cfg: PretrainConfig, seed: int = 0,
             progress: bool = True) -> list[float]:
    """Train `model` in place on `texts` (document order and windows drawn with `seed`); returns the loss per step."""
    torch.manual_seed(seed)
    cfg.validate()
    stream, label_stream, doc_starts = token_stream(texts, tokenizer, seed, cfg.loss_on)
    seq_len = min(cfg.seq_len, len(stream) - 1)
    doc_starts = doc_starts[doc_starts < len(stream) - seq_len - 1]
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    for step in bar:
        if cfg.window_start == "document":
            starts = doc_starts[torch.randint(0, len(doc_starts), (cfg.batch_size,), generator=gen)]
        else:
            starts = torch.randint(0, len(stream) - seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + seq_len] for s in starts]).to(device)
        labels = torch.stack([label_stream[s:s + seq_len] for s in starts]).to(device)
        if not (labels[:, 1:] != -100).any():
            continue        # only prompt tokens in these windows (random starts): nothing to learn
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        out = model(input_ids=batch, labels=labels)
        # HF shifts labels internally: logits at t predict token t+1 of the same window.
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
