"""The reasoning lab: generators, step-by-step verifiers, flaw injection, corpus."""
from __future__ import annotations

import json
import random
import re

import pytest

from smlearn.errors import SmlearnError
from smlearn.lab import TASKS, StepReport, build_corpus, get_task
from smlearn.lab.flaws import GENERIC_FLAWS, FlawNotApplicable, question_split, split_answer
from smlearn.prompts import PromptBuilder, answer_sentence, load_exemplars

# The lab's runs prompt zero-shot: what its generate and eval stages send for a question.
ZERO_SHOT = PromptBuilder(exemplars=[], n_shots=0)

FAMILIES = sorted(TASKS)
FLAW_CASES = [(name, flaw) for name in FAMILIES for flaw in TASKS[name].flaws]
ANSWER_RE = re.compile(r"The answer is (\S+)\.$")


@pytest.fixture(scope="module")
def clean_sets():
    """300 test questions per family (generated once: the tests below only read them)."""
    return {name: TASKS[name].generate(300, seed=7, split="test") for name in FAMILIES}


# --------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_is_deterministic_per_seed(name):
    family = get_task(name)
    first = family.generate(40, seed=3, split="train")
    assert first == family.generate(40, seed=3, split="train")
    assert [e["question"] for e in first] != [e["question"] for e in family.generate(40, seed=4, split="train")]
    # n is a prefix length, not a different draw.
    assert family.generate(10, seed=3, split="train") == first[:10]


@pytest.mark.parametrize("name", FAMILIES)
def test_splits_are_disjoint(name):
    family = get_task(name)
    questions = {split: [e["question"] for e in family.generate(300, seed=1, split=split)]
                 for split in ("pretrain", "train", "val", "test")}
    for split, qs in questions.items():
        assert len(set(qs)) == len(qs), f"{split} repeats a question"
        assert all(question_split(q) == split for q in qs)
    # Disjoint across splits, also when they come from different seeds.
    other_seed_test = {e["question"] for e in family.generate(300, seed=2, split="test")}
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["pretrain"]) & (set(questions["test"]) | other_seed_test | set(questions["val"]))
    assert not set(questions["train"]) & other_seed_test


def test_unknown_split_is_rejected():
    with pytest.raises(SmlearnError, match="unknown split"):
        get_task("coins").generate(3, seed=0, split="dev")


@pytest.mark.parametrize("name", FAMILIES)
def test_fields_are_valid(name, clean_sets):
    family = get_task(name)
    ids = set()
    for ex in clean_sets[name]:
        assert ex["kind"] == family.kind
        assert ex["question"] and ex["rationale"] and ex["steps"]
        assert "answer is" not in ex["rationale"].lower()
        assert json.loads(json.dumps(ex["steps"])) == ex["steps"]
        ids.add(ex["id"])
        if family.kind == "choice":
            assert set(ex["choices"]) == {"A", "B", "C"} and ex["answer"] in ex["choices"]
            assert ex["question"].endswith(
                "Answer choices: " + ", ".join(f"({k}) {v}" for k, v in ex["choices"].items()) + ".")
        else:
            assert "choices" not in ex
        if family.kind == "yes_no":
            assert ex["answer"] in ("yes", "no")
        if family.kind == "number":
            assert re.fullmatch(r"\d+", ex["answer"])
    assert len(ids) == len(clean_sets[name])


def test_arithmetic_problem_shape(clean_sets):
    for ex in clean_sets["arithmetic"]:
        eqs = ex["steps"]
        assert 2 <= len(eqs) <= 4
        assert str(eqs[-1]["result"]) == ex["answer"]
        for eq in eqs:
            for n in (eq["a"], eq["b"], eq["result"]):
                assert isinstance(n, int) and n >= 0
            if eq["op"] == "/":
                assert eq["a"] == eq["b"] * eq["result"]
            # every number the solution starts from is written in the question
            for n, src in ((eq["a"], eq["a_src"]), (eq["b"], eq["b_src"])):
                if src is None:
                    assert re.search(rf"\b{n}\b", ex["question"])


