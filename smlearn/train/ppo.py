"""PPO for RLHF, in one file (CleanRL style).

TRL 1.x no longer ships a PPO trainer, so this is smlearn's own, written to be
read top to bottom. It follows TRL's old `PPOv2Trainer` and the checklists of
Huang et al., "The N Implementation Details of RLHF with PPO" (ICLR blog track
2024) and "The N+ Implementation Details of RLHF with PPO: A Case Study on
TL;DR Summarization" (2024). Each detail taken from them is marked
`[detail: <name>]` where it is implemented.

One PPO iteration (`PPOTrainer.step`):

1. Rollout (no grad). Sample prompts, sample responses from the policy with
   smlearn's generation engine (the plain temperature softmax, nothing from the
   model's generation_config), left-pad the prompts, truncate each response at
   EOS or a stop string, decode, and score
   (prompt, response) with `reward_fn` (in smlearn: the RM score corrected by
   the gold answer).
2. Per-token statistics (no grad). Log-probabilities of the sampled tokens
   under the policy ("old" logprobs) and the frozen reference policy, values
   V(s_t) from the value model, per-token rewards
       r_t = -beta * KL_t            (every response token)
           + score                   (last response token only),
   then GAE advantages and returns.
3. Optimisation. `ppo_epochs` passes over shuffled minibatches of the rollout:
   clipped policy loss L^CLIP, clipped value loss L^VF, gradient clipping, one
   AdamW step for the policy and one for the value model.

Several processes (`accelerate launch`, smlearn.dist): data parallelism. Every process holds the same
networks; each rolls out, scores and trains on its 1/N of every rollout batch (and of every minibatch),
and the gradients are averaged across processes before each optimiser step, so the networks stay
identical. The logged statistics are the means over all processes.

The policy and the value model are separate networks with separate optimisers;
the value model is an `AutoModelForSequenceClassification`-style model (e.g.
initialised from the reward model, [detail: initialise the value model from
the reward model]) whose `score` head is applied to every token's hidden state.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .. import dist
from ..config import RLStageConfig
from ..errors import ConfigError, SmlearnError

# TRL's fill value for "log-probabilities" at padded response positions: any
# value works because those positions are masked out of every loss and stat.
INVALID_LOGPROB = 1.0


# The config is the run config's `rl` section (RLStageConfig, defined with the other sections): what the
# user writes is what this trainer reads. The stop strings come from the prompt format: a trainer argument.
PPOConfig = RLStageConfig

# reward_fn(prompts, responses, prompt_indices, finished) -> {"reward": [...], optional other keys, e.g.
# "correct", "rm_score"}. finished[i] is False for a response cut at max_new_tokens. "reward" is the episode
# score; every other key is averaged into the step log as "<key>_mean".
RewardFn = Callable[[list[str], list[str], list[int], list[bool]], dict[str, list[float]]]


# ---------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------

def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the entries where `mask` is 1 (over `dim`, or over everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1e-8)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1e-8)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over the masked entries (with Bessel's correction, as TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(x - mean) / std over the masked entries; masked-out entries come back as 0.

    shift_mean=False keeps the mean and only rescales (used for reward whitening,
    where shifting every token's reward would change the optimal policy's length
    incentives).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# ---------------------------------------------------------------------------
# Rewards and advantages
# ---------------------------------------------------------------------------

def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from the sampled token's log-probabilities.

    With log r = log pi_ref(a|s) - log pi(a|s) and a ~ pi (Schulman, "Approximating KL divergence"):
      k1 = -log r                  unbiased, can be negative per sample (the RLHF default)
      k3 = (r - 1) - log r         unbiased, always >= 0, lower variance
    """
    log_ratio = logprobs - ref_logprobs            # log pi - log pi_ref = -log r
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ConfigError(f"ppo.kl_estimator: must be 'k1' or 'k3', got {estimator!r}")


