"""Critic-free RL variants from TRL: GRPO and RLOO, with the same corrected reward and `rl` config as PPO.

TRL calls reward functions as f(prompts, completions, completion_ids, **dataset_columns); ours maps each
completion back to its question through the `question_index` column and applies the gold-answer correction
of `rl.CorrectedReward`. Each reward call is one generation batch; its means become one row of
rl/log.jsonl, like a PPO step.

Stop strings: the prompt format ends an answer at "\\nQ:" / a blank line, which TRL's own generation does
not know. GRPO's rollouts therefore come from smlearn's engine (TRL's `rollout_func`): each completion ends
at EOS or at the token that completes a stop string, so the loss and KL cover exactly the tokens the reward
saw. RLOO has no such hook: a completion that ran on past a stop string is treated as unfinished (wrong,
plus rl.missing_eos_penalty), so training past the answer is penalised rather than rewarded.
"""
from __future__ import annotations

import contextlib
import os

import torch

from .. import dist, stage_io
from ..generate.engine import EngineOptions, SamplingParams, encode_prompt, generate_ids
from ..io import write_jsonl
from ..models import resolve_device
from ..prompts import STOP_STRINGS, truncate_at_stop
from ..rundir import Run
from .common import build_lora_config, merge_lora, quiet_unless, upcast_trainable
from ..tracking import MetricLogger, hf_report_to, run_name, setup_trainer_callbacks


def _stop_end(text: str) -> int | None:
    """Where the first stop string in `text` ends, or None when there is none."""
    hits = [(i, len(s)) for s in STOP_STRINGS if (i := text.find(s)) >= 0]
    return min(i + n for i, n in hits) if hits else None


def _ran_past_stop(text: str) -> bool:
    """Text after the first stop string: the completion went on past the end of its answer."""
    end = _stop_end(text)
    return end is not None and bool(text[end:].strip())


class _LoggedReward:
    """TRL reward function wrapper that records what each generation batch scored."""

    __name__ = "sml_corrected_reward"

    def __init__(self, reward_fn, tokenizer, eos_ids: set[int], missing_eos_penalty: float | None):
        self.reward_fn, self.tokenizer, self.rows = reward_fn, tokenizer, []
        self.eos_ids, self.missing_eos_penalty = eos_ids, missing_eos_penalty

    def __call__(self, prompts, completions, question_index, completion_ids=None, **_):
        responses = [truncate_at_stop(c, STOP_STRINGS) for c in completions]
        ids = completion_ids or [[] for _ in completions]
        # Finished: ended with EOS or with a stop string, and nothing generated past a stop string.
        finished = [not _ran_past_stop(c) and ((bool(i) and i[-1] in self.eos_ids) or _stop_end(c) is not None)
                    for c, i in zip(completions, ids)]
        out = self.reward_fn(list(prompts), responses, list(question_index), finished)
        rewards = list(out["reward"])
        if self.missing_eos_penalty is not None:
            rewards = [r - self.missing_eos_penalty * (not f) for r, f in zip(rewards, finished)]
        lengths = [len(self.tokenizer(r, add_special_tokens=False).input_ids) for r in responses]
        row = {"step": len(self.rows) + 1, "response_length_mean": sum(lengths) / len(lengths),
               "finished_frac": sum(finished) / len(finished)}
        for key, values in out.items():
            row[f"{key}_mean"] = sum(values) / len(values)
        self.rows.append(row)
        return rewards


def engine_rollout(params: SamplingParams, options: EngineOptions, autocast_dtype: torch.dtype | None = None):
    """A TRL `rollout_func`: completions from smlearn's engine, ending at EOS or a stop string; with
    `autocast_dtype` (bf16 runs: fp32 master weights) the rollouts run in that precision, as the updates."""

    def rollout(prompts, trainer):
        tok = trainer.processing_class
        prompt_ids = [encode_prompt(tok, p) for p in prompts]
        with full_model(trainer) as model:          # DeepSpeed ZeRO-3: the weights gathered for generation
            was_training = model.training
            model.eval()
            device = next(model.parameters()).device
            precision = (torch.autocast(device_type=device.type, dtype=autocast_dtype)
                         if autocast_dtype is not None else contextlib.nullcontext())
            try:
                with precision:
                    completion_ids = generate_ids(model, tok, prompt_ids, params, options)
            finally:
                model.train(was_training)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def full_model(trainer):
    """A context giving the trainer's model unwrapped for generation (from DDP); under DeepSpeed ZeRO-3 its
    weights are gathered from the processes for the duration (TRL's unwrap_model_for_generation)."""
    if dist.zero_stage() == 3:
        from trl.models import unwrap_model_for_generation

        return unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator)
    return contextlib.nullcontext(trainer.accelerator.unwrap_model(trainer.model))


def _trainer_classes(algorithm: str):
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    return (GRPOConfig, GRPOTrainer) if algorithm == "grpo" else (RLOOConfig, RLOOTrainer)