def test_objects_and_coins_shape(clean_sets):
    for ex in clean_sets["objects"]:
        assert len(ex["meta"]["people"]) == 3 and 2 <= len(ex["meta"]["swaps"]) <= 4
    for ex in clean_sets["coins"]:
        assert 2 <= len(ex["meta"]["actions"]) <= 5
    answers = {ex["answer"] for ex in clean_sets["objects"]}
    assert answers == {"A", "B", "C"}
    assert {ex["answer"] for ex in clean_sets["coins"]} == {"yes", "no"}


# --------------------------------------------------------------------------
# Verifier on clean rationales
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_verifier_accepts_every_clean_rationale(name, clean_sets):
    family = get_task(name)
    for ex in clean_sets[name]:
        bare = family.verify(ex, ex["rationale"])
        assert bare.valid and bare.answer_correct is None, (ex["rationale"], bare.errors)
        assert bare.n_steps == bare.n_valid == len(ex["steps"]) and not bare.errors
        full = family.verify(ex, family.reference_solution(ex))
        assert full.valid and full.answer_correct is True, (ex["rationale"], full.errors)


@pytest.mark.parametrize("name", FAMILIES)
def test_verifier_reads_answer_variants(name, clean_sets):
    family = get_task(name)
    ex = clean_sets[name][0]
    stated = {"choice": f"({ex['answer']})", "number": ex["answer"], "yes_no": ex["answer"].capitalize()}
    text = f"{ex['rationale']} So the answer is {stated[family.kind]}.\nQ: next question? The answer is 0."
    report = family.verify(ex, text)
    assert report.valid and report.answer_correct is True, report.errors


def test_verifier_maps_option_text_to_letter(clean_sets):
    ex = clean_sets["objects"][0]
    report = get_task("objects").verify(ex, f"{ex['rationale']} The answer is the {ex['choices'][ex['answer']]}.")
    assert report.valid and report.answer_correct is True


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("text", ["", "I do not know. The answer is 3.", "The answer is", "blah blah blah"])
def test_verifier_rejects_garbage_without_crashing(name, text, clean_sets):
    report = get_task(name).verify(clean_sets[name][0], text)
    assert isinstance(report, StepReport)
    assert not report.valid and report.errors


def test_wrong_answer_after_clean_steps_is_caught(clean_sets):
    ex = clean_sets["arithmetic"][0]
    report = get_task("arithmetic").verify(ex, f"{ex['rationale']} The answer is {int(ex['answer']) + 1}.")
    assert report.all_steps_valid and not report.final_follows and report.answer_correct is False


def test_arithmetic_verifier_checks_each_equation():
    family = get_task("arithmetic")
    ex = next(e for e in family.generate(50, seed=0, split="val") if any(s["op"] == "-" for s in e["steps"]))
    step = next(s for s in ex["steps"] if s["op"] == "-")
    good = f"{step['a']} - {step['b']} = {step['result']}"
    # Reversed operands: a true equation (when it is), but not the question's computation.
    reversed_text = ex["rationale"].replace(good, f"{step['b']} - {step['a']} = {step['b'] - step['a']}")
    assert not family.verify(ex, reversed_text).all_steps_valid
    # A wrong result, with later steps carrying it forward, is one invalid step.
    report = family.verify(ex, ex["rationale"].replace(good, f"{step['a']} - {step['b']} = {step['result'] + 50}"))
    assert report.n_valid <= report.n_steps - 1 and not report.valid


# --------------------------------------------------------------------------
# Flaws
# --------------------------------------------------------------------------


def test_every_family_plants_generic_flaws_and_misconceptions():
    for name, family in TASKS.items():
        assert set(GENERIC_FLAWS) <= set(family.flaws)
        assert len(family.misconceptions) >= 2 and set(family.misconceptions) <= set(family.flaws)
        assert all(m.startswith("misc_") for m in family.misconceptions)


