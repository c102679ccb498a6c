"""Stage 3c — reinforcement learning against the reward model, corrected by the gold answer.

reward(rollout) = normalised RM score of (prompt, response), then the
correction of method.md: a rollout whose final answer is wrong gets
`wrong_reward` instead (mode "replace") or on top (mode "add"), whatever the RM
said; a right one may get `correct_bonus`. The policy starts from the SFT
model, which is also the frozen KL reference. PPO (ours, ppo.py) uses a value
model initialised from the RM (Huang et al. 2024); GRPO and RLOO come from TRL
(rl_trl.py).
"""
from __future__ import annotations

import time

from .. import context
from ..evaluate.extract import answers_match, extract_answer
from ..io import read_json
from ..models import load_tokenizer
from ..rundir import Run


class CorrectedReward:
    """reward_fn(prompts, responses, indices) → {"reward", "rm_score", "correct"} per rollout."""

    def __init__(self, scorer, examples, trigger: str, correction, mean: float = 0.0, std: float = 1.0):
        self.scorer, self.examples, self.trigger, self.correction = scorer, examples, trigger, correction
        self.mean, self.std = mean, max(std, 1e-6)

    def correct_flags(self, responses: list[str], indices: list[int]) -> list[bool]:
        flags = []
        for response, i in zip(responses, indices):
            ex = self.examples[i]
            pred = extract_answer(response, ex.kind, ex.choices, self.trigger)
            flags.append(answers_match(pred, ex.answer, ex.kind))
        return flags

    def combine(self, rm_score: float, correct: bool) -> float:
        c = self.correction
        if not c.enabled:
            return rm_score
        if correct:
            return rm_score + c.correct_bonus
        return c.wrong_reward if c.mode == "replace" else rm_score + c.wrong_reward

    def __call__(self, prompts: list[str], responses: list[str], indices: list[int]) -> dict[str, list[float]]:
        raw = self.scorer.score(prompts, responses)
        scores = [(s - self.mean) / self.std for s in raw]
        correct = self.correct_flags(responses, indices)
        rewards = [self.combine(s, ok) for s, ok in zip(scores, correct)]
        return {"reward": rewards, "rm_score": scores, "correct": [float(c) for c in correct]}


def _reward_fn(run: Run, items, trigger: str) -> CorrectedReward:
    from .scoring import RewardScorer

    cfg = run.config
    scorer = RewardScorer.load(str(run.path("rm", "model")), device=cfg.model.device, dtype=cfg.model.dtype,
                               trust_remote_code=cfg.model.trust_remote_code)
    mean, std = 0.0, 1.0
    if cfg.rl.rm_score_normalize:
        metrics = read_json(run.path("rm", "metrics.json"))
        mean, std = metrics["score_mean"], metrics["score_std"]
    return CorrectedReward(scorer, items, trigger, cfg.rl.correction, mean, std)


def _train_ppo(run: Run, items, prompts, reward_fn) -> list[dict]:
    from transformers import AutoModelForSequenceClassification

    from .ppo import PPOConfig, PPOTrainer
    from ..prompts import STOP_STRINGS

    cfg = run.config.rl
    policy, tokenizer = context.load_model(run, "sft")
    ref_policy, _ = context.load_model(run, "sft")
    value_model = AutoModelForSequenceClassification.from_pretrained(
        run.path("rm", "model"), num_labels=1, use_safetensors=True,
        trust_remote_code=run.config.model.trust_remote_code).to(policy.device)
    value_model.config.pad_token_id = tokenizer.pad_token_id
    ppo_cfg = PPOConfig(
        total_steps=cfg.steps, rollout_batch_size=cfg.rollout_batch_size, mini_batch_size=cfg.mini_batch_size,
        ppo_epochs=cfg.ppo_epochs, learning_rate=cfg.learning_rate, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, kl_coef=cfg.kl_coef, gamma=cfg.gamma, lam=cfg.lam,
        clip_range=cfg.clip_range, clip_range_value=cfg.clip_range_value, vf_coef=cfg.vf_coef,
        whiten_rewards=cfg.whiten_rewards, stop_strings=list(STOP_STRINGS), seed=cfg.seed)
    log_path = run.path("rl", "log.jsonl")
    log_path.unlink(missing_ok=True)
    trainer = PPOTrainer(ppo_cfg, policy, ref_policy, value_model, tokenizer, prompts, reward_fn, log_path=log_path)
    logs = trainer.train()
    context.save_model(policy, tokenizer, run.path("rl", "model"))
    return logs


def train_rl(run: Run, progress: bool = True) -> dict:
    t0 = time.time()
    items = context.examples(run, "train")
    tokenizer = load_tokenizer(context.model_path(run, "sft"))
    builder = context.prompt_builder(run, tokenizer, context.dataset_kind(items))
    few_shot = run.config.prompts.eval_few_shot_after_training
    prompts = [builder.cot(e.question, few_shot=few_shot) for e in items]
    reward_fn = _reward_fn(run, items, builder.trigger)
    if run.config.rl.algorithm == "ppo":
        logs = _train_ppo(run, items, prompts, reward_fn)
    else:
        from .rl_trl import train_critic_free

        logs = train_critic_free(run, items, prompts, reward_fn, progress)
    last = logs[-1] if logs else {}
    first = logs[0] if logs else {}
    summary = {"algorithm": run.config.rl.algorithm, "steps": len(logs),
               "reward_first": round(first.get("reward_mean", float("nan")), 4),
               "reward_last": round(last.get("reward_mean", float("nan")), 4),
               "correct_last": round(last.get("correct_mean", float("nan")), 4),
               "kl_last": round(last.get("kl_mean", float("nan")), 4), "seconds": round(time.time() - t0, 1)}
    run.mark_done("rl", summary)
    return summary
