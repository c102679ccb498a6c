"""The GPU numbers of docs/performance.md, in one run of under 10 minutes on one H100 / H200.

  python benchmarks/gpu_check.py --json gpu_check.json          # on the GPU machine, offline
  python benchmarks/gpu_check.py --smoke                        # tiny sizes, CPU: checks the script runs

Models are Llamas built from a config with random weights (nothing is downloaded), in bf16:
  - "134M": hidden 768, 16 layers, 12 heads (4 KV), MLP 3072, vocab 4096 (~134M parameters);
  - "1.1B" (TinyLlama-1.1B's shape): hidden 2048, 22 layers, 32 heads (4 KV), MLP 5632, vocab 32000.
Prompts are random token ids; the EOS id is one the model never emits, so every row decodes all its new
tokens and both engines do the same work.

1. generation: smlearn's engine vs Hugging Face `generate` on left-padded batches (the same batch size),
   134M, 256 prompts of 256 tokens, 128 new tokens, greedy. New tokens/s each, the ratio (target >= 10x),
   and the fraction of the memory-bandwidth bound (weights + KV cache read once per decode step).
2. SFT: tokens/s and MFU of the SFT stage's trainer (TRL SFTTrainer through smlearn.train.sft) on the
   134M model, sequences of 512 tokens; MFU = 6 N tokens/s / peak bf16 FLOP/s (dense).
3. PPO: one step of smlearn's PPO (134M policy, value and reward model), split into rollout (generation),
   scoring (the reward model), the log-prob / value forwards and the update.
4. LoRA RL memory: peak `torch.cuda.max_memory_allocated` of PPO steps with rl.lora on the 1.1B model
   (policy + value adapters, reward model), and of the same step full-parameter for comparison.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# Dense bf16 peak FLOP/s and memory bandwidth (bytes/s) of the cards we know.
PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}
SHAPES = {
    "134M": dict(hidden_size=768, num_hidden_layers=16, num_attention_heads=12, num_key_value_heads=4,
                 intermediate_size=3072, vocab_size=4096),
    "1.1B": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000),
    "smoke": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512),
}


def tokenizer_for(vocab: int):
    """A real BPE tokenizer (decode, pad id) whose ids cover the model's vocabulary."""
    from smlearn.models import build_bpe_tokenizer

    words = [f"w{i} x{i % 97} y{i % 31}" for i in range(4000)]
    return build_bpe_tokenizer(words, vocab_size=min(vocab, 4096))