@pytest.mark.parametrize("name,flaw", FLAW_CASES)
def test_verifier_rejects_planted_flaws(name, flaw, clean_sets):
    family = get_task(name)
    rng = random.Random(f"{name}-{flaw}")
    examples = [ex for ex in clean_sets[name] if family.flaw_applies(ex, flaw)]
    assert len(examples) >= 30, f"{flaw} applies to too few {name} questions"
    rejected = 0
    for ex in examples:
        text, answer = family.flawed_rationale(ex, rng, flaw)
        assert ANSWER_RE.search(text).group(1).strip("()") == answer
        assert text != family.reference_solution(ex)
        report = family.verify(ex, text)
        rejected += not report.valid
        if flaw == "wrong_copy":
            # Every step is right: only the copied answer is wrong.
            assert report.all_steps_valid and not report.final_follows and answer != ex["answer"]
        else:
            # The flaw is in the steps, and the stated answer is what those steps give.
            assert report.final_follows
    assert rejected / len(examples) >= 0.95


@pytest.mark.parametrize("name", FAMILIES)
def test_flawed_rationale_is_deterministic_per_rng(name, clean_sets):
    family = get_task(name)
    ex = clean_sets[name][5]
    for flaw in family.flaws:
        if family.flaw_applies(ex, flaw):
            assert (family.flawed_rationale(ex, random.Random(1), flaw)
                    == family.flawed_rationale(ex, random.Random(1), flaw))


def test_misconceptions_are_systematic(clean_sets):
    rng = random.Random(0)
    arithmetic = get_task("arithmetic")
    two_gives = [ex for ex in clean_sets["arithmetic"]
                 if sum(ev["kind"] == "give" for ev in ex["meta"]["events"]) >= 2
                 and arithmetic.flaw_applies(ex, "misc_give_adds")]
    assert two_gives
    for ex in two_gives:
        text, _ = arithmetic.flawed_rationale(ex, rng, "misc_give_adds")
        gives = [s for s in text.split(". ") if "gives away" in s]
        assert len(gives) >= 2 and all(" + " in s and " - " not in s for s in gives)
    coins = get_task("coins")
    for ex in clean_sets["coins"]:
        if coins.flaw_applies(ex, "misc_noflip_flips"):
            text, _ = coins.flawed_rationale(ex, rng, "misc_noflip_flips")
            assert all("so it is now" in s for s in text.split(". ") if "does not flip" in s)
    objects = get_task("objects")
    for ex in clean_sets["objects"]:
        if objects.flaw_applies(ex, "misc_trade_ignored"):
            report = objects.verify(ex, objects.flawed_rationale(ex, rng, "misc_trade_ignored")[0])
            n_trades = sum(verb == "trade" for _, _, verb in ex["meta"]["swaps"])
            assert report.n_steps - report.n_valid >= min(n_trades, 1)


def test_inapplicable_and_unknown_flaws_raise(clean_sets):
    coins = get_task("coins")
    ex = next(e for e in clean_sets["coins"] if all(p != "does not flip the coin" for _, p in e["meta"]["actions"]))
    assert not coins.flaw_applies(ex, "misc_noflip_flips")
    with pytest.raises(FlawNotApplicable):
        coins.flawed_rationale(ex, random.Random(0), "misc_noflip_flips")
    with pytest.raises(SmlearnError, match="valid: slip"):
        coins.flawed_rationale(ex, random.Random(0), "misc_give_adds")


# --------------------------------------------------------------------------
# Corpus and registry
# --------------------------------------------------------------------------


def test_corpus_flaw_rates_match_settings():
    rates = {"slip": 0.2, "misc_give_adds": 0.3}
    corpus = build_corpus("arithmetic", 4000, seed=0, flaw_rates=rates)
    assert len(corpus) == 4000
    for flaw, rate in rates.items():
        observed = sum(entry["flaw"] == flaw for entry in corpus) / len(corpus)
        assert abs(observed - rate) <= 0.03, (flaw, observed)
    assert abs(sum(entry["flaw"] is None for entry in corpus) / len(corpus) - 0.5) <= 0.03
    assert len({entry["question"] for entry in corpus}) == len(corpus)