def _eval_callback(evaluate, every: int, total: int, results: dict, trainer_box: list):
    """A Trainer callback that records evaluate() (greedy accuracy on held-out questions) at step 0 and every
    `every` steps, into results[step]. trainer_box[0] is the trainer (set once it exists)."""
    from transformers import TrainerCallback

    class EvalCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            results[0] = self._run()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step == total:
                results[state.global_step] = self._run()

        @staticmethod
        def _run():
            with full_model(trainer_box[0]) as model:
                was_training = model.training
                model.eval()
                try:
                    return evaluate(model)
                finally:
                    model.train(was_training)

    return EvalCallback()


def train_critic_free(run: Run, items, prompts: list[str], reward_fn, progress: bool = True,
                      evaluate_fn=None) -> list[dict]:
    """GRPO or RLOO; `evaluate_fn(model)` (greedy accuracy on held-out questions) is logged at step 0 and
    every rl.eval_every steps, as PPO does."""
    from datasets import Dataset

    cfg = run.config.rl
    policy, tokenizer = stage_io.load_model(run, "sft")
    # Precision: a bf16 run trains fp32 master weights under TRL's bf16 mixed precision (autocast); AdamW on
    # the bf16 weights themselves would round small updates away. The model is saved in the dtype it came in.
    save_dtype = policy.dtype
    bf16 = save_dtype == torch.bfloat16
    peft_config = None
    if cfg.lora.enabled:
        # LoRA: TRL wraps the policy (adapters in fp32, the backbone as loaded) and computes the reference
        # log-probs with the adapters disabled: no second copy of the model.
        peft_config = build_lora_config(cfg.lora, "causal_lm")
    else:
        upcast_trainable(policy)
    policy.train()
    device = resolve_device(run.config.model.device)
    config_cls, trainer_cls = _trainer_classes(cfg.algorithm)
    # rl.rollout_batch_size counts completions per step, as in PPO: TRL's per_device_train_batch_size times the
    # number of processes (smlearn.dist; TRL deals the groups out across them).
    args = config_cls(
        output_dir=str(run.path("rl", "trainer")), max_steps=cfg.steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=dist.per_process(cfg.rollout_batch_size, "rl.rollout_batch_size"),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
        beta=cfg.kl_coef, seed=cfg.seed, report_to=hf_report_to(run), run_name=run_name(run, "rl"), save_strategy="no", logging_steps=1,
        bf16=bf16, use_cpu=device.type == "cpu", disable_tqdm=not progress,
        activation_checkpointing=False)
    dataset = Dataset.from_list([{"prompt": p, "question_index": i} for i, p in enumerate(prompts)])
    eos = {tokenizer.eos_token_id} - {None}
    logged = _LoggedReward(reward_fn, tokenizer, eos, cfg.missing_eos_penalty)
    extra = {}
    if cfg.algorithm == "grpo":
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                                top_p=cfg.top_p, stop_strings=tuple(STOP_STRINGS), use_generation_config=False)
        extra["rollout_func"] = engine_rollout(params, stage_io.engine_options(run), torch.bfloat16 if bf16 else None)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    evals: dict[int, dict] = {}
    trainer_box: list = []
    if evaluate_fn is not None and cfg.eval_every > 0:
        extra["callbacks"] = [_eval_callback(evaluate_fn, cfg.eval_every, cfg.steps, evals, trainer_box)]
    with quiet_unless(progress):
        trainer = trainer_cls(model=policy, reward_funcs=[logged], args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config, **extra)
        trainer_box.append(trainer)
        setup_trainer_callbacks(trainer, run, "rl", progress)
        trainer.train()
    # TRL's own per-step metrics (KL to the reference when beta > 0) complete our rows.
    trl_logs = [h for h in trainer.state.log_history if "loss" in h or "kl" in h]
    for row, h in zip(logged.rows, trl_logs):
        row["kl_mean"] = h.get("kl", float("nan"))
    # Several processes: each logged its own completions; the log holds the means over all of them.
    logged.rows = [dist.mean_across(row) for row in logged.rows]
    for step, result in evals.items():
        if step == 0 and logged.rows:
            logged.rows[0].update({f"initial_{k}": v for k, v in result.items()})
        elif 0 < step <= len(logged.rows):
            logged.rows[step - 1].update(result)
    write_jsonl(run.path("rl", "log.jsonl"), logged.rows)
    # The reward's parts per step (TRL's own metrics are in tb/rl/ already).
    parts = MetricLogger(run, "rl-reward")
    for step, row in enumerate(logged.rows, start=1):
        parts.log(row, step)
    parts.close()
    trained = merge_lora(trainer.model, run.path("rl", "adapter") if peft_config is not None else None)
    stage_io.save_model(trained.eval().to(save_dtype), tokenizer, run.path("rl", "model"),
                       dist.gathered_state_dict(trainer))
    return logged.rows
