"""Stage 5, rl — reinforcement learning against the reward model, corrected by the gold answer.

reward(rollout), with z the RM score standardised by its mean/std on the training pairs and the RM term
t = rl.rm_weight * tanh(z), bounded in (-w, w):
    correction off:            t                               (the RM alone)
    replace (default), right:  t + correct_bonus      wrong:  wrong_reward
    add,               right:  t + correct_bonus      wrong:  t + wrong_reward
A rollout is right only when it states its answer ("The answer is X") and that answer matches the gold one;
a rollout cut at max_new_tokens is wrong. The config check (RLStageConfig.validate) makes every right
rollout out-reward every wrong one, whatever the RM says (docs/method.md, stage 5).

The policy starts from the SFT model, which is also the frozen KL reference. PPO (ours, ppo.py) uses a value
model initialised from the RM, its head rescaled to the standardised scale (Huang et al. 2024); GRPO and RLOO
come from TRL (rl_trl.py). RL trains on the questions of `rl.split` (default: the training split), less
`rl.eval_questions` held out to watch greedy accuracy during training.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from .. import dist, stage_io
from ..data import load_split
from ..answers import answers_match, extract_answer
from ..io import read_json
from ..models import load_tokenizer
from ..prompts import STOP_STRINGS
from ..rundir import Run
from ..tracking import MetricLogger


class CorrectedReward:
    """reward_fn(prompts, responses, indices, finished) → {"reward", "rm_score", "correct"} per rollout.

    `rm_score` is the standardised score z; `correct` is 1.0 when the response is finished, states its answer
    and the answer is the gold one."""

    def __init__(self, scorer, examples, trigger: str, rl_config, mean: float = 0.0, std: float = 1.0):
        self.scorer, self.examples, self.trigger = scorer, examples, trigger
        self.correction, self.rm_weight = rl_config.correction, rl_config.rm_weight
        self.mean, self.std = mean, max(std, 1e-6)

    def correct_flags(self, responses: list[str], indices: list[int], finished: list[bool]) -> list[bool]:
        flags = []
        for response, i, done in zip(responses, indices, finished):
            ex = self.examples[i]
            pred = extract_answer(response, ex.kind, ex.choices, self.trigger, strict=True)
            flags.append(bool(done) and answers_match(pred, ex.answer, ex.kind))
        return flags

    def combine(self, z: float, correct: bool) -> float:
        """The reward of one rollout from its standardised RM score and its correctness (see the module doc)."""
        c = self.correction
        term = self.rm_weight * math.tanh(z)
        if not c.enabled:
            return term
        if correct:
            return term + c.correct_bonus
        return c.wrong_reward if c.mode == "replace" else term + c.wrong_reward

    def __call__(self, prompts: list[str], responses: list[str], indices: list[int],
                 finished: list[bool] | None = None) -> dict[str, list[float]]:
        finished = [True] * len(responses) if finished is None else finished
        raw = self.scorer.score(prompts, responses)
        scores = [(s - self.mean) / self.std for s in raw]
        correct = self.correct_flags(responses, indices, finished)
        rewards = [self.combine(s, ok) for s, ok in zip(scores, correct)]
        return {"reward": rewards, "rm_score": scores, "correct": [float(c) for c in correct]}


def rm_normalisation(run: Run) -> tuple[float, float]:
    """(mean, std) that standardise the RM's scores: its scores on the training completions, or (0, 1)."""
    if not run.config.rl.rm_score_normalize:
        return 0.0, 1.0
    metrics = read_json(run.path("rm", "metrics.json"))
    return float(metrics["score_mean"]), float(metrics["score_std"])


def _reward_fn(run: Run, items, trigger: str) -> CorrectedReward:
    from .reward_scorer import RewardScorer

    cfg = run.config
    scorer = RewardScorer.load(str(run.path("rm", "model")), device=cfg.model.device, dtype=cfg.model.dtype,
                               trust_remote_code=cfg.model.trust_remote_code)
    mean, std = rm_normalisation(run)
    return CorrectedReward(scorer, items, trigger, cfg.rl, mean, std)


def standardise_value_head(value_model, mean: float, std: float) -> None:
    """[detail: initialise the value model from the reward model] on the scale the rewards use: the RM head
    s = w.h gives raw scores, the rewards are built from z = (s - mean) / std, so the value head becomes
    w' = w / std with bias -mean / std (a new biased Linear; the RM head has no bias)."""
    head = value_model.score
    std = max(std, 1e-6)
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True, device=head.weight.device,
                          dtype=head.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(head.weight / std)
        bias = head.bias if head.bias is not None else torch.zeros_like(new.bias)
        new.bias.copy_((bias - mean) / std)
    value_model.score = new


def rl_questions(run: Run) -> tuple[list, list]:
    """(questions RL trains on, held-out questions for greedy accuracy during RL): the last
    rl.eval_questions of rl.split are held out. The reward model's extra questions (generate.rm_questions,
    when they come from rl.split) are left out: the RM was trained or evaluated on their rationales."""
    cfg = run.config.rl
    items = stage_io.examples(run, "train") if cfg.split == "train" else load_split(run.config.data, cfg.split)
    if cfg.split != "train" and cfg.split == run.config.generate.rm_split:
        rm_ids = {e.id for e in stage_io.rm_examples(run)}
        items = [e for e in items if e.id not in rm_ids]
    n_eval = min(cfg.eval_questions, max(0, len(items) - 1))
    return (items[:len(items) - n_eval], items[len(items) - n_eval:]) if n_eval else (items, [])


