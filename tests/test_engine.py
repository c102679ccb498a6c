"""The generation engine gives Hugging Face `generate`'s greedy output, faster.

Reference: `model.generate(do_sample=False)` on each prompt alone (batch 1, no
padding), decoded and cut at the stop strings. The engine must give the same
text for batches of mixed prompt lengths, prompts sharing a few-shot prefix
(the shared-prefix KV path), with and without stop strings, and its sampling
must follow torch's seed.
"""
from __future__ import annotations

import pytest
import torch

from smlearn.generate import engine as E
from smlearn.generate.engine import EngineOptions, SamplingParams, generate_texts
from smlearn.models import TinyLlamaSpec, build_tiny_llama, load_causal_lm, load_tokenizer
from smlearn.prompts import BUILTIN, STOP_STRINGS, PromptBuilder, truncate_at_stop

from conftest import bench, read_rows

NEW = 24


@pytest.fixture(scope="module")
def lm(tiny_base):
    """The briefly pretrained tiny Llama: real answer format, but few distinct completions."""
    model = load_causal_lm(str(tiny_base), dtype="float32", device="cpu").eval()
    return model, load_tokenizer(str(tiny_base))


@pytest.fixture(scope="module")
def chaotic(lm):
    """A random tiny Llama with weights scaled up: every prompt gets a different, long completion."""
    tok = lm[1]
    model = build_tiny_llama(tok, TinyLlamaSpec(hidden_size=64, num_hidden_layers=2, intermediate_size=128), seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model.eval(), tok


# Stop strings each model actually writes within NEW tokens (the pretrained one ends answers with EOS).
STOPS = {"lm": tuple(STOP_STRINGS) + (". ",), "chaotic": tuple(STOP_STRINGS) + (" a",)}


@pytest.fixture(scope="module", params=["lm", "chaotic"])
def model_ref(request, prompts):
    """(model, tokenizer, stop strings, reference completions without stop strings)."""
    model, tok = request.getfixturevalue(request.param)
    ref = reference(model, tok, prompts, SamplingParams(max_new_tokens=NEW))
    if request.param == "chaotic":  # distinct prompts, distinct completions: the comparisons have teeth
        assert len(set(ref)) == len(set(prompts))
    return model, tok, STOPS[request.param], ref


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """Few-shot CoT and hint prompts (one shared few-shot block), a repeated prompt, and zero-shot ones."""
    rows = read_rows(bench("multiarith") / "train.jsonl", 8)
    builder = PromptBuilder(BUILTIN["number"], n_shots=2)
    out = [builder.cot(r["question"]) for r in rows[:5]]
    out += [builder.hint(r["question"], r["answer"]) for r in rows[5:7]]
    out += [out[0]] * 2                                   # samples of one question share all but a token
    out += [builder.cot(r["question"], few_shot=False) for r in rows[6:8]]
    return out


def reference(model, tokenizer, prompts, params: SamplingParams) -> list[str]:
    """Plain Hugging Face greedy generation, one prompt at a time, cut at the stop strings."""
    texts = []
    for p in prompts:
        ids = torch.tensor([E.encode_prompt(tokenizer, p)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        texts.append(truncate_at_stop(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True),
                                      params.stop_strings))
    return texts


@pytest.mark.parametrize("options", [EngineOptions(), EngineOptions(share_prefix=False), EngineOptions(engine="hf")],
                         ids=["fast", "fast-no-prefix", "hf-batched"])
@pytest.mark.parametrize("batch_size", [3, 16])
def test_greedy_equals_per_prompt_generate(model_ref, prompts, options, batch_size):
    model, tok, _, ref = model_ref
    got = generate_texts(model, tok, prompts, SamplingParams(max_new_tokens=NEW), batch_size=batch_size,
                         progress=False, options=options)
    assert got == ref


@pytest.mark.parametrize("options", [EngineOptions(), EngineOptions(engine="hf")], ids=["fast", "hf-batched"])
def test_greedy_with_stop_strings(model_ref, prompts, options):
    model, tok, stops, ref = model_ref
    params = SamplingParams(max_new_tokens=NEW, stop_strings=stops)
    got = generate_texts(model, tok, prompts, params, batch_size=4, progress=False, options=options)
    assert got == [truncate_at_stop(t, stops) for t in ref]
    assert any(len(g) < len(r) for g, r in zip(got, ref)), "no completion reached a stop string"



def test_rows_stop_early_and_the_batch_ends(chaotic, prompts):
    """A row stops at the token that completes its stop string; finished rows leave the batch; no forward
    runs once all rows are done."""
    model, tok = chaotic
    ids = [E.encode_prompt(tok, p) for p in prompts]
    params = SamplingParams(max_new_tokens=NEW, stop_strings=(" a",))
    calls = []
    original = E._forward
    with E.shared_prefix_attention(model), torch.no_grad():
        prefix = E.PrefixKV.empty().extend(model, E.common_prefix(ids))
        E._forward = lambda *a, **k: calls.append(a[2].shape[0]) or original(*a, **k)
        try:
            out = E._generate_fast(model, tok, ids, params, prefix, EngineOptions())
        finally:
            E._forward = original
    stopped = [toks for toks in out if len(toks) < NEW]
    assert stopped
    for toks in stopped:
        assert " a" in tok.decode(toks) and " a" not in tok.decode(toks[:-1])
    assert calls == sorted(calls, reverse=True) and calls[-1] < len(ids)   # the batch shrinks as rows finish
    assert len(calls) == max(len(t) for t in out)                          # and ends with its last row


def test_batches_extend_the_shared_prefix(chaotic, prompts):
    """Identical prompts (samples of one question) share all but their last token; a batch of them
    extends the call's common prefix with its own."""
    model, tok = chaotic
    chosen = [prompts[0]] * 3 + [prompts[5], prompts[-1]]
    params = SamplingParams(max_new_tokens=8)
    assert generate_texts(model, tok, chosen, params, batch_size=3, progress=False) == reference(model, tok, chosen, params)
    assert generate_texts(model, tok, chosen[:3], params, progress=False) == reference(model, tok, chosen[:1], params) * 3


def test_sampling_follows_the_seed(lm, prompts):
    model, tok = lm
    params = SamplingParams(max_new_tokens=16, do_sample=True, temperature=1.0, top_p=0.9,
                            stop_strings=tuple(STOP_STRINGS))

    def run(seed):
        torch.manual_seed(seed)
        return generate_texts(model, tok, prompts, params, batch_size=4, progress=False)

    a, b, c = run(1), run(1), run(2)
    assert a == b
    assert a != c


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([[0.0, 1.0, 2.0, 8.0]])
    params = SamplingParams(do_sample=True, top_p=0.5)
    torch.manual_seed(0)
    assert {int(E._next_tokens(logits, params, 1.0, None)) for _ in range(20)} == {3}


def test_repetition_penalty_from_the_generation_config(lm, prompts):
    model, tok = lm
    model.generation_config.repetition_penalty = 1.5
    try:
        params = SamplingParams(max_new_tokens=12)
        assert E.fast_path_blockers(model, params) == []
        got = generate_texts(model, tok, prompts[:6], params, batch_size=3, progress=False)
        assert got == reference(model, tok, prompts[:6], params)
    finally:
        model.generation_config.repetition_penalty = None


def test_unsupported_settings_fall_back_to_hf_generate(lm, prompts):
    model, tok = lm
    model.generation_config.no_repeat_ngram_size = 3
    try:
        params = SamplingParams(max_new_tokens=12)
        assert E.fast_path_blockers(model, params) == ["generation_config.no_repeat_ngram_size=3"]
        got = generate_texts(model, tok, prompts[:4], params, batch_size=4, progress=False)
        assert got == reference(model, tok, prompts[:4], params)
    finally:
        model.generation_config.no_repeat_ngram_size = None


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral", "gpt2"])
def test_other_architectures(lm, prompts, model_type):
    """Llama-family relatives (bias, q/k norm, GQA) take the fast engine; others fall back, same output."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _, tok = lm
    sizes = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=1024)
    if model_type == "gpt2":
        sizes = dict(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=1024)
    config = AutoConfig.for_model(model_type, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id, **sizes)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    # Random weights: scale up so that greedy decoding does not collapse into one repeated token.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    params = SamplingParams(max_new_tokens=10)
    assert (E.fast_path_blockers(model, params, 1024) == []) == (model_type != "gpt2")
    got = generate_texts(model, tok, prompts, params, batch_size=4, progress=False)
    assert got == reference(model, tok, prompts, params)


def test_common_prefix_leaves_each_row_a_token():
    assert E.common_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == [1, 2, 3]
    assert E.common_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]
    assert E.common_prefix([[1], [1, 2]]) == []
    assert E.common_prefix([[7, 2], [1, 2]]) == []


def test_stop_checker_sees_multi_token_stop_strings(lm):
    _, tok = lm
    checker = E.StopChecker(tok, ("\nQ:",))
    ids = tok("The answer is 4.\nQ: next", add_special_tokens=False).input_ids
    hits = [checker.hit(ids[:i]) for i in range(1, len(ids) + 1)]
    first = hits.index(True)
    assert "\nQ:" in tok.decode(ids[:first + 1]) and "\nQ:" not in tok.decode(ids[:first])
