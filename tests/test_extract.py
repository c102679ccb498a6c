"""Answer extraction from realistic few-shot CoT completions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from smlearn.answers import KINDS, InvalidGoldError, UnknownKindError, answers_match, extract_answer, normalize_answer
from smlearn.prompts import DEFAULT_TRIGGER

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared/data/benchmarks"

CSQA_CHOICES = {"A": "bank", "B": "library", "C": "department store", "D": "mall", "E": "new york"}
TRACKING_CHOICES = {"A": "yellow ball", "B": "purple ball", "C": "blue ball"}


@pytest.mark.parametrize("completion, expected", [
    ("Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18. The answer is 18.", "18"),
    ("He makes 9 * 2 = $18. The answer is $18.00.", "18"),
    ("The answer is 1,000.", "1000"),
    ("They paid 2 * 1.25 = 2.50 dollars. The answer is 2.50.", "2.5"),
    ("The answer is 18 dollars.", "18"),
    ("The answer is **18**.", "18"),
    ("The answer is 18%.", "18"),
    ("The temperature dropped to 3 below zero. The answer is -3.", "-3"),
    ("The answer is +7.", "7"),
    ("Half of the pie is left. The answer is 1/2.", "0.5"),
    ("The answer is 18.0", "18"),
    ("The answer is: 1,234,567.5", "1234567.5"),
    ("The answer is 16 - 3 - 4 = 9.", "9"),
    ("Therefore, the answer is 42.", "42"),
    ("The final answer is 7 apples.", "7"),
    ("Answer: 12", "12"),
    # The first trigger wins; the made-up next question is cut off first.
    ("There are 5 + 4 = 9 apples. The answer is 9.\nQ: Tom has 3 cars. The answer is 3.", "9"),
    ("So 20 - 12 = 8. The answer is 8.\n\nQ: Shawn has five toys.", "8"),
    ("She has 4 left. The answer is 4.\nQuestion: How many are there? The answer is 100.", "4"),
    # No trigger: the last number of the (cut) text.
    ("So she has 5 + 4 = 9 apples.", "9"),
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.", "18"),
    ("He had 20 - 12 = 8 left.\nQ: If there are 3 cars and 2 more arrive, how many", "8"),
])
def test_number_extraction(completion, expected):
    assert extract_answer(completion, "number") == expected


@pytest.mark.parametrize("completion", [
    "The answer is not clear.",
    "I do not know how many apples there are.",
    "",
])
def test_number_extraction_gives_none_without_a_number(completion):
    assert extract_answer(completion, "number") is None


@pytest.mark.parametrize("completion, expected", [
    ("The answer must be a place with security. The answer is (B).", "B"),
    ("So the answer is B. library", "B"),
    ("The answer is b).", "B"),
    ("The answer is library.", "B"),
    ("The answer is Department Store.", "C"),
    ("The answer is the library.", "B"),
    ("The answer is option E.", "E"),
    ("The answer is (E) new york.", "E"),
    # "A" here is the article, not the letter.
    ("The answer is A mall.", "D"),
    ("Banks are open. (A) is wrong because it is closed. The answer is (C).\nQ: What is (D)?", "C"),
    # No trigger: the last labelled letter, else the option text named last.
    ("Banks need security, so (A) fits. But a department store fits better, so (C).", "C"),
    ("People shop there. So C.", "C"),
    ("A revolving door is used at a bank, and sometimes at a mall", "D"),
])
def test_choice_extraction(completion, expected):
    assert extract_answer(completion, "choice", CSQA_CHOICES) == expected


def test_choice_extraction_prefers_the_longer_option_mentioned_last():
    completion = "Alice and Claire swap, then Bob and Claire swap. At the end Alice has the purple ball"
    assert extract_answer(completion, "choice", TRACKING_CHOICES) == "B"


def test_choice_letters_outside_the_options_are_not_answers():
    # Tracking has three options; "E" cannot be one of them.
    assert extract_answer("The answer is (E).", "choice", TRACKING_CHOICES) is None
    assert extract_answer("The answer is (G).", "choice") is None


def test_choice_text_needs_choices():
    assert extract_answer("The answer is library.", "choice") is None
    assert extract_answer("The answer is (B).", "choice") == "B"


@pytest.mark.parametrize("completion, expected", [
    ("The coin was flipped by Ka and Sherrie. So the coin was flipped 2 times, which is an even number. "
     "The coin started heads up, so after an even number of flips, it will still be heads up. "
     "So the answer is yes.", "yes"),
    ("Jamey flips the coin once. Thus, the coin is not heads up. So the answer is no.", "no"),
    ("The answer is Yes", "yes"),
    ("The answer is NO.", "no"),
    ("The answer is true.", "yes"),
    ("The answer is False.", "no"),
    ("Hamsters are prey animals. So the answer is yes.\nQ: Is the sky green? The answer is no.", "yes"),
    # No trigger: the last yes/no.
    ("Is frost common in December? Yes. So, yes", "yes"),
    ("Hamsters are prey animals, so no", "no"),
])
def test_yes_no_extraction(completion, expected):
    assert extract_answer(completion, "yes_no") == expected


def test_yes_no_without_any_answer_is_none():
    assert extract_answer("The coin is flipped twice.", "yes_no") is None
    assert extract_answer("The answer is maybe.", "yes_no") is None


@pytest.mark.parametrize("completion, expected", [
    ('The last letter of "Whitney" is "y". The last letter of "Erika" is "a". '
     'The last letter of "Tj" is "j". The last letter of "Benito" is "o". '
     'Concatenating them is "yajo". The answer is "yajo".', "yajo"),
    ("The answer is yajo.", "yajo"),
    ("The answer is YAJO", "yajo"),
    ("The answer is “yajo”.", "yajo"),
    ("The answer is yajo.\nQ: Take the last letters of each words in \"Elise Lupe\". The answer is ee.", "yajo"),
    # No trigger: the last quoted string on the last line.
    ('The last letters are "y", "a", "j", "o".\nConcatenating them gives "yajo"', "yajo"),
])
def test_text_extraction(completion, expected):
    assert extract_answer(completion, "text") == expected


def test_text_without_trigger_or_quote_is_none():
    assert extract_answer("The last letters are y, a, j and o, so yajo", "text") is None


def test_custom_trigger():
    assert extract_answer("Reasoning... #### 72", "number", trigger="####") == "72"
    # The usual phrases are still accepted besides a custom trigger.
    assert extract_answer("Reasoning... The answer is 72.", "number", trigger="####") == "72"


@pytest.mark.parametrize("answer, kind, expected", [
    ("18", "number", "18"),
    ("18.0", "number", "18"),
    ("1,000", "number", "1000"),
    ("$2.50", "number", "2.5"),
    ("-3", "number", "-3"),
    ("0.6666666666666666", "number", "0.6666666666666666"),
    ("three", "number", None),
    ("B", "choice", "B"),
    ("b", "choice", "B"),
    ("(c)", "choice", "C"),
    ("library", "choice", None),
    ("Yes", "yes_no", "yes"),
    ("false", "yes_no", "no"),
    ("maybe", "yes_no", None),
    ('  "Ya  JO". ', "text", "ya jo"),
    ("", "text", None),
])
def test_normalize_answer(answer, kind, expected):
    assert normalize_answer(answer, kind) == expected


@pytest.mark.parametrize("pred, gold, kind", [
    ("18", "18.0", "number"),
    ("18.00", "18", "number"),
    ("0.666667", "0.6666666666666666", "number"),
    ("1/2", "0.5", "number"),
    ("(B)", "B", "choice"),
    ("Yes", "yes", "yes_no"),
    ('"YAJO".', "yajo", "text"),
])
def test_answers_match(pred, gold, kind):
    assert answers_match(pred, gold, kind)


@pytest.mark.parametrize("pred, gold, kind", [
    ("17", "18", "number"),
    # Integers are compared exactly: a relative tolerance would accept this.
    ("1000001", "1000000", "number"),
    ("0.67", "0.6666666666666666", "number"),
    ("-18", "18", "number"),
    ("C", "B", "choice"),
    ("no", "yes", "yes_no"),
    ("yaj", "yajo", "text"),
    ("abc", "18", "number"),
    (None, "18", "number"),
    (None, "B", "choice"),
    (None, "yes", "yes_no"),
    (None, "yajo", "text"),
])
def test_answers_mismatch(pred, gold, kind):
    assert not answers_match(pred, gold, kind)


def test_wrong_extracted_answers_mismatch():
    pred = extract_answer("She makes 9 * 3 = $27 every day. The answer is 27.", "number")
    assert pred == "27" and not answers_match(pred, "18", "number")
    pred = extract_answer("The answer is (A).", "choice", CSQA_CHOICES)
    assert not answers_match(pred, "B", "choice")


def test_unparseable_gold_is_an_error():
    with pytest.raises(InvalidGoldError, match="not a valid number answer"):
        answers_match("18", "eighteen", "number")


@pytest.mark.parametrize("call", [
    lambda: extract_answer("The answer is 5.", "integer"),
    lambda: normalize_answer("5", "integer"),
    lambda: answers_match(None, "5", "integer"),
])
def test_unknown_kind_raises(call):
    with pytest.raises(UnknownKindError) as info:
        call()
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "unknown answer kind 'integer' (expected one of number, choice, yes_no, text)"


def test_public_constants():
    assert KINDS == ("number", "choice", "yes_no", "text")
    assert DEFAULT_TRIGGER == "The answer is"


def _benchmark_files() -> list[Path]:
    files = sorted(BENCHMARKS.glob("*/test.jsonl"))
    if not files:
        pytest.skip(f"benchmark data not found under {BENCHMARKS}")
    return files


def test_benchmark_gold_answers_are_canonical():
    """Every gold answer in the shared benchmarks is already in canonical form."""
    for path in _benchmark_files():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["kind"] in KINDS, row["id"]
            assert normalize_answer(row["answer"], row["kind"]) == row["answer"], row["id"]
            if row["kind"] == "choice":
                assert row["answer"] in row["choices"], row["id"]


# Issue 12: edge cases that extraction used to get wrong (what it gave before in the comment).
@pytest.mark.parametrize("completion, kind, expected", [
    ("The answer is .5", "number", "0.5"),                                 # was 5
    ("The answer is -.5.", "number", "-0.5"),
    ("The answer is b.", "choice", "B"),                                   # was None
    # A scale word is not applied: the number as written, as lm-eval's GSM8K regex reads it.
    ("The answer is 1.5 million.", "number", "1.5"),
    ("The answer is twelve.", "number", "12"),                             # was None
    ("The answer is twenty-one.", "number", "21"),
    ("The answer is one hundred and five apples.", "number", "105"),
    ("The answer is minus three.", "number", "-3"),
    ("The answer is 5 apples and 3 pears, so 8.", "number", "8"),         # was 5
    ("The answer is 3 + 4, which is 7.", "number", "7"),
    # A negated answer word is no answer (not "no"): see _parse_yes_no.
    ("The answer is not yes.", "yes_no", None),                            # was yes
    ("The answer isn't true.", "yes_no", None),
])
def test_issue12_extraction_edge_cases(completion, kind, expected):
    assert extract_answer(completion, kind) == expected


def test_lone_lower_case_letter_must_be_an_option():
    assert extract_answer("The answer is b.", "choice", {"A": "x", "B": "y"}) == "B"
    assert extract_answer("The answer is f.", "choice", {"A": "x", "B": "y"}) is None
    # A lone "a" before an option text is still the article.
    assert extract_answer("The answer is a mall.", "choice", CSQA_CHOICES) == "D"


def test_number_words_only_without_digits():
    assert extract_answer("The answer is 3 (three).", "number") == "3"
    assert extract_answer("The answer is five three.", "number") is None
