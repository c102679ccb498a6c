"""Generation throughput: plain Hugging Face `generate` vs smlearn's engine, on few-shot prompts.

Three ways to complete the same prompts greedily:

  (a) per-request  `model.generate` on one prompt at a time (no padding)
  (b) hf-batched   `model.generate` on left-padded batches sorted by length
                   (what smlearn did before its own engine)
  (c) smlearn      `smlearn.generate.engine.generate_texts` (shared few-shot
                   prefix KV, own decode loop)

Each runs in its own child process (so peak RSS is per method) on the same
model and prompts; the script prints new tokens/s, the ratios, peak memory
and whether the three give identical completions. "New tokens" are the
tokens of the per-request greedy completions (up to EOS, or the stop string
with --stop), the same work for all three when the outputs agree.

Prompts: the stage-1 CoT prompt (4 built-in few-shot exemplars) for the
questions of the multiarith train split, repeated if --prompts asks for more.

  python benchmarks/generation.py --model lab --prompts 256 --new-tokens 64 --batch-size 32

`--model lab` builds a lab-sized Llama from a config (hidden 256, 4 layers,
4 heads, BPE vocab 1024, context 1024; random weights scaled by
--init-scale so that each prompt gets its own completion); any other value
is a local model path or hub name loaded with smlearn.models.
This is a script, not a test: it takes minutes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "benchmarks" / "multiarith" / "train.jsonl"
METHODS = ("per-request", "hf-batched", "smlearn")
# Peak memory bandwidth (GB/s) of GPUs we know, for the bandwidth-bound fraction; else --peak-bw-gbs.
PEAK_BW = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0, "A10": 600.0, "T4": 320.0}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lab", help="'lab' (build a lab-sized Llama) or a model path/name")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: no oversubscription)")
    ap.add_argument("--stop", action="store_true", help="stop at the pipeline's stop strings")
    ap.add_argument("--init-scale", type=float, default=3.0, help="lab model: scale of the random weights")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--peak-bw-gbs", type=float, default=None, help="GPU peak memory bandwidth, GB/s")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------
# Model and prompts
# ---------------------------------------------------------------------------

def questions() -> list[str]:
    return [json.loads(line)["question"] for line in DATA.read_text().splitlines() if line.strip()]


def build_prompts(n: int) -> list[str]:
    from smlearn.prompts import BUILTIN, PromptBuilder

    builder = PromptBuilder(BUILTIN["number"], n_shots=4)
    qs = questions()
    return [builder.cot(qs[i % len(qs)]) for i in range(n)]


def build_lab_model(out_dir: Path, init_scale: float) -> None:
    import torch

    from smlearn.models import TinyLlamaSpec, build_bpe_tokenizer, build_tiny_llama
    from smlearn.prompts import BUILTIN

    texts = questions() + [f"Q: {e.question}\nA: {e.rationale} The answer is {e.answer}."
                           for ex in BUILTIN.values() for e in ex]
    tok = build_bpe_tokenizer(texts, vocab_size=1024)
    spec = TinyLlamaSpec(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=688, max_position_embeddings=1024)
    model = build_tiny_llama(tok, spec, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(init_scale)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


# ---------------------------------------------------------------------------
# The three methods (run in a child process each)
# ---------------------------------------------------------------------------

def _hf_kwargs(tok, args):
    from smlearn.prompts import STOP_STRINGS

    kw = dict(max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    if args.stop:
        kw.update(stop_strings=list(STOP_STRINGS), tokenizer=tok)
    return kw


def run_per_request(model, tok, ids, args):
    import torch

    texts, counts = [], []
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for p in ids:
        x = torch.tensor([p], device=model.device)
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **_hf_kwargs(tok, args))[0, len(p):]
        toks = out.tolist()
        texts.append(tok.decode(toks, skip_special_tokens=True))
        counts.append(len(toks))
    return texts, counts


def run_hf_batched(model, tok, ids, args):
    import torch

    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    texts = [None] * len(ids)
    for s in range(0, len(order), args.batch_size):
        batch = order[s:s + args.batch_size]
        width = max(len(ids[i]) for i in batch)
        x = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, i in enumerate(batch):
            x[r, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[r, width - len(ids[i]):] = 1
        out = model.generate(input_ids=x.to(model.device), attention_mask=mask.to(model.device), **_hf_kwargs(tok, args))
        for i, t in zip(batch, tok.batch_decode(out[:, width:], skip_special_tokens=True)):
            texts[i] = t
    return texts, None


def run_smlearn(model, tok, prompts, args):
    from smlearn.generate.engine import SamplingParams, generate_texts
    from smlearn.prompts import STOP_STRINGS

    params = SamplingParams(max_new_tokens=args.new_tokens, stop_strings=tuple(STOP_STRINGS) if args.stop else ())
    return generate_texts(model, tok, prompts, params, batch_size=args.batch_size, progress=False), None


def worker(args) -> None:
    import torch

    from smlearn.generate.engine import encode_prompt
    from smlearn.models import load_causal_lm, load_tokenizer
    from smlearn.prompts import STOP_STRINGS, truncate_at_stop

    torch.set_num_threads(args.threads)
    model = load_causal_lm(args.model_dir, dtype=args.dtype, device=args.device).eval()
    tok = load_tokenizer(args.model_dir)
    prompts = build_prompts(args.prompts)
    ids = [encode_prompt(tok, p) for p in prompts]
    cuda = model.device.type == "cuda"
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    fn = {"per-request": run_per_request, "hf-batched": run_hf_batched, "smlearn": run_smlearn}[args.worker]
    with torch.no_grad():
        # Warm-up on two prompts (allocator, lazy inits), not timed.
        small = argparse.Namespace(**{**vars(args), "new_tokens": 4})
        fn(model, tok, prompts[:2] if args.worker == "smlearn" else ids[:2], small)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        texts, counts = fn(model, tok, prompts if args.worker == "smlearn" else ids, args)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    stops = STOP_STRINGS if args.stop else ()
    result = {
        "method": args.worker, "seconds": seconds, "texts": [truncate_at_stop(t, stops) for t in texts],
        "counts": counts, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_loaded,
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
        "prompt_tokens": sum(len(i) for i in ids),
    }
    Path(args.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_method(method: str, model_dir: str, args, tmp: Path) -> dict:
    out = tmp / f"{method}.json"
    cmd = [sys.executable, __file__, "--worker", method, "--model-dir", model_dir, "--out", str(out),
           "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size),
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
    if args.stop:
        cmd.append("--stop")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    print(f"running {method} ...", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def bandwidth_fraction(r: dict, args, n_batches: int) -> float | None:
    """Weights streamed once per decode step (KV reads ignored) / time, as a fraction of peak bandwidth."""
    if r["cuda_peak_mb"] is None:
        return None
    peak = args.peak_bw_gbs or next((v for k, v in PEAK_BW.items() if k in r["device_name"]), None)
    if peak is None:
        return None
    steps = args.new_tokens * (args.prompts if r["method"] == "per-request" else n_batches)
    return steps * r["param_bytes"] / r["seconds"] / (peak * 1e9)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model_dir = args.model
        if args.model == "lab":
            model_dir = str(tmp / "lab")
            build_lab_model(Path(model_dir), args.init_scale)
        results = {m: run_method(m, model_dir, args, tmp) for m in methods}

    ref = results.get("per-request")
    counts = ref["counts"] if ref else None
    new_tokens = sum(counts) if counts else args.prompts * args.new_tokens
    n_batches = -(-args.prompts // args.batch_size)
    base = results[methods[0]]
    lines = [f"| method | seconds | new tokens/s | speed-up vs per-request | vs hf-batched | peak RSS MB "
             f"|{' peak CUDA MB | BW-bound fraction |' if args.device.startswith('cuda') else ''} same output |",
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.device.startswith("cuda") else "") + "---|"]
    for m in methods:
        r = results[m]
        same = sum(a == b for a, b in zip(r["texts"], base["texts"]))
        vs_req = results["per-request"]["seconds"] / r["seconds"] if "per-request" in results else float("nan")
        vs_hf = results["hf-batched"]["seconds"] / r["seconds"] if "hf-batched" in results else float("nan")
        gpu = ""
        if args.device.startswith("cuda"):
            bw = bandwidth_fraction(r, args, n_batches)
            gpu = f"{r['cuda_peak_mb']:.0f} | {'n/a' if bw is None else f'{bw:.1%}'} | "
        lines.append(f"| {m} | {r['seconds']:.1f} | {new_tokens / r['seconds']:.0f} | {vs_req:.1f}x | {vs_hf:.2f}x "
                     f"| {r['peak_rss_mb']:.0f} | {gpu}{same}/{len(r['texts'])} |")
    distinct = len(set(base["texts"]))
    header = (f"model={args.model} prompts={args.prompts} (mean {base['prompt_tokens'] / args.prompts:.0f} prompt tokens) "
              f"new_tokens={args.new_tokens} ({new_tokens} generated) batch_size={args.batch_size} "
              f"device={args.device} ({base['device_name']}) dtype={args.dtype} threads={args.threads} "
              f"stop={'yes' if args.stop else 'no'} distinct completions={distinct}")
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\n{when}  cpus={os.cpu_count()}  load average (1/5/15 min) at end: {load}")
    print(header)
    print("\n".join(lines))
    mismatches = [(m, i) for m in methods for i, (a, b) in enumerate(zip(results[m]["texts"], base["texts"])) if a != b]
    for m, i in mismatches[:3]:
        print(f"differs: {m} prompt {i}:\n  {base['texts'][i]!r}\n  {results[m]['texts'][i]!r}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "header": header, "table": lines,
                                               "load": load, "when": when,
                                               "results": {m: {k: v for k, v in r.items() if k != "texts"}
                                                           for m, r in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
