"""Tests for smlearn.train.ppo: the PPO math by hand, response truncation, the forward passes, one
full step, and a small learning run on a tiny real Llama."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaForSequenceClassification

from smlearn.models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama
from smlearn.train.ppo import (INVALID_LOGPROB, PPOConfig, PPOTrainer, compute_gae, masked_mean, masked_var,
                               masked_whiten, per_token_rewards, response_logprobs, truncate_responses)

TEXTS = ["the quick brown fox jumps over the lazy dog", "a banana and a papaya at the bazaar",
         "she sells sea shells by the sea shore", "Q: what is two plus three? A: five"] * 4
SPEC = TinyLlamaSpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=64, max_position_embeddings=128)
PROMPTS = ["the fox", "a banana", "she sells", "Q: what is", "the lazy dog and the", "sea"]


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded, and 2 OpenMP threads on 2 shared cores stall badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(TEXTS, vocab_size=300)


def tiny_models(tok, seed: int):
    """policy, ref (= deepcopy, the 'SFT' model) and a value model with the policy's config."""
    policy = build_tiny_llama(tok, SPEC, seed=seed)
    ref = copy.deepcopy(policy)
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    torch.manual_seed(seed + 1000)
    value = LlamaForSequenceClassification(config)
    return policy, ref, value


# ---------------------------------------------------------------------------
# 1. GAE, by hand
# ---------------------------------------------------------------------------

def test_compute_gae_by_hand():
    # gamma = 0.9, lam = 0.8, so gamma*lam = 0.72. V = 0 after the last response token.
    # Row 0, mask [1, 1, 0] (position 2 is padding; its reward 5 and value 7 are garbage):
    #   t=1: delta1 = r1 + 0.9*0 - V1 = 2 - 1.0 = 1.0;                A1 = 1.0
    #   t=0: delta0 = r0 + 0.9*V1 - V0 = 1 + 0.9 - 0.5 = 1.4;         A0 = 1.4 + 0.72*1.0 = 2.12
    #   returns = A + V = [2.62, 2.0, 0]
    # Row 1, mask [1, 1, 1], rewards [0, 0, 1], values [0.2, 0.4, 0.6]:
    #   t=2: delta2 = 1 - 0.6 = 0.4;                                 A2 = 0.4
    #   t=1: delta1 = 0 + 0.9*0.6 - 0.4 = 0.14;                       A1 = 0.14 + 0.72*0.4 = 0.428
    #   t=0: delta0 = 0 + 0.9*0.4 - 0.2 = 0.16;                       A0 = 0.16 + 0.72*0.428 = 0.46816
    #   returns = [0.66816, 0.828, 1.0]
    rewards = torch.tensor([[1.0, 2.0, 5.0], [0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 7.0], [0.2, 0.4, 0.6]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[2.12, 1.0, 0.0], [0.46816, 0.428, 0.4]]))
    torch.testing.assert_close(ret, torch.tensor([[2.62, 2.0, 0.0], [0.66816, 0.828, 1.0]]))

    # The padded position must not leak: other garbage there gives the same result.
    rewards2, values2 = rewards.clone(), values.clone()
    rewards2[0, 2], values2[0, 2] = -100.0, 100.0
    adv2, ret2 = compute_gae(rewards2, values2, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv2, adv)
    torch.testing.assert_close(ret2, ret)


# ---------------------------------------------------------------------------
# 2. Per-token rewards
# ---------------------------------------------------------------------------

def test_per_token_rewards_kl_everywhere_score_at_last_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, INVALID_LOGPROB], [-0.3, -1.2, INVALID_LOGPROB, INVALID_LOGPROB]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, INVALID_LOGPROB], [-0.1, -2.2, INVALID_LOGPROB, -9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    scores = torch.tensor([2.0, -1.0])
    rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.5, estimator="k1")
    # k1: KL_t = logp - logp_ref; r_t = -0.5 * KL_t, + score at the last response token (row 0: t=2, row 1: t=1).
    expected_kl = torch.tensor([[0.5, -1.0, 0.0, 0.0], [-0.2, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(kl, expected_kl)
    torch.testing.assert_close(rewards, torch.tensor([[-0.25, 0.5, 0.0 + 2.0, 0.0], [0.1, -0.5 - 1.0, 0.0, 0.0]]))

    # k3: (r - 1) - log r with log r = logp_ref - logp; >= 0 everywhere, 0 on padding.
    rewards3, kl3 = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.5, estimator="k3")
    log_r = ref_logprobs - logprobs
    expected_k3 = ((log_r.exp() - 1) - log_r) * mask
    torch.testing.assert_close(kl3, expected_k3)
    assert (kl3 >= 0).all()
    torch.testing.assert_close(rewards3 - (-0.5 * expected_k3),
                               torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, -1.0, 0.0, 0.0]]))


