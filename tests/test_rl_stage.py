"""The RL stage's reward, critic, rollouts and config (the RL-stage issue's defects 1-6 and 10).

Each test states the defect it guards against; every one failed on the code before its fix.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from pathlib import Path

import pytest
import torch

from smlearn.config import CorrectionConfig, RLStageConfig, load_config
from smlearn.data.schema import Example
from smlearn.errors import ConfigError
from smlearn.models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama
from smlearn.train.ppo import PPOConfig, PPOTrainer, response_values
from smlearn.train.rl import CorrectedReward, standardise_value_head
from smlearn.train.rl_trl import _LoggedReward, engine_rollout
from conftest import value_model_like

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the quick brown fox jumps over the lazy dog", "a banana and a papaya at the bazaar",
         "Q: what is two plus three?\nA: two plus three is five. The answer is 5.",
         "she sells sea shells by the sea shore\n\nQ: next"] * 4
SPEC = TinyLlamaSpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=64, max_position_embeddings=128)
PROMPTS = ["the fox", "a banana", "Q: what is", "sea"]


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(TEXTS, vocab_size=300)


class FixedScorer:
    """Stands in for the RM scorer in reward-combination tests only (no model is involved there)."""

    def __init__(self, scores):
        self.scores = scores

    def score(self, prompts, completions):
        return list(self.scores[:len(completions)])


def rl_config(**kw) -> RLStageConfig:
    correction = kw.pop("correction", {})
    return RLStageConfig(correction=CorrectionConfig(**correction), **kw).validate()


NUMBER = Example(id="q1", question="Ann has 5 apples and gets 7. How many?", answer="12", kind="number")


# ---------------------------------------------------------------------------
# Defect 1: every right rollout out-rewards every wrong one, in every mode
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode,bonus,wrong,weight", [
    ("replace", 0.0, -1.0, 0.5), ("replace", 1.0, -1.0, 0.5), ("replace", 1.0, -1.0, 1.5),
    ("add", 1.0, -1.0, 0.5), ("add", 2.0, -1.0, 1.0), ("add", 0.5, -2.0, 1.0)])
def test_right_rollouts_outrank_wrong_ones(mode, bonus, wrong, weight):
    cfg = rl_config(rm_weight=weight, correction={"mode": mode, "correct_bonus": bonus, "wrong_reward": wrong})
    reward = CorrectedReward(FixedScorer([]), [NUMBER], "The answer is", cfg)
    zs = [-1e6, -50.0, -3.0, -1.0, -0.2, 0.0, 0.4, 1.0, 3.0, 50.0, 1e6]
    right = [reward.combine(z, True) for z in zs]
    wrong_ = [reward.combine(z, False) for z in zs]
    assert min(right) > max(wrong_), (mode, bonus, right, wrong_)
    # Within a class the RM still ranks (except replace-mode wrong rollouts, which all get wrong_reward).
    assert right == sorted(right) and right[0] < right[-1]
    if mode == "add":
        assert wrong_ == sorted(wrong_) and wrong_[0] < wrong_[-1]
    else:
        assert set(wrong_) == {wrong}


@pytest.mark.parametrize("mode,bonus,wrong,weight", [
    ("replace", 0.0, -0.2, 0.5), ("add", 1.0, -1.0, 1.0), ("add", 0.0, -1.0, 0.5)])
def test_configs_that_could_invert_the_order_are_refused(mode, bonus, wrong, weight):
    with pytest.raises(ConfigError, match=r"rl\.correction"):
        rl_config(rm_weight=weight, correction={"mode": mode, "correct_bonus": bonus, "wrong_reward": wrong})


def test_correction_off_is_the_rm_alone_and_scores_are_standardised():
    cfg = rl_config(correction={"enabled": False})
    reward = CorrectedReward(FixedScorer([3.0, 1.0]), [NUMBER], "The answer is", cfg, mean=1.0, std=2.0)
    out = reward(["p", "p"], ["x. The answer is 12.", "y. The answer is 3."], [0, 0], [True, True])
    assert out["rm_score"] == [1.0, 0.0]                      # (s - mean) / std
    assert out["correct"] == [1.0, 0.0]
    assert out["reward"] == pytest.approx([0.5 * torch.tanh(torch.tensor(1.0)).item(), 0.0])


# ---------------------------------------------------------------------------
# Defect 4: an unfinished rollout, or one that never states its answer, is wrong
# ---------------------------------------------------------------------------

def test_unfinished_or_unstated_answers_are_wrong():
    reward = CorrectedReward(FixedScorer([0.0] * 4), [NUMBER], "The answer is", rl_config())
    responses = ["She has 5 + 7 = 12 apples. Then she",        # cut mid-way: the last number is 12
                 "5 + 7 = 12. The answer is 12.",               # stated, but cut at max_new_tokens
                 "5 + 7 = 12. The answer is 12.",               # stated and finished
                 "5 + 7 = 12. the answer is 12."]               # the trigger in lower case still counts
    flags = reward.correct_flags(responses, [0] * 4, [True, False, True, True])
    assert flags == [False, False, True, True]


def test_missing_eos_penalty_is_a_config_field():
    cfg = load_config(None, ["model.name_or_path=m", "data.source=d.jsonl", "rl.missing_eos_penalty=0.5"])
    assert cfg.rl.missing_eos_penalty == 0.5


# ---------------------------------------------------------------------------
# Defect 2: the critic starts on the scale of the rewards
# ---------------------------------------------------------------------------

def test_value_head_is_rescaled_to_standardised_scores(tok):
    policy = build_tiny_llama(tok, SPEC, seed=0)
    rm = value_model_like(policy)
    ids = torch.tensor([tok("the quick brown fox").input_ids])
    att = torch.ones_like(ids)
    with torch.no_grad():
        raw = rm(input_ids=ids, attention_mask=att).logits[0, 0].item()
    mean, std = raw + 3.0, 0.25                               # raw is 3 below the mean: z = -12
    standardise_value_head(rm, mean, std)
    with torch.no_grad():
        # response_values reads the head at the state before each response token: append one token so the
        # last value is read on the full text's last hidden state, as the RM reads it.
        full = torch.cat([ids, ids[:, :1]], dim=1)
        values = response_values(rm, full, torch.ones_like(full), context_length=ids.shape[1])
    assert values[0, -1].item() == pytest.approx((raw - mean) / std, abs=1e-4)


# ---------------------------------------------------------------------------
# Defect 3: rollouts sample the distribution PPO scores, whatever the model's generation_config says
# ---------------------------------------------------------------------------

def _rollout_ids(tok, policy, engine: str):
    value = value_model_like(policy)
    cfg = PPOConfig(steps=1, rollout_batch_size=4, num_generations=1, mini_batch_size=4, max_new_tokens=12,
                    temperature=1.0, seed=11)
    trainer = PPOTrainer(cfg, policy, copy.deepcopy(policy), value, tok, PROMPTS,
                         lambda p, r, i, f: {"reward": [0.0] * len(r)}, engine=engine)
    torch.manual_seed(11)
    return trainer.sample(PROMPTS)[2].tolist()


@pytest.mark.parametrize("engine", ["fast", "hf"])
def test_rollouts_ignore_the_models_generation_config(tok, engine):
    plain = build_tiny_llama(tok, SPEC, seed=2)
    tweaked = copy.deepcopy(plain)
    tweaked.generation_config.repetition_penalty = 50.0
    if engine == "hf":
        tweaked.generation_config.no_repeat_ngram_size = 1
    assert _rollout_ids(tok, tweaked, engine) == _rollout_ids(tok, plain, engine)
    assert tweaked.generation_config.repetition_penalty == 50.0         # restored after the call


# ---------------------------------------------------------------------------
# Defect 5: GRPO/RLOO do not train on text past the stop strings
# ---------------------------------------------------------------------------

def test_grpo_rollouts_end_at_the_stop_string(tok):
    from smlearn.generate.engine import EngineOptions, SamplingParams

    policy = build_tiny_llama(tok, SPEC, seed=3)

    class FakeTrainer:       # the two attributes TRL's rollout_func contract gives us
        model = policy
        processing_class = tok

        class accelerator:
            @staticmethod
            def unwrap_model(m):
                return m

    # A stop string the random model hits often ("a"), so that the check below has cases to check.
    params = SamplingParams(max_new_tokens=40, do_sample=True, temperature=1.5, stop_strings=("a",),
                            use_generation_config=False)
    torch.manual_seed(0)
    out = engine_rollout(params, EngineOptions())(PROMPTS * 8, FakeTrainer)
    assert len(out["completion_ids"]) == len(PROMPTS) * 8
    stopped = 0
    for ids in out["completion_ids"]:
        if "a" in tok.decode(ids, skip_special_tokens=True):
            stopped += 1
            # The token that completes the stop string is the last one: no token was generated past it.
            assert "a" not in tok.decode(ids[:-1], skip_special_tokens=True)
    assert stopped >= 8


def test_rloo_completions_past_a_stop_string_are_unfinished_and_penalised(tok):
    reward = CorrectedReward(FixedScorer([0.0] * 5), [NUMBER], "The answer is", rl_config())
    logged = _LoggedReward(reward, tok, {tok.eos_token_id}, missing_eos_penalty=0.5)
    completions = [" 5 + 7 = 12. The answer is 12.\nQ: what is 3 + 4?\nA: 7",   # ran on: invented a question
                   " 5 + 7 = 12. The answer is 12.\n\n",                         # stopped at a stop string
                   " 5 + 7 = 12. The answer is 12.\nQ:",                          # stopped at the other one
                   " 5 + 7 = 12. The answer is 12.",                              # ended with EOS
                   " 5 + 7 = 12. The answer is 12. And"]                          # cut at max length
    ids = [[5, 6], [5, 6], [5, 6], [5, tok.eos_token_id], [5, 6]]
    rewards = logged(["p"] * 5, completions, [0] * 5, completion_ids=ids)
    assert rewards[0] == pytest.approx(-1.0 - 0.5)            # wrong (unfinished) and penalised
    assert rewards[1] > 0 and rewards[2] > 0 and rewards[3] > 0
    assert rewards[4] == pytest.approx(-1.0 - 0.5)
    assert logged.rows[0]["finished_frac"] == pytest.approx(3 / 5)


# ---------------------------------------------------------------------------
# Defect 6: learning-rate annealing and weight decay are settable (default: linear, no decay)
# ---------------------------------------------------------------------------

def test_learning_rate_anneals_and_weight_decay_is_off_by_default(tok):
    policy = build_tiny_llama(tok, SPEC, seed=4)
    cfg = PPOConfig(steps=4, rollout_batch_size=4, num_generations=2, mini_batch_size=4, learning_rate=1e-3,
                    max_new_tokens=4)
    trainer = PPOTrainer(cfg, policy, copy.deepcopy(policy), value_model_like(policy), tok, PROMPTS,
                         lambda p, r, i, f: {"reward": [1.0] * len(r)})
    assert all(g["weight_decay"] == 0.0 for g in trainer.policy_optimizer.param_groups)
    lrs = [log["lr"] for log in trainer.train()]
    assert lrs == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    cfg2 = dataclasses.replace(cfg, lr_scheduler="constant", weight_decay=0.1)
    trainer2 = PPOTrainer(cfg2, policy, copy.deepcopy(policy), value_model_like(policy), tok, PROMPTS,
                          lambda p, r, i, f: {"reward": [1.0] * len(r)})
    assert all(g["weight_decay"] == 0.1 for g in trainer2.policy_optimizer.param_groups)
    assert [log["lr"] for log in trainer2.train()] == pytest.approx([1e-3] * 4)


# ---------------------------------------------------------------------------
# Defect 10: one RL config; every option PPO reads is settable from YAML and documented
# ---------------------------------------------------------------------------

def test_one_rl_config_every_ppo_option_reachable_and_documented():
    assert PPOConfig is RLStageConfig
    source = (ROOT / "smlearn" / "train" / "ppo.py").read_text()
    read = set(re.findall(r"(?<![.\w])(?:cfg|config|self\.config)\.(\w+)", source)) - {"validate"}
    fields = {f.name for f in dataclasses.fields(RLStageConfig)}
    assert read <= fields, read - fields
    readme = (ROOT / "README.md").read_text()
    for name in fields:
        assert re.search(rf"`rl\.{name}[`.]|`{name}`", readme), f"rl.{name} missing from the README table"
    samples = {bool: True, int: 3, float: 0.25, str: None}
    for f in dataclasses.fields(RLStageConfig):
        if f.name in ("correction", "lora"):
            continue
        value = {"algorithm": "grpo", "kl_estimator": "k3", "lr_scheduler": "constant", "split": "rl",
                 "value_learning_rate": 0.5, "missing_eos_penalty": 0.5}.get(f.name)
        if value is None:
            value = samples[type(f.default)] if type(f.default) in samples else 1
        if f.name in ("rollout_batch_size",):
            value = 12
        cfg = load_config(None, ["model.name_or_path=m", "data.source=d.jsonl", f"rl.{f.name}={value}"])
        assert getattr(cfg.rl, f.name) == value, f.name


def test_bad_rl_values_fail_before_anything_runs():
    for override, needle in [("rl.steps=-3", "rl.steps"), ("rl.rollout_batch_size=0", "rl.rollout_batch_size"),
                             ("rl.temperature=0", "rl.temperature"), ("rl.lr_scheduler=cosine", "rl.lr_scheduler"),
                             ("rl.rollout_batch_size=6", "rl.rollout_batch_size"), ("rl.top_p=0", "rl.top_p")]:
        cfg = load_config(None, ["model.name_or_path=m", "data.source=d.jsonl", override])
        with pytest.raises(ConfigError, match=re.escape(needle)):
            cfg.validate()


def test_reward_combinations_table_is_exhaustive():
    """enabled x mode x correct x bonus: the reward is finite and the right/wrong order holds."""
    for enabled, mode, bonus in itertools.product([True, False], ["replace", "add"], [1.0, 2.5]):
        cfg = rl_config(correction={"enabled": enabled, "mode": mode, "correct_bonus": bonus})
        r = CorrectedReward(FixedScorer([]), [NUMBER], "The answer is", cfg)
        for z in (-10.0, 0.0, 10.0):
            right, wrong = r.combine(z, True), r.combine(z, False)
            assert right == right and wrong == wrong
            if enabled:
                assert right > r.combine(-z, False) and right > wrong
            else:
                assert right == wrong                          # the RM alone: correctness plays no part


def test_critic_warmup_trains_only_the_value_model_first(tok):
    policy = build_tiny_llama(tok, SPEC, seed=6)
    value = value_model_like(policy)
    cfg = PPOConfig(steps=3, rollout_batch_size=4, num_generations=2, mini_batch_size=4, learning_rate=1e-3,
                    max_new_tokens=4, critic_warmup_steps=2)
    trainer = PPOTrainer(cfg, policy, copy.deepcopy(policy), value, tok, PROMPTS,
                         lambda p, r, i, f: {"reward": [float(len(x) % 2) for x in r]})
    policy_0 = [p.detach().clone() for p in policy.parameters()]
    value_0 = [p.detach().clone() for p in value.parameters()]
    for _ in range(2):
        trainer.step(trainer.next_prompt_indices(2) * 2)
    assert all(torch.equal(a, b) for a, b in zip(policy_0, policy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(value_0, value.parameters()))
    trainer.step(trainer.next_prompt_indices(2) * 2)
    assert not all(torch.equal(a, b) for a, b in zip(policy_0, policy.parameters()))
