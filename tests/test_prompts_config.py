"""Prompts (few-shot CoT, hint, final answer; chat templates; user exemplar files) and typed config."""
from __future__ import annotations

import json

import pytest

from smlearn.config import load_config
from smlearn.errors import ConfigError, DataError
from smlearn.prompts import BUILTIN, PromptBuilder, load_exemplars, split_rationale

from conftest import bench


def test_builtin_exemplars_cover_every_kind_and_end_with_their_answer():
    for kind in ("number", "choice", "yes_no", "text"):
        shots = load_exemplars("builtin", None, kind, "The answer is")
        assert len(shots) >= 4
    from smlearn.answers import extract_answer

    for kind, shots in BUILTIN.items():
        for e in shots:
            assert extract_answer(f"{e.rationale} The answer is {e.answer}.", kind) is not None


def test_the_three_prompts():
    b = PromptBuilder(BUILTIN["number"], n_shots=2)
    cot = b.cot("What is 2 + 3?")
    assert cot.count("Q: ") == 3 and cot.endswith("Q: What is 2 + 3?\nA:")
    assert "The answer is 12." in cot                      # exemplar answers are shown
    hint = b.hint("What is 2 + 3?", "5")
    assert hint.endswith("Q: What is 2 + 3?\nHint: the answer is 5.\nA:") and hint.count("Hint:") == 3
    final = b.final_answer("What is 2 + 3?", "2 + 3 = 5.")
    assert final.endswith("Q: What is 2 + 3?\nA: 2 + 3 = 5. The answer is") and "Hint" not in final
    assert b.cot("x", few_shot=False) == "Q: x\nA:"


def test_final_answer_prompt_keeps_the_question_as_generation_and_eval_saw_it():
    # CommonsenseQA questions hold double spaces; the judge must read the question byte for byte as cot() shows it.
    b = PromptBuilder(BUILTIN["choice"], n_shots=2)
    question = "Where would you  find a dog?\nAnswer Choices: (A) park  (B) moon"
    for few_shot in (True, False):
        cot = b.cot(question, few_shot)
        final = b.final_answer(question, " Dogs  walk in parks. ", few_shot)
        assert final.startswith(cot)
        # One space where the parts meet; inside, the rationale is kept as the model wrote it.
        assert final == f"{cot} Dogs  walk in parks. The answer is"
        assert b.final_answer(question, "  ", few_shot) == f"{cot} The answer is"


def test_split_rationale_cuts_at_stop_and_trigger():
    assert split_rationale(" 2 + 3 = 5. The answer is 5.\n\nQ: next", "The answer is") == ("2 + 3 = 5.", "5")
    assert split_rationale(" 2 + 3 = 5.\nQ: next", "The answer is") == ("2 + 3 = 5.", None)


def test_chat_template_prompts(tiny_base):
    from smlearn.models import load_tokenizer

    tok = load_tokenizer(str(tiny_base))
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    b = PromptBuilder(BUILTIN["yes_no"], n_shots=1, tokenizer=tok, chat_template=True)
    text = b.cot("Is it?")
    assert text.startswith("<|user|>Q: A coin is heads up.") and "<|assistant|>The coin was flipped" in text
    assert text.endswith("<|user|>Q: Is it?\n<|assistant|>A:")


def test_user_exemplar_file():
    path = bench("gsm8k").parent / "few_shot_cot_prompts.json"
    shots = load_exemplars(str(path), "gsm8k", "number", "The answer is")
    assert len(shots) == 8 and shots[0].answer == "6" and shots[0].question.startswith("There are 15 trees")
    with pytest.raises(DataError, match="key 'nope' not found"):
        load_exemplars(str(path), "nope", "number", "The answer is")


def test_exemplar_list_file_errors(tmp_path):
    path = tmp_path / "ex.json"
    path.write_text(json.dumps([{"question": "q", "rationale": "r", "answer": "1"}, {"question": "q2"}]))
    with pytest.raises(DataError, match="line 2, field 'rationale'"):
        load_exemplars(str(path), None, "number", "The answer is")


def test_config_types_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name_or_path: m}\ndata: {source: d}\nsft: {lora: {enabled: true, r: 8}}\n")
    cfg = load_config(path, ["rl.kl_coef=0.2", "eval.stages=[base, sft]", "generate.seed=3"])
    assert cfg.sft.lora.r == 8 and cfg.rl.kl_coef == 0.2 and cfg.eval.stages == ["base", "sft"]
    assert cfg.generate.seed == 3 and cfg.model.trust_remote_code is False
    cfg.validate()
    # YAML 1.1 reads 1e-4 as a string; a float field still takes it (in an override and in the file).
    assert load_config(path, ["rl.learning_rate=1e-4"]).rl.learning_rate == 1e-4
    path.write_text("model: {name_or_path: m}\ndata: {source: d}\nsft: {learning_rate: 5E-5, lora: {enabled: true, r: 8}}\n")
    assert load_config(path).sft.learning_rate == 5e-5
    for bad, needle in [("rl.algorithm=a2c", "rl.algorithm"), ("eval.stages=[x]", "eval.stages"),
                        ("collect.pairs=mid_over_low", "collect.pairs: 'mid_over_low' is not one of"),
                        ("sft.epochs=many", "sft.epochs: expected a number"), ("model.trust_remote_code=2",
                                                                                 "expected true or false")]:
        with pytest.raises(ConfigError, match=needle):
            load_config(path, [bad]).validate()
    path.write_text("model: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