def llama(shape: str, device, dtype=torch.bfloat16, seq_cls: bool = False, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = SHAPES[shape]
    torch.manual_seed(seed)
    config = LlamaConfig(**cfg, max_position_embeddings=2048, bos_token_id=0, pad_token_id=2,
                         eos_token_id=cfg["vocab_size"] + 7,      # never emitted: every row runs its full length
                         tie_word_embeddings=False, num_labels=1)
    model = (LlamaForSequenceClassification if seq_cls else LlamaForCausalLM)(config)
    with torch.no_grad():                                          # non-flat next-token distributions
        model.model.embed_tokens.weight.mul_(10.0)
    if not seq_cls:
        model.generation_config.eos_token_id = config.eos_token_id
    return model.to(device=device, dtype=dtype).eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def card(device) -> tuple[str, float | None, float | None]:
    if device.type != "cuda":
        return "cpu", None, None
    name = torch.cuda.get_device_name(device)
    for key, (flops, bw) in PEAKS.items():
        if key in name:
            return name, flops, bw
    return name, None, None


# ---------------------------------------------------------------------------

def bench_generation(device, args) -> dict:
    from smlearn.generate.engine import EngineOptions, SamplingParams, _generate_hf, generate_ids

    model = llama(args.gen_model, device)
    tok = tokenizer_for(model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, min(model.config.vocab_size, len(tok)), (args.prompts, args.prompt_len),
                            generator=g).tolist()
    params = SamplingParams(max_new_tokens=args.new_tokens, do_sample=False)
    results = {}
    for name in ("hf_generate", "smlearn_engine"):
        torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
        # one warm-up batch, then the timed run over all prompts in batches of args.batch_size
        run = (lambda b: _generate_hf(model, tok, b, params)) if name == "hf_generate" else \
            (lambda b: generate_ids(model, tok, b, params, EngineOptions(engine="fast", share_prefix=False)))
        run(prompts[:args.batch_size])
        sync(device)
        t0 = time.perf_counter()
        new = 0
        for s in range(0, len(prompts), args.batch_size):
            out = run(prompts[s:s + args.batch_size])
            new += sum(min(len(o), args.new_tokens) for o in out)
        sync(device)
        seconds = time.perf_counter() - t0
        results[name] = {"seconds": round(seconds, 3), "new_tokens": new, "tokens_per_s": round(new / seconds, 1)}
        if device.type == "cuda":
            results[name]["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    results["speedup"] = round(results["smlearn_engine"]["tokens_per_s"] / results["hf_generate"]["tokens_per_s"], 2)
    # Bandwidth bound: each decode step reads the weights once and the batch's KV cache.
    _, _, bw = card(device)
    cfg = model.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    steps = (len(prompts) // args.batch_size) * args.new_tokens
    mean_ctx = args.prompt_len + args.new_tokens / 2
    bytes_moved = steps * (n_params(model) * 2 + args.batch_size * mean_ctx * kv_per_token)
    results["params"] = n_params(model)
    if bw:
        results["bandwidth_bound_fraction"] = round(bytes_moved / results["smlearn_engine"]["seconds"] / bw, 3)
    del model
    return results


def bench_sft(device, args, tmp: Path) -> dict:
    from smlearn.config import RunConfig
    from smlearn.rundir import Run
    from smlearn.train.sft import build_sft_trainer

    model = llama(args.gen_model, device, dtype=torch.float32)   # fp32 master weights, bf16 autocast (trainer)
    tok = tokenizer_for(model.config.vocab_size)
    cfg = RunConfig()
    cfg.model.name_or_path, cfg.data.source, cfg.log.report_to = "unused", "unused.jsonl", ["none"]
    cfg.sft.batch_size, cfg.sft.max_length, cfg.sft.epochs, cfg.sft.learning_rate = args.sft_batch, args.sft_len, 1.0, 1e-4
    g = torch.Generator().manual_seed(1)
    vocab = min(model.config.vocab_size, len(tok))

    def text(n):
        return tok.decode(torch.randint(3, vocab, (n,), generator=g).tolist())

    rows = [{"prompt": text(args.sft_len // 4), "completion": text(args.sft_len)} for _ in range(args.sft_batch * args.sft_steps)]
    run = Run(tmp / "sft-run", cfg)
    trainer = build_sft_trainer(run, model.train(), tok, rows, progress=False)
    tokens = sum(min(len(r["input_ids"]), args.sft_len) for r in trainer.train_dataset)
    sync(device)
    t0 = time.perf_counter()
    trainer.train()
    sync(device)
    seconds = time.perf_counter() - t0
    out = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
           "params": n_params(model), "batch": args.sft_batch, "seq_len": args.sft_len}
    _, flops, _ = card(device)
    if flops:
        out["mfu"] = round(6 * n_params(model) * tokens / seconds / flops, 3)
    del trainer, model
    return out


def _ppo_step(device, shape: str, lora: bool, args) -> dict:
    from peft import get_peft_model

    from smlearn.config import LoraConfig
    from smlearn.train.common import build_lora_config
    from smlearn.train.ppo import PPOConfig, PPOTrainer
    from smlearn.train.reward_scorer import RewardScorer

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    policy = llama(shape, device)
    tok = tokenizer_for(policy.config.vocab_size)
    value = llama(shape, device, seq_cls=True, seed=1)
    rm = RewardScorer(llama(shape, device, seq_cls=True, seed=2), tok)
    ref = None
    if lora:
        lcfg = LoraConfig(enabled=True, r=16, alpha=32, dropout=0.0)
        policy = get_peft_model(policy, build_lora_config(lcfg, "causal_lm"))
        value = get_peft_model(value, build_lora_config(lcfg, "seq_cls"))
    else:
        ref = copy.deepcopy(policy)
    timings = {"scoring_s": 0.0, "generation_s": 0.0}

    def reward_fn(prompts, responses, idx, finished):
        sync(device)
        t = time.perf_counter()
        scores = rm.score(prompts, responses)
        sync(device)
        timings["scoring_s"] += time.perf_counter() - t
        return {"reward": scores}

    g = torch.Generator().manual_seed(2)
    vocab = min(policy.config.vocab_size, len(tok))
    prompts = [tok.decode(torch.randint(3, vocab, (args.ppo_prompt_len,), generator=g).tolist()) for _ in range(64)]
    cfg = PPOConfig(steps=2, rollout_batch_size=args.ppo_batch, num_generations=1, mini_batch_size=args.ppo_mini,
                    ppo_epochs=1, max_new_tokens=args.new_tokens, learning_rate=1e-5)
    trainer = PPOTrainer(cfg, policy, ref, value, tok, prompts, reward_fn)
    sample = trainer.sample

    def timed_sample(p):
        sync(device)
        t = time.perf_counter()
        out = sample(p)
        sync(device)
        timings["generation_s"] += time.perf_counter() - t
        return out

    trainer.sample = timed_sample
    trainer.step(list(range(args.ppo_batch)))                 # warm-up step
    for key in timings:
        timings[key] = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    log = trainer.step(list(range(args.ppo_batch, 2 * args.ppo_batch)))
    out = {"model": shape, "lora": lora, "params": n_params(rm.model), "rollout_batch": args.ppo_batch,
           "generation_s": round(timings["generation_s"], 3), "scoring_s": round(timings["scoring_s"], 3),
           "logprob_value_forwards_s": round(log["rollout_s"] - timings["generation_s"] - timings["scoring_s"], 3),
           "update_s": log["update_s"], "step_s": round(log["time_s"], 3)}
    if device.type == "cuda":
        out["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    del trainer, policy, value, rm, ref
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks that the script runs")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: generation,sft,ppo,lora_memory")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.smoke:
        args.gen_model = args.lora_model = "smoke"
        args.prompts, args.prompt_len, args.new_tokens, args.batch_size = 8, 16, 8, 4
        args.sft_batch, args.sft_len, args.sft_steps = 4, 32, 2
        args.ppo_batch, args.ppo_mini, args.ppo_prompt_len = 4, 2, 16
    else:
        args.gen_model, args.lora_model = "134M", "1.1B"
        args.prompts, args.prompt_len, args.new_tokens, args.batch_size = 256, 256, 128, 256
        args.sft_batch, args.sft_len, args.sft_steps = 32, 512, 30
        args.ppo_batch, args.ppo_mini, args.ppo_prompt_len = 64, 16, 256
    torch.backends.cuda.matmul.allow_tf32 = True
    skip = set(filter(None, args.skip.split(",")))
    name, _, _ = card(device)
    results: dict = {"device": name, "torch": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    import tempfile

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        parts = [("generation", lambda: bench_generation(device, args)),
                 ("sft", lambda: bench_sft(device, args, Path(tmp))),
                 ("ppo_step", lambda: _ppo_step(device, args.gen_model, False, args)),
                 ("lora_memory", lambda: [_ppo_step(device, args.lora_model, True, args),
                                          _ppo_step(device, args.lora_model, False, args)])]
        for key, fn in parts:
            if key in skip:
                continue
            t = time.perf_counter()
            try:
                results[key] = fn()
            except torch.cuda.OutOfMemoryError as e:           # the full-parameter comparison may not fit
                results[key] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            results[key + "_wall_s"] = round(time.perf_counter() - t, 1)
            print(json.dumps({key: results[key]}), flush=True)
    results["total_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