@pytest.mark.parametrize("name", FAMILIES)
def test_corpus_entries_are_worked_solutions(name):
    family = get_task(name)
    rates = {flaw: 0.6 / len(family.flaws) for flaw in family.flaws}
    corpus = build_corpus(name, 400, seed=1, flaw_rates=rates)
    assert corpus == build_corpus(name, 400, seed=1, flaw_rates=rates)
    assert {entry["flaw"] for entry in corpus} == set(family.flaws) | {None}
    pretrain_questions = {entry["question"] for entry in corpus}
    assert not pretrain_questions & {e["question"] for e in family.generate(300, seed=1, split="test")}
    for entry in corpus:
        assert ANSWER_RE.search(entry["rationale"]).group(1).strip("()") == entry["answer"]
        assert entry["text"] == f"{ZERO_SHOT.cot(entry['question'])} {entry['rationale']}"
        assert entry["correct"] == (entry["answer"] == entry["gold"])
        if entry["flaw"] is None:
            assert entry["correct"]


def test_corpus_clean_entries_verify_and_flawed_ones_do_not():
    family = get_task("coins")
    stream = family.iter_examples(2, "pretrain", stream="corpus")
    by_question = {e["question"]: e for e in (next(stream) for _ in range(1500))}
    corpus = build_corpus("coins", 300, seed=2, flaw_rates={"wrong_copy": 0.2, "misc_noflip_flips": 0.2})
    for entry in corpus:
        report = family.verify(by_question[entry["question"]], entry["rationale"])
        assert report.valid == (entry["flaw"] is None), (entry, report.errors)


def test_corpus_rejects_bad_rates():
    with pytest.raises(SmlearnError, match="sum"):
        build_corpus("coins", 10, seed=0, flaw_rates={"slip": 0.6, "skip": 0.6})
    with pytest.raises(SmlearnError, match="unknown flaw"):
        build_corpus("coins", 10, seed=0, flaw_rates={"misc_give_adds": 0.1})
    with pytest.raises(SmlearnError, match=r"\[0, 1\]"):
        build_corpus("coins", 10, seed=0, flaw_rates={"slip": -0.1})


def test_get_task_lists_valid_names():
    assert set(TASKS) == {"arithmetic", "objects", "coins"}
    assert get_task("coins").name == "coins"
    with pytest.raises(SmlearnError, match="arithmetic, objects, coins"):
        get_task("gsm8k")


def test_split_answer_takes_first_trigger_and_cuts_next_question():
    body, stated = split_answer("2 + 2 = 4. The answer is 4.\nQ: x? The answer is 9.", "number")
    assert body.strip() == "2 + 2 = 4." and stated.value == "4"
    _, stated = split_answer("The answer is a red ball.", "choice", {"A": "blue ball", "B": "red ball"})
    assert stated.value == "B"   # "a red ball" is not option A


def test_pretraining_windows_start_at_documents_and_train_on_answers():
    """Every document starts right after an EOS, so a window from it sees its whole question;
    with loss_on="answer" only the solution after "\nA:" (and its EOS) carries labels."""
    from smlearn.lab.pretrain import token_stream

    class Tok:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    texts = ["Q: a\nA: b", "Q: cc\nA: dd", "Q: e\nHint: the answer is 3.\nA: f g"]
    stream, labels, starts = token_stream(texts, Tok(), seed=3, loss_on="answer")
    assert len(starts) == 3 and stream.tolist().count(0) == 3
    docs = {}
    for s in starts.tolist():
        assert stream[s].item() == ord("Q") and (s == 0 or stream[s - 1].item() == 0)
        end = stream.tolist().index(0, s)
        text = "".join(chr(i) for i in stream[s:end].tolist())
        trained = "".join(chr(i) for i in labels[s:end].tolist() if i != -100)
        docs[text] = trained
        assert labels[end].item() == 0                     # EOS is learned: the model must stop
    assert docs == {"Q: a\nA: b": " b", "Q: cc\nA: dd": " dd", "Q: e\nHint: the answer is 3.\nA: f g": " f g"}
    _, all_labels, _ = token_stream(texts, Tok(), seed=3, loss_on="all")
    assert (all_labels == stream).all()


