"""Training precision of the RL and RM stages (issue 10, defects 1 and 2), on bf16 tiny Llamas on CPU.

Defect 1: on a GPU the RL policy loads in bf16 and AdamW updated the bf16 weights directly, so an update
smaller than half a bf16 step rounded away: one PPO step at lr 1e-6 (the 7B config's order) changed ~1.7 %
of the weights in bf16 against ~100 % in fp32. Trainable weights are now kept in fp32 (the forward runs under
bf16 autocast), for PPO (ours) and GRPO/RLOO (TRL).
Defect 2: PEFT upcasts LoRA adapters to fp32 but leaves `modules_to_save` (the RM's new score head) in the
backbone's bf16; the head is now upcast too.

Each test measures the fraction of trainable weight entries one step changes and compares bf16 with fp32.
"""
from __future__ import annotations

import copy

import pytest
import torch

from smlearn.config import RunConfig
from smlearn.models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama
from smlearn.rundir import Run
from smlearn.train.ppo import PPOConfig, PPOTrainer
from conftest import value_model_like

TEXTS = ["the quick brown fox jumps over the lazy dog", "a banana and a papaya at the bazaar",
         "she sells sea shells by the sea shore", "Q: what is two plus three? A: five"] * 4
SPEC = TinyLlamaSpec(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=64, max_position_embeddings=128)
PROMPTS = ["the fox", "a banana", "she sells", "Q: what is"]
LR = 1e-6          # the order of a 7B config's RL learning rate: far below half a bf16 step of a weight


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer(TEXTS, vocab_size=300)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def changed_fraction(before: dict[str, torch.Tensor], model) -> float:
    """Fraction of the entries of the parameters in `before` whose value differs now."""
    params = dict(model.named_parameters())
    changed = sum(int((params[n].detach().float() != b).sum()) for n, b in before.items())
    return changed / sum(b.numel() for b in before.values())


def _reward(prompts, responses, idx, finished):
    # Varied rewards (so advantages are not all zero): the response length mod 3.
    return {"reward": [float(len(r) % 3) for r in responses]}


def _ppo_fractions(tok, dtype: torch.dtype) -> tuple[float, float]:
    policy = build_tiny_llama(tok, SPEC, seed=1).to(dtype)
    ref = copy.deepcopy(policy)
    value = value_model_like(policy, seed=7).to(dtype)
    cfg = PPOConfig(steps=1, rollout_batch_size=4, num_generations=1, mini_batch_size=4, ppo_epochs=1,
                    learning_rate=LR, max_new_tokens=6, seed=0)
    trainer = PPOTrainer(cfg, policy, ref, value, tok, PROMPTS, _reward)
    policy_0, value_0 = _snapshot(policy), _snapshot(value)
    trainer.step([0, 1, 2, 3])
    return changed_fraction(policy_0, policy), changed_fraction(value_0, value)


def test_a_bf16_ppo_step_changes_the_weights_as_in_fp32(tok):
    """Defect 1 (PPO): before the fix, 1.7 % of policy entries changed in bf16 (100 % in fp32)."""
    torch.manual_seed(0)
    fp32_policy, fp32_value = _ppo_fractions(tok, torch.float32)
    bf16_policy, bf16_value = _ppo_fractions(tok, torch.bfloat16)
    print(f"PPO step at lr {LR}: policy entries changed fp32 {fp32_policy:.4f}, bf16 {bf16_policy:.4f}; "
          f"value fp32 {fp32_value:.4f}, bf16 {bf16_value:.4f}")
    # The value model has no output layer tied to its embeddings: rows of tokens absent from the batch get
    # no gradient, hence ~70 % in fp32.
    assert fp32_policy > 0.95 and fp32_value > 0.5
    assert bf16_policy > 0.95 * fp32_policy, (bf16_policy, fp32_policy)
    assert bf16_value > 0.95 * fp32_value, (bf16_value, fp32_value)


def test_a_bf16_ppo_trainer_keeps_fp32_master_weights_and_a_bf16_forward(tok):
    policy = build_tiny_llama(tok, SPEC, seed=1).to(torch.bfloat16)
    value = value_model_like(policy, seed=7).to(torch.bfloat16)
    ref = copy.deepcopy(policy)
    cfg = PPOConfig(steps=1, rollout_batch_size=4, num_generations=1, mini_batch_size=4, max_new_tokens=4)
    trainer = PPOTrainer(cfg, policy, ref, value, tok, PROMPTS, _reward)
    assert all(p.dtype == torch.float32 for p in trainer.policy_params + trainer.value_params)
    assert all(p.dtype == torch.bfloat16 for p in ref.parameters())      # frozen: stays as loaded
    assert trainer.autocast_dtype == torch.bfloat16                       # the forward runs in bf16
    ids = torch.tensor([tok("the fox jumps").input_ids])
    with trainer.autocast():
        hidden = policy.model(input_ids=ids).last_hidden_state
        assert policy.lm_head(hidden).dtype == torch.bfloat16