# ---------------------------------------------------------------------------
# 3. Whitening
# ---------------------------------------------------------------------------

def test_masked_whiten():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g) * 3.0 + 5.0
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5, [1] * 6 + [0]])
    w = masked_whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-5
    assert abs(masked_var(w, mask).sqrt().item() - 1.0) < 1e-4
    assert (w[mask == 0] == 0).all()
    # Masked-out entries do not influence the statistics.
    x2 = x.clone()
    x2[mask == 0] = 1e6
    torch.testing.assert_close(masked_whiten(x2, mask), w)
    # shift_mean=False keeps the mean and only rescales.
    ws = masked_whiten(x, mask, shift_mean=False)
    assert abs(masked_mean(ws, mask).item() - masked_mean(x, mask).item()) < 1e-4
    assert abs(masked_var(ws, mask).sqrt().item() - 1.0) < 1e-4


# ---------------------------------------------------------------------------
# Truncation and forward passes
# ---------------------------------------------------------------------------

def test_truncate_responses_eos_and_stop_strings(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    long_row = enc("the lazy dog jumps over the quick brown fox and the sea")       # neither EOS nor stop
    width = len(long_row)
    eos_row = enc("hello there") + [eos] + enc("junk junk")                         # EOS then junk
    stop_row = enc("5 apples\nQ: next one")                                          # stop string
    eos_first = enc("hi") + [eos] + enc("\nQ: x")                                    # EOS before the stop
    rows = [r + [pad] * (width - len(r)) for r in (eos_row, stop_row, eos_first)] + [long_row]
    assert all(len(r) == width for r in rows)
    ids, mask, texts, finished = truncate_responses(torch.tensor(rows), tok, {eos}, ["\nQ:"], pad)

    stop_k = next(k for k in range(1, width) if "\nQ:" in tok.decode(stop_row[:k]))  # token completing the stop
    lengths = [len(enc("hello there")) + 1, stop_k, len(enc("hi")) + 1, width]
    assert mask.sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert mask[row, :n].all() and not mask[row, n:].any()      # contiguous from the start
        assert (ids[row, n:] == pad).all()                          # tokens after the stop become pad
        assert ids[row, :n].tolist() == rows[row][:n]
    assert ids[0, lengths[0] - 1] == eos                            # the EOS itself is kept
    assert texts == ["hello there", "5 apples", "hi", tok.decode(long_row)]
    assert finished.tolist() == [True, True, True, False]


def test_response_logprobs_left_padded_batch_matches_single_rows(tok):
    policy, _, _ = tiny_models(tok, seed=0)
    policy.eval()
    prompts = ["the fox", "a banana and a papaya at"]
    responses = [tok(" jumps over", add_special_tokens=False)["input_ids"], tok(" the bazaar", add_special_tokens=False)["input_ids"]]
    width = max(map(len, responses))
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    resp = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in responses])
    resp_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])
    ids = torch.cat([enc["input_ids"], resp], 1)
    att = torch.cat([enc["attention_mask"], resp_mask], 1)
    with torch.no_grad():
        batch_lp, logits = response_logprobs(policy, ids, att, enc["input_ids"].shape[1], temperature=0.7)
        assert batch_lp.shape == resp.shape and logits.shape[:2] == resp.shape
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            # Reference: the unpadded sequence alone, plain log_softmax of logits / temperature.
            p = tok(prompt)["input_ids"]
            full = torch.tensor([p + response])
            lsm = torch.log_softmax(policy(full).logits[0] / 0.7, -1)
            expected = torch.stack([lsm[len(p) - 1 + t, tok_id] for t, tok_id in enumerate(response)])
            torch.testing.assert_close(batch_lp[row, :len(response)], expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# One full step: every option on, mixed-length prompts, logs
# ---------------------------------------------------------------------------

def test_step_runs_and_logs(tok, tmp_path, one_thread):
    policy, ref, value = tiny_models(tok, seed=1)
    ref_before = [p.detach().clone() for p in ref.parameters()]
    policy_before = [p.detach().clone() for p in policy.parameters()]
    value_before = [p.detach().clone() for p in value.parameters()]
    seen = {}

    def reward_fn(prompts, responses, idx, finished):
        seen.update(prompts=prompts, responses=responses, idx=idx, finished=finished)
        return {"reward": [float(len(r) % 3) for r in responses], "correct": [1.0, 0.0, 1.0, 1.0],
                "rm_score": [0.5] * len(responses)}

    cfg = PPOConfig(steps=1, rollout_batch_size=4, num_generations=1, mini_batch_size=2, ppo_epochs=2,
                    learning_rate=1e-3, max_new_tokens=6, missing_eos_penalty=1.0, kl_estimator="k3",
                    whiten_rewards=True, seed=3)
    log_path = tmp_path / "ppo.jsonl"
    trainer = PPOTrainer(cfg, policy, ref, value, tok, PROMPTS, reward_fn, log_path=log_path,
                         stop_strings=["\nQ:"])
    log = trainer.step([0, 4, 1, 5])              # mixed prompt lengths
    trainer._write(log)
    assert seen["idx"] == [0, 4, 1, 5] and seen["prompts"] == [PROMPTS[i] for i in (0, 4, 1, 5)]
    for key in ("step", "reward_mean", "score_mean", "kl_mean", "non_score_reward_mean", "response_length_mean",
                "policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy", "ratio_mean", "lr",
                "correct_mean", "rm_score_mean"):
        assert key in log, key
    assert log["step"] == 1 and log["correct_mean"] == 0.75 and log["rm_score_mean"] == 0.5
    assert 1 <= log["response_length_mean"] <= 6
    # Missing-EOS penalty: score = reward - 1.0 for every unfinished response.
    assert log["score_mean"] == pytest.approx(log["reward_mean"] - (1.0 - log["finished_frac"]), abs=1e-5)
    assert log["kl_mean"] == pytest.approx(0.0, abs=1e-5)         # first rollout: policy == ref
    assert log["non_score_reward_mean"] == pytest.approx(-cfg.kl_coef * log["kl_mean"], abs=1e-6)
    assert log["kl_mean"] >= 0                                    # k3 is non-negative
    assert all(torch.equal(a, b) for a, b in zip(ref_before, ref.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(policy_before, policy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(value_before, value.parameters()))
    assert not policy.training and not value.training            # dropout off throughout
    lines = log_path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 1


# ---------------------------------------------------------------------------
# 4. Learning: the policy learns to put an "a" in its response
# ---------------------------------------------------------------------------

def test_ppo_learns_simple_reward(tok, one_thread):
    torch.manual_seed(0)
    policy, ref, value = tiny_models(tok, seed=0)

    def reward_fn(prompts, responses, idx, finished):
        return {"reward": [float("a" in r) for r in responses]}   # +1 if the response contains an "a"

    beta = 0.1
    cfg = PPOConfig(steps=50, rollout_batch_size=16, num_generations=1, mini_batch_size=8, ppo_epochs=2,
                    learning_rate=1e-2, lr_scheduler="constant", max_new_tokens=8, kl_coef=beta, seed=0)
    logs = PPOTrainer(cfg, policy, ref, value, tok, PROMPTS, reward_fn).train()
    assert [log["step"] for log in logs] == list(range(1, 51))
    first = sum(log["reward_mean"] for log in logs[:5]) / 5
    last = sum(log["reward_mean"] for log in logs[-5:]) / 5
    # The random tiny model puts an "a" in ~30% of its 8-token responses; PPO gets that to ~75-80%
    # (seeds 0-7 during development: first-5 0.22-0.41, last-5 0.71-0.84, gain +0.35..+0.55).
    assert last > first + 0.2, (first, last)
    # KL bound: PPO maximises J(pi) = E[r] - beta * KL(pi || pi_ref), and any pi with J(pi) >= J(pi_ref)
    # has KL <= (E_pi[r] - E_ref[r]) / beta <= (r_max - r_min) / beta = 1 / 0.1 = 10 nats. Observed max
    # was 4.7-7.1 over seeds 0-7; with the penalty removed (beta = 0) or of the wrong sign, KL passed 20
    # and 40 within 40 steps.
    kls = [log["kl_mean"] for log in logs]
    assert all(k == k for k in kls) and max(kls) < 1.0 / beta, kls