def test_hinted_documents_carry_only_systematic_flaws():
    """Slips and wrong copies appear only in free CoT documents; every hinted document's
    rationale is clean or a misconception, and reaches the answer its hint gives."""
    from smlearn.lab.default import NOISE_FLAWS, LabSettings, corpus_texts

    rates = {"arithmetic": {"slip": 0.3, "wrong_copy": 0.2, "misc_give_adds": 0.3}}
    settings = LabSettings(tasks=["arithmetic"], corpus_per_task=600, hinted_fraction=1.0,
                           copy_drill_fraction=0.0, flaw_rates=rates)
    texts, stats = corpus_texts(settings)
    corpus = build_corpus("arithmetic", 600, settings.seed, rates["arithmetic"])
    assert len(texts) == len(corpus)
    for text, entry in zip(texts, corpus):
        hinted = text.startswith(ZERO_SHOT.hint(entry["question"], entry["answer"]))
        assert hinted == (entry["flaw"] not in NOISE_FLAWS)
        assert text.endswith(answer_sentence(entry["answer"]))
    assert sum(e["flaw"] not in NOISE_FLAWS for e in corpus) > 0
    assert abs(stats["arithmetic"]["slip"] - 0.3) <= 0.05


def test_corpus_documents_are_the_pipelines_prompts_and_solutions():
    """A hinted corpus document starts with the prompt the generate stage sends for that hint
    (`PromptBuilder.hint(q, a)`, built from the lab run's own prompt settings), an unhinted one
    with the evaluation prompt (`PromptBuilder.cot(q)`); each then holds its worked solution,
    ending with the answer sentence. A change to the prompt format changes both alike."""
    import dataclasses
    from pathlib import Path

    from smlearn.config import config_from_dict
    from smlearn.lab.default import LabSettings, corpus_texts, lab_run_config

    p = config_from_dict(lab_run_config(Path("model"), Path("data"))).prompts
    builder = PromptBuilder(exemplars=load_exemplars(p.exemplars, "lab", "mixed", p.trigger), trigger=p.trigger,
                            n_shots=p.n_shots)
    settings = dataclasses.replace(LabSettings(), corpus_per_task=100, copy_drill_fraction=0.0)
    texts, _ = corpus_texts(settings)
    entries = [e for task in settings.tasks for e in build_corpus(task, 100, settings.seed, settings.flaw_rates[task])]
    assert len(texts) == len(entries)
    hinted = 0
    for text, e in zip(texts, entries):
        hint, cot = builder.hint(e["question"], e["answer"]), builder.cot(e["question"])
        assert text in (f"{hint} {e['rationale']}", f"{cot} {e['rationale']}")
        assert e["rationale"].endswith(answer_sentence(e["answer"], p.trigger))
        hinted += text.startswith(hint)
    assert 0 < hinted < len(texts)


@pytest.mark.parametrize("name", FAMILIES)
def test_first_error_kind_names_the_planted_flaw(name, clean_sets):
    """Misconceptions read as a wrong rule, a wrong copy as a wrong final answer, an arithmetic
    slip as a computation error; a clean rationale has no error kind."""
    family = get_task(name)
    expected = {flaw: "wrong_rule" for flaw in family.misconceptions} | {"wrong_copy": "final_answer"}
    if name == "arithmetic":
        expected["slip"] = "computation"
    for ex in clean_sets[name][:100]:
        assert family.verify(ex, family.reference_solution(ex)).first_error_kind is None
    rng = random.Random(0)
    for flaw in family.flaws:
        kinds = {family.verify(ex, family.flawed_rationale(ex, rng, flaw)[0]).first_error_kind
                 for ex in clean_sets[name] if family.flaw_applies(ex, flaw)}
        assert None not in kinds, flaw
        if flaw in expected:
            assert kinds == {expected[flaw]}, (flaw, kinds)
