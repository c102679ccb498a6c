"""Critic-free RL variants from TRL: GRPO and RLOO, with the same corrected reward as PPO.

TRL calls reward functions as f(prompts, completions, **dataset_columns); ours
maps each completion back to its question through the `question_index`
column, cuts it at the stop strings (TRL's generation has none), and applies
the gold-answer correction of `rl.CorrectedReward`. Each reward call is one
generation batch; its means become one row of rl/log.jsonl, like a PPO step.
"""
from __future__ import annotations

from .. import context
from ..generate.engine import truncate_at_stop
from ..io import write_jsonl
from ..models import resolve_device
from ..prompts import STOP_STRINGS
from ..rundir import Run
from .lora import use_bf16
from .sft import drop_log_printer, quiet_unless


class _LoggedReward:
    """TRL reward function wrapper that records what each generation batch scored."""

    __name__ = "sml_corrected_reward"

    def __init__(self, reward_fn, tokenizer):
        self.reward_fn, self.tokenizer, self.rows = reward_fn, tokenizer, []

    def __call__(self, prompts, completions, question_index, **_):
        responses = [truncate_at_stop(c, STOP_STRINGS) for c in completions]
        out = self.reward_fn(list(prompts), responses, list(question_index))
        lengths = [len(self.tokenizer(r, add_special_tokens=False).input_ids) for r in responses]
        row = {"step": len(self.rows) + 1, "response_length_mean": sum(lengths) / len(lengths)}
        for key, values in out.items():
            row[f"{key}_mean"] = sum(values) / len(values)
        self.rows.append(row)
        return out["reward"]


def _trainer_classes(algorithm: str):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    return (GRPOConfig, GRPOTrainer) if algorithm == "grpo" else (RLOOConfig, RLOOTrainer)


def train_critic_free(run: Run, items, prompts: list[str], reward_fn, progress: bool = True) -> list[dict]:
    from datasets import Dataset

    cfg = run.config.rl
    policy, tokenizer = context.load_model(run, "sft")
    policy.train()
    device = resolve_device(run.config.model.device)
    config_cls, trainer_cls = _trainer_classes(cfg.algorithm)
    args = config_cls(
        output_dir=str(run.path("rl", "trainer")), max_steps=cfg.steps, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.rollout_batch_size, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, beta=cfg.kl_coef,
        seed=cfg.seed, report_to="none", save_strategy="no", logging_steps=1, bf16=use_bf16(device),
        use_cpu=device.type == "cpu", disable_tqdm=not progress, activation_checkpointing=False)
    dataset = Dataset.from_list([{"prompt": p, "question_index": i} for i, p in enumerate(prompts)])
    logged = _LoggedReward(reward_fn, tokenizer)
    with quiet_unless(progress):
        trainer = trainer_cls(model=policy, reward_funcs=[logged], args=args, train_dataset=dataset,
                              processing_class=tokenizer)
        drop_log_printer(trainer, progress)
        trainer.train()
    # TRL's own per-step metrics (KL to the reference when beta > 0) complete our rows.
    trl_logs = [h for h in trainer.state.log_history if "loss" in h or "kl" in h]
    for row, h in zip(logged.rows, trl_logs):
        row["kl_mean"] = h.get("kl", float("nan"))
    write_jsonl(run.path("rl", "log.jsonl"), logged.rows)
    context.save_model(trainer.model.eval(), tokenizer, run.path("rl", "model"))
    return logged.rows