def per_token_rewards(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                      kl_coef: float, estimator: str = "k1") -> tuple[Tensor, Tensor]:
    """[detail: per-token KL penalty] r_t = -beta * KL_t at every response token, plus the
    episode score at the last response token (the EOS / stop token when there is one).

    scores (B,), logprobs/ref_logprobs/mask (B, T). Returns (rewards, kl), both (B, T) and 0 where
    mask is 0.
    """
    maskf = mask.to(logprobs.dtype)
    kl = kl_per_token(logprobs, ref_logprobs, estimator) * maskf
    rewards = -kl_coef * kl
    # Index of the last response token of each row: argmax of the running count of mask ones.
    last = mask.long().cumsum(1).argmax(1)
    has_tokens = maskf.sum(1) > 0
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype) * has_tokens.to(rewards.dtype)
    return rewards, kl


def compute_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016), per row, over response tokens.

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)          V = 0 past the last response token
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V(s_t)                               (the value target, "returns")

    rewards/values/mask: (B, T), mask 1 for response tokens. Rewards and values at masked positions
    are ignored (they never leak into A or R); A and R are 0 there.
    """
    maskf = mask.to(rewards.dtype)
    rewards, values = rewards * maskf, values * maskf
    batch, length = rewards.shape
    last_gae = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    reversed_advantages = []
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * maskf[:, t]
        reversed_advantages.append(last_gae)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = advantages + values
    return advantages, returns


# ---------------------------------------------------------------------------
# Forward passes on query+response
# ---------------------------------------------------------------------------

def position_ids_from(attention_mask: Tensor) -> Tensor:
    """[detail: adjust position indices for padding] with left padding, the first real token of
    every row gets position 0 (HF `generate` does the same, so rollout and training forwards agree)."""
    return (attention_mask.long().cumsum(1) - 1).clamp_min(0)


def response_logprobs(model, input_ids: Tensor, attention_mask: Tensor, context_length: int,
                      temperature: float) -> tuple[Tensor, Tensor]:
    """Log-probabilities (B, T) of the response tokens input_ids[:, context_length:], and the
    temperature-scaled logits (B, T, V) that produced them.

    [detail: scale the logits by the sampling temperature] the responses were sampled from
    softmax(logits / temperature), so the policy being optimised (and the KL to the reference)
    is that distribution: logits are divided by temperature here too, for policy and reference.
    (With top_k/top_p the sampling distribution is further truncated; like TRL, the logprobs use
    the full temperature-scaled distribution.)
    """
    response_length = input_ids.shape[1] - context_length
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from(attention_mask),
                logits_to_keep=response_length + 1, use_cache=False)
    # Logits at position p predict token p+1: keep positions context_length-1 .. end-1.
    logits = out.logits[:, :-1].float() / (temperature + 1e-7)
    labels = input_ids[:, context_length:]
    logprobs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return logprobs, logits


def unwrap_peft(model):
    """The transformers model under a PEFT wrapper (its LoRA layers stay active), or `model` itself."""
    return model.get_base_model() if is_peft(model) else model


def is_peft(model) -> bool:
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "disable_adapter")


def response_values(value_model, input_ids: Tensor, attention_mask: Tensor, context_length: int) -> Tensor:
    """Values V(s_t) (B, T): the value model's `score` head on the hidden state of the token
    before each response token (the state in which that token was chosen). A LoRA value model (PEFT) runs
    its adapters and its trained head copy."""
    model = unwrap_peft(value_model)
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from(attention_mask), use_cache=False).last_hidden_state
    return model.score(hidden[:, context_length - 1:-1]).squeeze(-1).float()


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = logsumexp(z) - sum_i softmax(z)_i z_i, per position."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


# ---------------------------------------------------------------------------
# Response truncation
# ---------------------------------------------------------------------------

def truncate_responses(response_ids: Tensor, tokenizer, eos_token_ids: set[int], stop_strings: list[str],
                       pad_token_id: int) -> tuple[Tensor, Tensor, list[str], Tensor]:
    """[detail: truncate the response after the EOS token] cut each sampled response at its
    first EOS token or first stop string, whichever comes first.

    The kept tokens run up to and including the EOS token, or the token that completes the stop
    string: emitting it is the action that ends the episode, so it is trained on (and carries the
    score) like EOS. Tokens after it become `pad_token_id` and get mask 0. The decoded text for the
    reward excludes the EOS and the stop string.

    Returns (response_ids, mask, texts, finished): finished[i] is True when row i ended with EOS or
    a stop string (False: it ran out of max_new_tokens).
    """
    response_ids = response_ids.clone()
    batch = response_ids.shape[0]
    mask = torch.zeros_like(response_ids, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool, device=response_ids.device)
    texts: list[str] = []

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    def first_stop(text: str) -> int:
        positions = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
        return min(positions) if positions else -1

    for row, ids in enumerate(response_ids.tolist()):
        eos_at = next((j for j, tok in enumerate(ids) if tok in eos_token_ids), None)
        body = ids if eos_at is None else ids[:eos_at]
        text = decode(body)
        keep, done = len(ids) if eos_at is None else eos_at + 1, eos_at is not None
        if stop_strings and first_stop(text) >= 0:
            # Smallest k such that the first k tokens already contain a stop string (binary search:
            # containment is monotone in k).
            lo, hi = 1, len(body)
            while lo < hi:
                mid = (lo + hi) // 2
                if first_stop(decode(body[:mid])) >= 0:
                    hi = mid
                else:
                    lo = mid + 1
            text = decode(body[:lo])
            text = text[:first_stop(text)]
            keep, done = lo, True
        texts.append(text)
        mask[row, :keep] = 1
        finished[row] = done
    response_ids[mask == 0] = pad_token_id
    return response_ids, mask, texts, finished


# ---------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------

class PPOTrainer:
    """PPO on `prompts` against `reward_fn`. `config` is the run's `rl` section (RLStageConfig).

    LoRA: pass a PEFT policy and `ref_policy=None`; the reference is then the policy with its adapters
    disabled (the SFT weights, no second copy). The value model may be a PEFT model too."""

    def __init__(self, config: RLStageConfig, policy, ref_policy, value_model, tokenizer, prompts: list[str],
                 reward_fn: RewardFn, log_path: str | Path | None = None, stop_strings: list[str] | None = None,
                 engine: str = "auto", metric_logger=None):
        """`metric_logger` (smlearn.tracking.MetricLogger or anything with log(metrics, step)) receives every
        step's log, as written to `log_path`."""
        config.validate()
        if not prompts:
            raise SmlearnError("PPO needs at least one prompt")
        if tokenizer.pad_token_id is None:
            raise SmlearnError("PPO needs a tokenizer with a pad token (set tokenizer.pad_token)")
        if any(not s for s in stop_strings or []):
            raise ConfigError("PPO stop strings must be non-empty")
        self.config, self.tokenizer, self.prompts, self.reward_fn = config, tokenizer, list(prompts), reward_fn
        self.policy, self.ref_policy, self.value_model = policy, ref_policy, value_model
        self.stop_strings = list(stop_strings or [])
        self.log_path = Path(log_path) if log_path is not None else None
        self.metric_logger = metric_logger
        self.device = next(policy.parameters()).device
        if ref_policy is None and not is_peft(policy):
            raise SmlearnError("PPO without a reference model needs a LoRA (PEFT) policy: the reference is the "
                               "policy with its adapters disabled")
        if ref_policy is not None:
            self.ref_policy.to(self.device)
        self.value_model.to(self.device)

        # Precision: AdamW on bf16 weights loses every update below half a bf16 step (at lr 1e-6 one step
        # changed ~2 % of a bf16 policy's weights, ~100 % in fp32). Trainable weights are kept in fp32 (master
        # weights) and, when the policy was loaded in bf16, every forward (rollouts included) runs under bf16
        # autocast, as the HF trainers' mixed precision does. Frozen weights (the reference, a LoRA backbone)
        # keep their dtype.
        from .common import upcast_trainable

        loaded = {p.dtype for p in policy.parameters()}
        self.autocast_dtype = torch.bfloat16 if torch.bfloat16 in loaded else None
        upcast_trainable(self.policy)
        upcast_trainable(self.value_model)
        # Several processes start from rank 0's trainable weights (a fresh LoRA init is random).
        dist.broadcast_tensors_([p.data for m in (self.policy, self.value_model) for p in m.parameters()
                                 if p.requires_grad])

        # Seed everything: torch (rollout sampling, init of anything created later) and our own generator
        # for the prompt order and the minibatch shuffles (the same on every process: they draw one global
        # batch and each takes its slice; rollouts are sampled with a seed of their own per process).
        torch.manual_seed(config.seed + 1_000_003 * dist.rank())
        self.rng = torch.Generator().manual_seed(config.seed)
        # Data parallelism: this process's share of every rollout batch and minibatch.
        self.local_rollouts = dist.per_process(config.rollout_batch_size, "rl.rollout_batch_size")
        self.local_mini_batch = dist.per_process(config.mini_batch_size, "rl.mini_batch_size")
        self._order: list[int] = []

        # [detail: disable dropout] dropout would make the "old" logprobs of the rollout differ from
        # the logprobs of the same policy in the first update (ratio != 1 before any step), so every
        # model stays in eval mode, even while training.
        for model in self.models():
            model.eval()
        # The reference (SFT) policy is frozen.
        if self.ref_policy is not None:
            self.ref_policy.requires_grad_(False)

        # [detail: Adam epsilon 1e-5] separate AdamW optimisers for the two networks; no weight decay by
        # default (TRL's PPOv2 and CleanRL use none).
        value_lr = config.value_learning_rate if config.value_learning_rate is not None else config.learning_rate
        self.policy_params = [p for p in policy.parameters() if p.requires_grad]
        self.value_params = [p for p in value_model.parameters() if p.requires_grad]
        self.policy_optimizer = torch.optim.AdamW(self.policy_params, lr=config.learning_rate, eps=1e-5,
                                                  weight_decay=config.weight_decay)
        self.value_optimizer = torch.optim.AdamW(self.value_params, lr=value_lr, eps=1e-5,
                                                 weight_decay=config.weight_decay)
        self.base_lrs = (config.learning_rate, value_lr)

        # EOS ids: the tokenizer's, plus any the model's generation config lists (e.g. Llama 3's several).
        self.eos_token_ids = {tokenizer.eos_token_id} - {None}
        gen_eos = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
        self.eos_token_ids |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else ({gen_eos} - {None})
        if not self.eos_token_ids:
            raise SmlearnError("PPO needs an EOS token (tokenizer.eos_token_id is None)")
        from ..generate.engine import EngineOptions, SamplingParams

        # [detail: sample exactly the distribution that is scored] the rollouts are drawn from
        # softmax(logits / temperature) (top_p if set), the distribution whose log-probs and KL the updates
        # use: the model's own generation_config processors (repetition_penalty, no_repeat_ngram_size, ...)
        # are switched off, and no hidden top-k applies.
        self.sampling = SamplingParams(max_new_tokens=config.max_new_tokens, do_sample=True,
                                       temperature=config.temperature, top_p=config.top_p,
                                       stop_strings=tuple(self.stop_strings), use_generation_config=False)
        self.engine = EngineOptions(engine=engine)
        self.global_step = 0

    def models(self) -> list:
        return [m for m in (self.policy, self.ref_policy, self.value_model) if m is not None]

    def reference_logprobs(self, ids: Tensor, att: Tensor, context_length: int) -> Tensor:
        """Log-probs under the frozen reference: its own copy, or the LoRA policy with adapters disabled."""
        if self.ref_policy is not None:
            return response_logprobs(self.ref_policy, ids, att, context_length, self.config.temperature)[0]
        with self.policy.disable_adapter():
            return response_logprobs(self.policy, ids, att, context_length, self.config.temperature)[0]

    def autocast(self):
        """The forwards' precision: bf16 autocast over fp32 master weights when the policy came in bf16."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # -- prompt sampling ----------------------------------------------------
    def next_prompt_indices(self, n: int) -> list[int]:
        """Cycle through seeded random permutations of the prompts (a new one each pass)."""
        out = []
        while len(out) < n:
            if not self._order:
                self._order = torch.randperm(len(self.prompts), generator=self.rng).tolist()
            out.append(self._order.pop(0))
        return out

    # -- rollout ---------------------------------------------------------------
    def sample(self, prompts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Left-padded prompt ids and mask (B, P) and the sampled response ids (B, T, pad after the end),
        from smlearn's generation engine (the fast decode loop where the model supports it)."""
        from ..generate.engine import encode_prompt, generate_ids

        tok = self.tokenizer
        prompt_ids = [encode_prompt(tok, p) for p in prompts]
        if not all(prompt_ids):
            raise SmlearnError("PPO prompts tokenised to nothing (empty prompts?)")
        with self.autocast():
            generated = generate_ids(self.policy, tok, prompt_ids, self.sampling, self.engine)
        width, length = max(map(len, prompt_ids)), max(1, max(map(len, generated)))
        query = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        query_mask = torch.zeros_like(query)
        response = torch.full((len(prompts), length), tok.pad_token_id, dtype=torch.long)
        for i, (p, g) in enumerate(zip(prompt_ids, generated)):
            # [detail: left-pad the queries] so every row's response starts at the same column.
            query[i, width - len(p):] = torch.tensor(p)
            query_mask[i, width - len(p):] = 1
            if g:
                response[i, :len(g)] = torch.tensor(g)
        return query.to(self.device), query_mask.to(self.device), response.to(self.device)

    @torch.no_grad()
    def rollout(self, prompt_indices: list[int]) -> dict:
        cfg, tok = self.config, self.tokenizer
        prompts = [self.prompts[i] for i in prompt_indices]
        query, query_mask, sampled = self.sample(prompts)
        context_length = query.shape[1]
        response_ids, mask, responses, finished = truncate_responses(
            sampled, tok, self.eos_token_ids, self.stop_strings, tok.pad_token_id)

        # Score the decoded responses (smlearn: RM score corrected by the gold answer).
        reward_out = self.reward_fn(prompts, responses, list(prompt_indices), finished.tolist())
        if "reward" not in reward_out:
            raise SmlearnError("reward_fn must return a dict with a 'reward' list")
        for key, vals in reward_out.items():
            if len(vals) != len(prompts):
                raise SmlearnError(f"reward_fn returned {len(vals)} values for '{key}', expected {len(prompts)}")
        scores = torch.tensor([float(r) for r in reward_out["reward"]], dtype=torch.float32, device=self.device)
        # [detail: EOS trick / missing-EOS penalty] a response that never ended gets a fixed penalty.
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~finished).float()

        input_ids = torch.cat([query, response_ids], dim=1)
        attention_mask = torch.cat([query_mask, mask], dim=1)

        # Old logprobs, reference logprobs and values, in chunks of mini_batch_size to bound memory.
        logprobs, ref_logprobs, values = [], [], []
        chunk = self.local_mini_batch
        for s in range(0, len(prompts), chunk):
            ids, att = input_ids[s:s + chunk], attention_mask[s:s + chunk]
            with self.autocast():
                logprobs.append(response_logprobs(self.policy, ids, att, context_length, cfg.temperature)[0])
                ref_logprobs.append(self.reference_logprobs(ids, att, context_length))
                values.append(response_values(self.value_model, ids, att, context_length))
        maskb = mask.bool()
        logprobs = torch.cat(logprobs).masked_fill(~maskb, INVALID_LOGPROB)
        ref_logprobs = torch.cat(ref_logprobs).masked_fill(~maskb, INVALID_LOGPROB)
        values = torch.cat(values) * mask

        rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, cfg.kl_coef, cfg.kl_estimator)
        # [detail: reward whitening] optional; scale only (shift_mean=False), as TRL.
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
        # [detail: advantage whitening] over all response tokens of the rollout batch.
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        return dict(prompts=prompts, responses=responses, reward_out=reward_out, context_length=context_length,
                    input_ids=input_ids, attention_mask=attention_mask, mask=mask, finished=finished,
                    scores=scores, logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, kl=kl,
                    rewards=rewards, advantages=advantages, returns=returns)

    # -- one minibatch update ------------------------------------------------
    def update_minibatch(self, batch: dict, idx: Tensor) -> dict[str, float]:
        cfg = self.config
        context_length = batch["context_length"]
        ids, att, mask = batch["input_ids"][idx], batch["attention_mask"][idx], batch["mask"][idx]
        old_logprobs, old_values = batch["logprobs"][idx], batch["values"][idx]
        advantages, returns = batch["advantages"][idx], batch["returns"][idx]

        with self.autocast():
            new_logprobs, logits = response_logprobs(self.policy, ids, att, context_length, cfg.temperature)
            new_values = response_values(self.value_model, ids, att, context_length)
        new_logprobs = new_logprobs.masked_fill(~mask.bool(), INVALID_LOGPROB)

        # [detail: clipped value loss] L^VF = 0.5 * E[max((V - R)^2, (V_clip - R)^2)],
        # V_clip = V_old + clip(V - V_old, -eps_v, eps_v).
        values_clipped = old_values + torch.clamp(new_values - old_values, -cfg.clip_range_value, cfg.clip_range_value)
        vf_losses1 = (new_values - returns) ** 2
        vf_losses2 = (values_clipped - returns) ** 2
        vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)

        # [detail: PPO clipped surrogate objective] L^CLIP = E[max(-A * rho, -A * clip(rho, 1-eps, 1+eps))],
        # rho = pi(a|s) / pi_old(a|s) (the loss is the negated objective, hence max of negatives).
        log_ratio = new_logprobs - old_logprobs
        ratio = torch.exp(log_ratio)
        pg_losses1 = -advantages * ratio
        pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cfg.clip_range, 1.0 + cfg.clip_range)
        pg_loss = masked_mean(torch.max(pg_losses1, pg_losses2), mask)
        pg_clipfrac = masked_mean((pg_losses2 > pg_losses1).float(), mask)

        # Separate networks: the sum's gradients split cleanly between the two optimisers.
        # [detail: critic warm-up] for the first critic_warmup_steps only the value model learns, so that the
        # policy's first advantages come from a critic fitted to these rewards rather than a fresh head.
        train_policy = self.global_step >= cfg.critic_warmup_steps
        loss = (pg_loss if train_policy else 0.0 * pg_loss) + cfg.vf_coef * vf_loss
        self.policy_optimizer.zero_grad(set_to_none=True)
        self.value_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Data parallelism: every process's minibatch gradient, averaged (a missing one counts as zero).
        if dist.is_distributed():
            for p in self.policy_params + self.value_params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            dist.all_reduce_mean_([p.grad for p in self.policy_params + self.value_params])
        # [detail: global gradient clipping] per network.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy_params, cfg.max_grad_norm)
        value_grad_norm = torch.nn.utils.clip_grad_norm_(self.value_params, cfg.max_grad_norm)
        if train_policy:
            self.policy_optimizer.step()
        self.value_optimizer.step()

        with torch.no_grad():
            # approx KL(pi_old || pi) ~ 0.5 * E[(log rho)^2] (Schulman's k2), as TRL logs.
            approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask)
            entropy = masked_mean(entropy_from_logits(logits), mask)
            ratio_mean = masked_mean(ratio, mask)
        return dict(policy_loss=pg_loss.item(), value_loss=vf_loss.item(), clipfrac=pg_clipfrac.item(),
                    value_clipfrac=vf_clipfrac.item(), approx_kl=approx_kl.item(), entropy=entropy.item(),
                    ratio_mean=ratio_mean.item(), grad_norm=float(grad_norm), value_grad_norm=float(value_grad_norm))

    # -- one PPO iteration ---------------------------------------------------
    def set_learning_rate(self) -> None:
        """[detail: learning-rate annealing] lr = (1 - step / steps) * lr_0 before each step (linear), as
        CleanRL and TRL's PPOv2; constant keeps lr_0."""
        frac = 1.0 - self.global_step / self.config.steps if self.config.lr_scheduler == "linear" else 1.0
        for optimizer, lr in zip((self.policy_optimizer, self.value_optimizer), self.base_lrs):
            for group in optimizer.param_groups:
                group["lr"] = lr * frac

    def step(self, prompt_indices: list[int]) -> dict:
        cfg = self.config
        start = time.time()
        for model in self.models():
            model.eval()                       # [detail: disable dropout], also if a caller flipped it back
        self.set_learning_rate()
        t_rollout = time.time()
        batch = self.rollout(list(prompt_indices))
        t_update = time.time()

        # ppo_epochs passes over shuffled minibatches of the rollout.
        n = len(prompt_indices)
        stats: dict[str, list[float]] = {}
        mini = self.local_mini_batch
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n, generator=self.rng).to(self.device)
            for s in range(0, n, mini):
                for key, value in self.update_minibatch(batch, perm[s:s + mini]).items():
                    stats.setdefault(key, []).append(value)

        self.global_step += 1
        mask = batch["mask"].float()
        non_score = (-cfg.kl_coef * batch["kl"]).sum(1)
        log = {
            "step": self.global_step,
            "episode": self.global_step * n * dist.world_size(),
            "reward_mean": _mean(batch["reward_out"]["reward"]),
            "score_mean": batch["scores"].mean().item(),
            "kl_mean": batch["kl"].sum(1).mean().item(),
            "non_score_reward_mean": non_score.mean().item(),
            "rlhf_reward_mean": (batch["scores"] + non_score).mean().item(),
            "response_length_mean": mask.sum(1).mean().item(),
            "finished_frac": batch["finished"].float().mean().item(),
            "value_mean": masked_mean(batch["values"], mask).item(),
            "advantage_mean": masked_mean(batch["advantages"], mask).item(),
            **{key: sum(v) / len(v) for key, v in stats.items()},
            "lr": self.policy_optimizer.param_groups[0]["lr"],
            "value_lr": self.value_optimizer.param_groups[0]["lr"],
        }
        for key, vals in batch["reward_out"].items():
            if key != "reward":
                log[f"{key}_mean"] = _mean(vals)
        now = time.time()
        log.update(rollout_s=round(t_update - t_rollout, 3), update_s=round(now - t_update, 3), time_s=now - start)
        return log

    def _write(self, log: dict) -> None:
        if self.log_path is not None and dist.is_main():
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as f:
                f.write(json.dumps(log) + "\n")

    def train(self, evaluate: Callable[[], dict] | None = None) -> list[dict]:
        """`steps` PPO steps of `rollout_batch_size` rollouts (`num_generations` per prompt). With
        `evaluate` and rl.eval_every > 0, its dict (e.g. greedy accuracy on held-out questions) joins the
        log of every eval_every-th step and of the last."""
        from tqdm.auto import trange

        cfg = self.config
        logs = []
        watch = evaluate is not None and cfg.eval_every > 0
        initial = {f"initial_{k}": v for k, v in evaluate().items()} if watch else {}   # the SFT policy's
        bar = trange(cfg.steps, desc="ppo", dynamic_ncols=True, disable=not dist.is_main())
        share = self.local_rollouts
        for _ in bar:
            prompts = self.next_prompt_indices(cfg.rollout_batch_size // cfg.num_generations)
            rollouts = [i for i in prompts for _ in range(cfg.num_generations)]
            # One global batch; each process takes its slice (all of it with one process).
            log = self.step(rollouts[dist.rank() * share:(dist.rank() + 1) * share])
            log = dist.mean_across(log)
            if log["step"] == 1:
                log.update(initial)
            if watch and (log["step"] % cfg.eval_every == 0 or log["step"] == cfg.steps):
                log.update(evaluate())
            self._write(log)
            if self.metric_logger is not None:
                self.metric_logger.log(log, log["step"])
            logs.append(log)
            bar.set_postfix(reward=f"{log['reward_mean']:.3f}", kl=f"{log['kl_mean']:.3f}")
        return logs


def _mean(values) -> float:
    """Mean of the numeric entries (None and non-numbers skipped); NaN when there are none."""
    nums = []
    for v in values:
        try:
            nums.append(float(v))
        except (TypeError, ValueError):
            pass
    return sum(nums) / len(nums) if nums else math.nan


__all__ = ["PPOConfig", "RLStageConfig", "RewardFn", "PPOTrainer", "compute_gae", "masked_mean", "masked_var",
           "masked_whiten",
           "per_token_rewards", "kl_per_token", "truncate_responses", "response_logprobs", "response_values",
           "entropy_from_logits", "position_ids_from", "INVALID_LOGPROB", "is_peft", "unwrap_peft"]