def greedy_accuracy_fn(tokenizer, builder, items, few_shot: bool, max_new_tokens: int, engine: str):
    """A function model -> {"eval_accuracy": greedy CoT accuracy of the model on `items`}."""
    from ..evaluate.score import score_predictions
    from ..generate.engine import EngineOptions, SamplingParams, generate_texts

    prompts = [builder.cot(e.question, few_shot=few_shot) for e in items]
    params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=False, stop_strings=tuple(STOP_STRINGS))

    def evaluate(policy) -> dict:
        outs = dist.merge_shards(generate_texts(policy, tokenizer, prompts, params, batch_size=64, progress=False,
                                                options=EngineOptions(engine=engine), shard=dist.shard()))
        result = score_predictions(items, {e.id: o for e, o in zip(items, outs)}, trigger=builder.trigger)
        return {"eval_accuracy": result.accuracy}

    return evaluate


def _train_ppo(run: Run, items, prompts, reward_fn, evaluate_fn=None) -> list[dict]:
    from .ppo import PPOTrainer
    from .reward_scorer import load_reward_backbone

    from .common import build_lora_config, merge_lora

    cfg = run.config
    lora = cfg.rl.lora.enabled
    policy, tokenizer = stage_io.load_model(run, "sft")
    save_dtype = policy.dtype          # the trainer keeps fp32 master weights; the model is saved as loaded
    if lora:
        # The policy is LoRA adapters on the SFT weights; with the adapters disabled it is the SFT model, the
        # KL reference, so no second copy is loaded. The value model is adapters (and its head) on the RM
        # backbone, which stays in the run's dtype.
        from peft import get_peft_model

        torch.manual_seed(cfg.rl.seed)     # the adapters' random init: one rl.seed, one init
        policy = get_peft_model(policy, build_lora_config(cfg.rl.lora, "causal_lm"))
        ref_policy = None
        value_dtype = save_dtype
    else:
        ref_policy, _ = stage_io.load_model(run, "sft")
        value_dtype = torch.float32
    value_model = load_reward_backbone(run.path("rm", "model"), dtype=value_dtype,
                                       trust_remote_code=cfg.model.trust_remote_code).to(policy.device)
    value_model.config.pad_token_id = tokenizer.pad_token_id
    standardise_value_head(value_model, *rm_normalisation(run))
    if lora:
        value_model = get_peft_model(value_model, build_lora_config(cfg.rl.lora, "seq_cls"))
    log_path = run.path("rl", "log.jsonl")
    if dist.is_main():
        log_path.unlink(missing_ok=True)
    metrics = MetricLogger(run, "rl", config=dataclasses.asdict(cfg.rl))
    trainer = PPOTrainer(cfg.rl, policy, ref_policy, value_model, tokenizer, prompts, reward_fn,
                         log_path=log_path, stop_strings=list(STOP_STRINGS), engine=cfg.model.engine,
                         metric_logger=metrics)
    try:
        logs = trainer.train((lambda: evaluate_fn(policy)) if evaluate_fn else None)
    finally:
        metrics.close()
    trained = merge_lora(policy, run.path("rl", "adapter") if lora else None)
    stage_io.save_model(trained.to(save_dtype), tokenizer, run.path("rl", "model"))
    return logs


def train_rl(run: Run, progress: bool = True) -> dict:
    t0 = time.time()
    items, heldout = rl_questions(run)
    tokenizer = load_tokenizer(stage_io.model_path(run, "sft"))
    builder = stage_io.prompt_builder(run, tokenizer, stage_io.dataset_kind(items))
    few_shot = run.config.prompts.eval_few_shot_after_training
    prompts = [builder.cot(e.question, few_shot=few_shot) for e in items]
    reward_fn = _reward_fn(run, items, builder.trigger)
    evaluate_fn = None
    if heldout:
        evaluate_fn = greedy_accuracy_fn(tokenizer, builder, heldout, few_shot, run.config.rl.max_new_tokens,
                                         run.config.model.engine)
    if run.config.rl.algorithm == "ppo":
        logs = _train_ppo(run, items, prompts, reward_fn, evaluate_fn)
    else:
        from .rl_trl import train_critic_free

        logs = train_critic_free(run, items, prompts, reward_fn, progress, evaluate_fn)
    last = logs[-1] if logs else {}
    first = logs[0] if logs else {}
    evals = [log["eval_accuracy"] for log in logs if "eval_accuracy" in log]
    summary = {"algorithm": run.config.rl.algorithm, "steps": len(logs), "questions": len(items),
               "rollouts": run.config.rl.steps * run.config.rl.rollout_batch_size,
               "reward_first": round(first.get("reward_mean", float("nan")), 4),
               "reward_last": round(last.get("reward_mean", float("nan")), 4),
               "correct_last": round(last.get("correct_mean", float("nan")), 4),
               "kl_last": round(last.get("kl_mean", float("nan")), 4), "seconds": round(time.time() - t0, 1)}
    if evals:
        initial = first.get("initial_eval_accuracy")
        summary.update(heldout_questions=len(heldout), eval_accuracy_last=round(evals[-1], 4))
        if initial is not None:
            summary["eval_accuracy_initial"] = round(initial, 4)
    run.mark_done("rl", summary)
    return summary