# ---------------------------------------------------------------------------
# GRPO / RLOO (TRL): the stage's own trainer, one step on a bf16 run
# ---------------------------------------------------------------------------

def _critic_free_fraction(tmp_path, tok, algorithm: str, dtype: str, monkeypatch) -> float:
    from smlearn.train import rl_trl

    cfg = RunConfig()
    cfg.model.name_or_path, cfg.model.dtype, cfg.model.device = str(tmp_path / "base"), dtype, "cpu"
    cfg.data.source = str(tmp_path / "data.jsonl")
    cfg.log.report_to = ["none"]
    cfg.rl.algorithm, cfg.rl.steps, cfg.rl.learning_rate = algorithm, 1, LR
    cfg.rl.rollout_batch_size, cfg.rl.num_generations, cfg.rl.max_new_tokens = 4, 4, 6
    run = Run(tmp_path / f"run-{algorithm}-{dtype}", cfg)
    run.root.mkdir(parents=True)
    build_tiny_llama(tok, SPEC, seed=1, save_dir=run.path("sft", "model"))

    seen = {}
    base_config, base_trainer = rl_trl._trainer_classes(algorithm)

    class Recording(base_trainer):            # the real TRL trainer; records its weights around train()
        def train(self, *args, **kwargs):
            seen["before"] = _snapshot(self.model)
            out = super().train(*args, **kwargs)
            seen["fraction"] = changed_fraction(seen["before"], self.model)
            return out

    monkeypatch.setattr(rl_trl, "_trainer_classes", lambda algo: (base_config, Recording))
    reward = lambda prompts, responses, idx, finished: {"reward": [float(len(r) % 5) for r in responses]}  # noqa: E731
    rl_trl.train_critic_free(run, [None] * 4, PROMPTS, reward, progress=False)
    return seen["fraction"]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_bf16_critic_free_step_changes_the_weights_as_in_fp32(tmp_path, tok, algorithm, monkeypatch):
    """Defect 1 (GRPO/RLOO): the policy TRL trains keeps fp32 weights when the run loads bf16."""
    fp32 = _critic_free_fraction(tmp_path, tok, algorithm, "float32", monkeypatch)
    bf16 = _critic_free_fraction(tmp_path, tok, algorithm, "bfloat16", monkeypatch)
    print(f"{algorithm} step at lr {LR}: entries changed fp32 {fp32:.4f}, bf16 {bf16:.4f}")
    assert fp32 > 0.9
    assert bf16 > 0.95 * fp32, (bf16, fp32)


# ---------------------------------------------------------------------------
# Defect 2: the RM's new score head under LoRA on a bf16 backbone
# ---------------------------------------------------------------------------

def _rm_rows(n: int = 8) -> list[dict]:
    return [{"prompt": f"Q: what is {i} plus {i}? A:", "chosen": f" {i} plus {i} is {2 * i}. The answer is {2 * i}.",
             "rejected": f" the fox. The answer is {i}."} for i in range(n)]


def test_rm_lora_score_head_trains_in_fp32_on_a_bf16_backbone(tmp_path, tok):
    """Defect 2: PEFT's modules_to_save (the RM's new `score` head) stayed bf16 on a bf16 backbone."""
    from smlearn.train.rm import build_rm_trainer

    cfg = RunConfig()
    cfg.model.name_or_path, cfg.model.device, cfg.data.source = "unused", "cpu", "unused.jsonl"
    cfg.log.report_to = ["none"]
    cfg.rm.lora.enabled, cfg.rm.learning_rate, cfg.rm.batch_size, cfg.rm.epochs, cfg.rm.max_length = \
        True, LR, 8, 1.0, 64
    run = Run(tmp_path / "run", cfg)
    policy = build_tiny_llama(tok, SPEC, seed=1)
    model = value_model_like(policy, seed=7).to(torch.bfloat16)        # as train_rm loads a LoRA backbone on a GPU
    model.config.pad_token_id = tok.pad_token_id
    trainer = build_rm_trainer(run, model, tok, _rm_rows(), progress=False)
    head = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad and "score" in n}
    assert head, "the score head must be trainable (modules_to_save)"
    dtypes = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = {n: p.detach().float().clone() for n, p in head.items()}
    trainer.train()
    fraction = changed_fraction(before, trainer.model)
    print(f"RM LoRA step at lr {LR}: score head entries changed {fraction:.4f}; trainable dtypes "
          f"{sorted({str(d) for d in dtypes.values()})}")
    assert all(d == torch.float32 for d in dtypes.values()), {n: d for n, d in dtypes.items() if d != torch.float32}
    assert fraction > 0.95
