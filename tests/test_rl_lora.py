"""LoRA for RL (`rl.lora.*`, issue 10): the policy as adapters on the SFT weights, the KL reference the same
weights with the adapters disabled (no second copy), PPO's value model as adapters on the RM backbone.

On tiny real Llamas built from a config: only adapter weights (and the value head's trainable copy) change;
the reference log-probs are exactly the adapter-free model's; the reward rises on a programmatic reward.
"""
from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaForSequenceClassification

from smlearn.config import LoraConfig, RunConfig
from smlearn.errors import ConfigError, SmlearnError
from smlearn.models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama
from smlearn.rundir import Run
from smlearn.train.common import build_lora_config
from smlearn.train.ppo import PPOConfig, PPOTrainer, response_logprobs

TEXTS = ["the quick brown fox jumps over the lazy dog", "a banana and a papaya at the bazaar",
         "she sells sea shells by the sea shore", "Q: what is two plus three? A: five"] * 4
SPEC = TinyLlamaSpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=64, max_position_embeddings=128)
PROMPTS = ["the fox", "a banana", "she sells", "Q: what is", "the lazy dog and the", "sea"]
LORA = LoraConfig(enabled=True, r=8, alpha=16, dropout=0.0)


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(TEXTS, vocab_size=300)


def has_a(prompts, responses, idx, finished):
    """The programmatic reward: 1 when the response contains the letter 'a' (~25 % of the random model's)."""
    return {"reward": [float("a" in r) for r in responses]}


def sft_like(tok, seed: int = 0):
    """A tiny Llama whose next-token distributions are not flat. With the default std-0.02 embeddings (tied
    to the output layer) a random model's logits are all ~0 (entropy ln V), and LoRA, which leaves the
    embeddings alone, can hardly sharpen them (+0.5 on a logit after 30 steps); a trained model's
    embeddings are larger: std 0.2 here."""
    model = build_tiny_llama(tok, SPEC, seed=seed)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(10.0)
    return model


def lora_models(tok, seed: int = 0):
    sft = sft_like(tok, seed)
    config = copy.deepcopy(sft.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    torch.manual_seed(seed + 1000)
    rm = LlamaForSequenceClassification(config)
    frozen_sft = copy.deepcopy(sft)
    policy = get_peft_model(sft, build_lora_config(LORA, "causal_lm"))
    value = get_peft_model(rm, build_lora_config(LORA, "seq_cls"))
    return policy, value, frozen_sft


def _named(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_ppo_lora_trains_only_adapters_against_the_adapter_free_reference(tok):
    torch.manual_seed(0)
    policy, value, frozen_sft = lora_models(tok)
    cfg = PPOConfig(steps=40, rollout_batch_size=32, num_generations=4, mini_batch_size=16, ppo_epochs=2,
                    learning_rate=3e-2, lr_scheduler="constant", max_new_tokens=8, kl_coef=0.05, seed=0,
                    lora=LORA)
    trainer = PPOTrainer(cfg, policy, None, value, tok, PROMPTS, has_a)
    assert trainer.ref_policy is None                              # no second copy of the policy
    policy_0, value_0 = _named(policy), _named(value)
    logs = trainer.train()

    # Only adapter weights change: LoRA A/B of the policy; LoRA A/B and the head's trainable copy of the value
    # model. The SFT weights under the policy and the RM backbone and head under the value model are untouched.
    changed = _changed(policy_0, policy)
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    assert all(n in changed for n in policy_0 if "lora_B" in n)
    changed_v = _changed(value_0, value)
    assert changed_v and all("lora_" in n or "modules_to_save" in n for n in changed_v), sorted(changed_v)[:5]
    assert any("modules_to_save" in n for n in changed_v)

    # The reference log-probs are the adapter-free (SFT) model's, to float precision; the policy's differ.
    batch = trainer.rollout([0, 1, 2, 3, 4, 5])
    ids, att, mask = batch["input_ids"], batch["attention_mask"], batch["mask"].bool()
    with torch.no_grad():
        sft_logprobs, _ = response_logprobs(frozen_sft.eval(), ids, att, batch["context_length"], cfg.temperature)
    torch.testing.assert_close(batch["ref_logprobs"][mask], sft_logprobs[mask], rtol=0, atol=1e-5)
    assert (batch["logprobs"][mask] - batch["ref_logprobs"][mask]).abs().max() > 1e-2

    # The reward rises. Seeds 0-5 during development: first-5 steps 0.16-0.34, last-5 1.00 every time (with
    # rollout batches of 16 and lr 1e-2 it reached 0.23-0.98: too seed-dependent to test).
    first = sum(log["reward_mean"] for log in logs[:5]) / 5
    last = sum(log["reward_mean"] for log in logs[-5:]) / 5
    print(f"PPO LoRA reward (contains 'a'): first-5 steps {first:.3f}, last-5 {last:.3f}")
    assert last > first + 0.4 and last > 0.8, (first, last)


def test_ppo_without_a_reference_needs_a_lora_policy(tok):
    policy = build_tiny_llama(tok, SPEC, seed=0)
    value = lora_models(tok)[1]
    cfg = PPOConfig(steps=1, rollout_batch_size=4, mini_batch_size=4, max_new_tokens=4)
    with pytest.raises(SmlearnError, match="LoRA"):
        PPOTrainer(cfg, policy, None, value, tok, PROMPTS, has_a)


@pytest.mark.parametrize("field,value", [("r", 0), ("alpha", 0), ("dropout", 1.0)])
def test_bad_rl_lora_values_name_the_field(field, value):
    from smlearn.config import load_config

    cfg = load_config(None, ["model.name_or_path=m", "data.source=d.jsonl", f"rl.lora.{field}={value}"])
    with pytest.raises(ConfigError, match=rf"rl\.lora\.{field}"):
        cfg.validate()


# ---------------------------------------------------------------------------
# GRPO / RLOO (TRL) with rl.lora: TRL wraps the policy and disables the adapters for the reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_critic_free_lora_trains_adapters_and_saves_a_merged_model(tmp_path, tok, algorithm, monkeypatch):
    from safetensors.torch import load_file

    from smlearn.io import read_jsonl
    from smlearn.train import rl_trl

    cfg = RunConfig()
    cfg.model.name_or_path, cfg.model.device = str(tmp_path / "base"), "cpu"
    cfg.data.source = str(tmp_path / "data.jsonl")
    cfg.log.report_to = ["none"]
    cfg.rl.algorithm, cfg.rl.steps, cfg.rl.learning_rate, cfg.rl.lr_scheduler = algorithm, 16, 3e-2, "constant"
    cfg.rl.rollout_batch_size, cfg.rl.num_generations, cfg.rl.max_new_tokens = 16, 4, 8
    cfg.rl.lora = copy.deepcopy(LORA)
    run = Run(tmp_path / "run", cfg)
    run.root.mkdir(parents=True)
    model = sft_like(tok)
    model.save_pretrained(run.path("sft", "model"), safe_serialization=True)
    tok.save_pretrained(run.path("sft", "model"))

    seen = {}
    base_config, base_trainer = rl_trl._trainer_classes(algorithm)

    class Recording(base_trainer):            # the real TRL trainer; records its weights around train()
        def train(self, *args, **kwargs):
            seen["is_peft"] = hasattr(self.model, "disable_adapter")
            seen["ref_model"] = getattr(self, "ref_model", "absent")
            before = _named(self.model)
            out = super().train(*args, **kwargs)
            seen["changed"] = _changed(before, self.model)
            seen["trainable"] = {n for n, p in self.model.named_parameters() if p.requires_grad}
            return out

    monkeypatch.setattr(rl_trl, "_trainer_classes", lambda algo: (base_config, Recording))
    rows = rl_trl.train_critic_free(run, [None] * len(PROMPTS), PROMPTS, has_a, progress=False)
    assert seen["is_peft"] and seen["ref_model"] is None            # the reference: adapters disabled
    assert seen["changed"] and all("lora_" in n for n in seen["changed"]), sorted(seen["changed"])[:5]
    assert seen["trainable"] == {n for n in seen["changed"]} | {n for n in seen["trainable"] if "lora_" in n}
    # rl/model is a plain merged model; rl/adapter holds the adapter alone.
    weights = load_file(run.path("rl", "model", "model.safetensors"))
    assert not any("lora" in k for k in weights)
    assert (run.path("rl", "adapter", "adapter_model.safetensors")).exists()
    log = read_jsonl(run.path("rl", "log.jsonl"))
    first = sum(r["reward_mean"] for r in log[:3]) / 3
    last = sum(r["reward_mean"] for r in log[-3:]) / 3
    print(f"{algorithm} LoRA reward (contains 'a'): first-3 steps {first:.3f}, last-3 {last:.3f}")
    assert len(rows) == cfg.rl.steps
    if algorithm == "grpo":
        # GRPO, rl.seed 0-3 during development: first-3 steps 0.08-0.40, last-3 0.56-1.00. (RLOO, whose TRL
        # generation has no stop strings, went from 0.17 to 0.21 for seed 0 and down for seed 1: not tested.)
        assert last > first + 0.1, (first, last)
