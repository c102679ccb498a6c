"""Reading answers by kind: a gold answer's canonical form, the answer a completion states, and equality.

Every layer uses it: data validates gold answers with it, generation reads the
answers its samples state, collection the hint-free final answers, RL its
rollouts' answers, evaluation the test completions. It is kept apart from
generation (as lm-evaluation-harness keeps its filters and metrics apart), so
the same completions can be re-scored with other rules without re-generating.

Completions follow the few-shot chain-of-thought format of Wei et al. 2022,
"... reasoning ... The answer is X.", but small models often keep going with a
made-up next question ("\\nQ: ...") or never say the trigger phrase.

Canonical forms, per answer kind:

- ``number``: ``"18"`` for integral values, otherwise the shortest float repr
  (``"2.5"``, ``"0.6666666666666666"``);
- ``choice``: an upper-case letter ``"A"``..``"F"``;
- ``yes_no``: ``"yes"`` or ``"no"``;
- ``text``: lower case, surrounding quotes and trailing period removed,
  whitespace collapsed.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

from smlearn.errors import SmlearnError
from smlearn.prompts.templates import DEFAULT_TRIGGER

KINDS = ("number", "choice", "yes_no", "text")

# Letters a choice answer may use when the options are not known.
_DEFAULT_LETTERS = "ABCDEF"
# Relative tolerance for non-integral numbers: "0.666667" matches 2/3, while
# integers are compared exactly (1000001 must not match 1000000).
_NUMBER_REL_TOL = 1e-6


class UnknownKindError(SmlearnError, ValueError):
    """An answer kind other than those in KINDS."""

    def __init__(self, kind: str):
        super().__init__(f"unknown answer kind {kind!r} (expected one of {', '.join(KINDS)})")
        self.kind = kind


class InvalidGoldError(SmlearnError, ValueError):
    """A gold answer that does not parse as its kind (a data error, not a model error)."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownKindError(kind)


# --------------------------------------------------------------------------
# Locating the answer in a completion
# --------------------------------------------------------------------------

# A hallucinated next few-shot question starts on a new line with "Q:" or
# "Question:"; everything from there on is not part of this answer.
_NEXT_QUESTION_RE = re.compile(r"\n\s*(?:Q|Question)\s*:")
# GSM8K-style calculator annotations "<<16-3-4=9>>" repeat the numbers of the
# reasoning and would confuse the "last number" fallback.
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
# Phrases accepted besides the caller's trigger ("Therefore, the answer is"
# contains "the answer is").
_EXTRA_TRIGGERS = (r"\bthe\s+(?:final\s+|correct\s+)?answer\s+is\b", r"\banswer\s*:")
# End of the answer sentence: a period/!/? followed by whitespace or the end
# (so "2.5" and "$18.00" stay whole), or a line break.
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n")


def cut_at_next_question(completion: str) -> str:
    """The completion up to the first made-up next question."""
    match = _NEXT_QUESTION_RE.search(completion)
    return completion[: match.start()] if match else completion


def _trigger_re(trigger: str) -> re.Pattern[str]:
    return re.compile("|".join([re.escape(trigger), *_EXTRA_TRIGGERS]), re.IGNORECASE)


def _answer_segment(text: str, trigger: str) -> str | None:
    """The sentence after the first trigger, or None when no trigger occurs."""
    match = _trigger_re(trigger).search(text)
    return None if match is None else answer_text_after(text, match.end())


def answer_text_after(text: str, start: int) -> str:
    """The answer sentence's text from `start` (just after a trigger) to the end of the sentence."""
    # "The answer is:\n18" puts the answer on the next line: skip leading
    # whitespace and colons before looking for the end of the sentence.
    rest = text[start:].lstrip(" \t\r\n:")
    end = _SENTENCE_END_RE.search(rest)
    return (rest[: end.start()] if end else rest).strip()


# --------------------------------------------------------------------------
# number
# --------------------------------------------------------------------------

_NUMBER_RE = re.compile(
    # A sign counts only when it is not a binary operator ("16-3" is 16 and 3).
    r"(?P<sign>(?<![\w)])[-+\u2212])?"
    r"(?:\$\s?)?"
    # Thousands separators only in well-formed groups, so "3,4" is two numbers.
    r"(?:(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?"
    # A decimal without its leading zero (".5"), but not the tail of "1.5" or of a word ("v.5").
    r"|(?<![\w.,])(?P<bare>\.\d+))"
    r"(?:/(?P<den>\d+))?"
)


def _number_value(match: re.Match[str]) -> Fraction | None:
    if match["bare"] is not None:
        value = Fraction("0" + match["bare"])
    else:
        value = Fraction(match["int"].replace(",", "") + (match["frac"] or ""))
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value /= int(match["den"])
    return -value if match["sign"] in ("-", "\u2212") else value


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    # Shortest float repr, but positional ("1e-07" would re-parse as 1).
    return format(Decimal(repr(float(value))), "f")


# "\frac{1}{2}" (and \dfrac, \tfrac) with digits only is read as 1/2 without math-verify.
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
# None: use math-verify for LaTeX/expression answers when the `math` extra is installed; True/False: force.
_USE_MATH_VERIFY: bool | None = None


def set_math_verify(enabled: bool | None) -> None:
    """Use math-verify for number answers written as LaTeX or expressions: None (default) when installed,
    False never, True always (an error when it is not installed)."""
    global _USE_MATH_VERIFY
    if enabled:
        from . import math_equiv
        if not math_equiv.available():
            raise SmlearnError("math-verify is not installed: pip install 'smlearn[math]'")
    _USE_MATH_VERIFY = enabled


def _math_verify_on() -> bool:
    from . import math_equiv
    return math_equiv.available() if _USE_MATH_VERIFY is None else _USE_MATH_VERIFY


def _parse_number(text: str, last: bool = False) -> str | None:
    if not last and _math_verify_on():
        from . import math_equiv
        if math_equiv.looks_like_math(text):
            value = math_equiv.math_number(text.strip())
            if value is not None:
                return _format_number(value)
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    matches = list(_NUMBER_RE.finditer(_CALCULATOR_RE.sub("", text)))
    if not matches:
        return None
    value = _number_value(matches[-1] if last else matches[0])
    return None if value is None else _format_number(value)


# A gold number, read whole (nothing else in the string): an integer (thousands separated by commas in
# groups of three, or not at all), a decimal, scientific notation, a fraction or a mixed number "3 1/2".
_GOLD_NUMBER_RE = re.compile(
    r"(?P<sign>[-+\u2212])?\$?"
    r"(?:"
    r"(?P<whole>\d+)\s+(?P<num>\d+)/(?P<mden>\d+)"                                 # 3 1/2
    r"|(?P<fnum>\d+)/(?P<fden>\d+)"                                                  # 7/2
    r"|(?P<mant>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE](?P<exp>[-+]?\d+))?"  # 1,000.5  1e3
    r")"
)
_MAX_EXPONENT = 308   # beyond it a float is inf or 0: "1e400" is no usable number


def parse_gold_number(text: str) -> str | None:
    """The canonical form of a gold number answer read as a whole, or None when the string is not exactly
    one unambiguous number. Accepted: "18", "-2.5", "1,000", "1e3", "2.5E-2", "7/2", "3 1/2" (a proper
    fraction after the whole part), "$18". Refused: "1 000", "1,00", "0.1+0.2", "1e400", "3 4/2", "18 apples".
    """
    match = _GOLD_NUMBER_RE.fullmatch(text.strip())
    if match is None:
        return None
    if match["whole"] is not None:
        num, den = int(match["num"]), int(match["mden"])
        if den == 0 or num >= den:          # "3 4/2" or "1 0/0": not a mixed number
            return None
        value = int(match["whole"]) + Fraction(num, den)
    elif match["fnum"] is not None:
        if int(match["fden"]) == 0:
            return None
        value = Fraction(int(match["fnum"]), int(match["fden"]))
    else:
        value = Fraction(match["mant"].replace(",", ""))
        if match["exp"] is not None:
            exp = int(match["exp"])
            if abs(exp) > _MAX_EXPONENT:
                return None
            value *= Fraction(10) ** exp
    try:
        if value and not 0.0 < abs(float(value)) < math.inf:    # overflows to inf or underflows to 0
            return None
    except OverflowError:
        return None
    if match["sign"] in ("-", "\u2212"):
        value = -value
    return _format_number(value)


# Number words, for "The answer is twelve." (only read in the answer sentence, and only when it has no digits).
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10 ** 6, "billion": 10 ** 9}
_NUMBER_WORDS = {**_UNITS, **_TENS, **_SCALES}
_NUMBER_WORD_RE = re.compile(
    rf"(?P<neg>\b(?:minus|negative)\s+)?\b(?:{'|'.join(sorted(_NUMBER_WORDS, key=len, reverse=True))})\b"
    rf"(?:(?:\s+|\s*-\s*|\s+and\s+)(?:{'|'.join(sorted(_NUMBER_WORDS, key=len, reverse=True))})\b)*",
    re.IGNORECASE)


def _words_value(words: list[str]) -> int | None:
    """The value of "one hundred and twenty-three" style words; None for a sequence that is not a number."""
    total, current, last = 0, 0, None
    for word in words:
        if word in _UNITS or word in _TENS:
            value = _UNITS.get(word, _TENS.get(word))
            # "twenty three" but not "three twenty" or "five three".
            if last is not None and last not in _SCALES and not (last in _TENS and word in _UNITS and value < 10):
                return None
            current += value
        else:
            scale = _SCALES[word]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * scale
                current = 0
        last = word
    return total + current


def _number_from_words(segment: str) -> str | None:
    match = _NUMBER_WORD_RE.search(segment)
    if match is None:
        return None
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", match[0][len(match["neg"] or ""):]) if w.lower() != "and"]
    value = _words_value(words)
    if value is None:
        return None
    return str(-value if match["neg"] else value)


# Where the answer sentence states a result after working: "16 - 3 - 4 = 9", "5 apples and 3 pears, so 8".
_CONCLUSION_RE = re.compile(r"=|\b(?:so|thus|therefore|hence|which\s+is|that\s+is|i\.e\.|for\s+a\s+total\s+of|in\s+total)\b",
                            re.IGNORECASE)


def _number_from_segment(segment: str) -> str | None:
    """The number the answer sentence gives: the first number after its last "=" or conclusion word
    ("so", "thus", "therefore", "hence", "which is", "that is", "i.e.", "in total"), else its first number;
    number words ("twelve", "twenty-one") when the sentence has no digits.

    A scale word after a number is not applied ("1.5 million" is 1.5): the number is read as written, as
    lm-evaluation-harness's GSM8K answer regex reads it; a gold answer of 1500000 is written in digits.
    """
    conclusions = [m for m in _CONCLUSION_RE.finditer(segment)]
    for m in reversed(conclusions):
        tail = segment[m.end():]
        if _NUMBER_RE.search(_CALCULATOR_RE.sub("", tail)) or _LATEX_FRAC_RE.search(tail):
            return _parse_number(tail)
    if re.search(r"\d", segment):
        return _parse_number(segment)
    return _number_from_words(segment)


# --------------------------------------------------------------------------
# choice
# --------------------------------------------------------------------------

_ARTICLE_RE = re.compile(r"^(?:the|an|a)\s+", re.IGNORECASE)
_TRIM_CHARS = " \t\r\n\"'`*_\u201c\u201d\u2018\u2019"


def _letters(choices: dict[str, str] | None) -> str:
    return "".join(k.upper() for k in choices) if choices else _DEFAULT_LETTERS


def _letter_patterns(letters: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """Regexes for "(C)", "option C" and a bare upper-case "C" (in that order of trust)."""
    cls = f"[{letters}{letters.lower()}]"
    return (
        # "(C)" and "C)"; lower case accepted because the parenthesis makes it a label.
        re.compile(rf"(?<![\w(])\(?({cls})\)"),
        re.compile(rf"\b(?:option|choice)\s+\(?({cls})\b", re.IGNORECASE),
        # Bare letters only in upper case: a lower-case "a" is the article.
        re.compile(rf"(?<![\w'])([{letters}])(?![\w'])"),
    )


def _option_text_key(text: str) -> str:
    """An option text or answer, reduced for comparison ("The Library." -> "library")."""
    text = " ".join(text.strip(_TRIM_CHARS).rstrip(".").split()).lower()
    return _ARTICLE_RE.sub("", text)


def _last_option_mentioned(text: str, choices: dict[str, str]) -> str | None:
    """The letter of the option whose text occurs last (the longer one on a tie)."""
    best: tuple[int, int, str] | None = None
    for letter, option in choices.items():
        pattern = re.compile(rf"(?<!\w){re.escape(option.strip())}(?!\w)", re.IGNORECASE)
        for match in pattern.finditer(text):
            candidate = (match.end(), match.end() - match.start(), letter.upper())
            if best is None or candidate[:2] > best[:2]:
                best = candidate
    return best[2] if best else None


def _choice_from_segment(segment: str, choices: dict[str, str] | None) -> str | None:
    """The letter named by the answer sentence ("(B)", "B. library", "library")."""
    # An exact option text comes first, so "A mall" (article) is the mall option.
    if choices:
        key = _option_text_key(segment)
        for letter, option in choices.items():
            if key == _option_text_key(option):
                return letter.upper()
    # The whole sentence is one letter of the options: "The answer is b." names option B in any case
    # (only a lone letter; in "a mall" the "a" is the article).
    key = segment.strip(_TRIM_CHARS).rstrip(".").strip(_TRIM_CHARS)
    if len(key) == 1 and key.upper() in _letters(choices):
        return key.upper()
    for pattern in _letter_patterns(_letters(choices)):
        match = pattern.search(segment)
        if match:
            return match[1].upper()
    return _last_option_mentioned(segment, choices) if choices else None


def _choice_fallback(text: str, choices: dict[str, str] | None) -> str | None:
    """Without a trigger: the last letter label, else the last option text mentioned."""
    cls = _letters(choices)
    # Only labelled letters: "(C)", "C)", "option C" or " C." ending a
    # sentence; a bare capital in running text ("A coin ...") is too often a word.
    labelled = re.compile(
        rf"(?<![\w(])\(?([{cls}{cls.lower()}])\)"
        rf"|\b(?i:option|choice)\s+([{cls}{cls.lower()}])\b"
        rf"|(?:(?<=\s)|^)([{cls}])\.(?=\s|$)"
    )
    matches = list(labelled.finditer(text))
    if matches:
        last = matches[-1]
        return next(g for g in last.groups() if g).upper()
    return _last_option_mentioned(text, choices) if choices else None


def _normalize_choice(answer: str) -> str | None:
    key = answer.strip(_TRIM_CHARS).rstrip(".")
    # A lone letter is unambiguous in any case ("b" -> "B").
    if len(key) == 1 and key.upper() in _DEFAULT_LETTERS:
        return key.upper()
    return _choice_from_segment(answer, None)


# --------------------------------------------------------------------------
# yes_no and text
# --------------------------------------------------------------------------

_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_YES_NO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
# In free reasoning "true"/"false" are usually claims about facts, not the
# answer, so the trigger-less fallback only looks for yes/no.
_YES_NO_FALLBACK_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_QUOTED_RE = re.compile(r"\"([^\"\n]+)\"|\u201c([^\u201d\n]+)\u201d")


# A negated answer word ("not yes", "isn't true") states no answer.
_NEGATED_RE = re.compile(r"(?:\b(?:not|never)|n't)\s+$", re.IGNORECASE)


def _parse_yes_no(text: str) -> str | None:
    """The first yes/no/true/false, or None when there is none or it is negated: "The answer is not yes." is
    no answer rather than "no" (the model did not commit to the answer sentence's format, "not yes" also
    ends "not yes or no" and "not yes but maybe", and reading it as "no" would reward hedging in RL)."""
    match = _YES_NO_RE.search(text)
    if match is None or _NEGATED_RE.search(text[: match.start()]):
        return None
    return _YES_NO[match[1].lower()]


def _yes_no_fallback(text: str) -> str | None:
    matches = _YES_NO_FALLBACK_RE.findall(text)
    return matches[-1].lower() if matches else None


def _normalize_text(text: str) -> str | None:
    text = text.strip(_TRIM_CHARS)
    text = text.rstrip(".").strip(_TRIM_CHARS)  # '"yajo".' -> 'yajo'
    text = " ".join(text.split()).lower()
    return text or None


def _text_fallback(text: str) -> str | None:
    """Without a trigger: the last quoted string on the last non-empty line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    quoted = _QUOTED_RE.findall(lines[-1])
    if not quoted:
        return None
    return _normalize_text(next(g for g in quoted[-1] if g))


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def normalize_answer(answer: str, kind: str) -> str | None:
    """The canonical form of a gold or predicted answer; None if it does not parse."""
    _check_kind(kind)
    if kind == "number":
        return _parse_number(answer)
    if kind == "choice":
        return _normalize_choice(answer)
    if kind == "yes_no":
        return _parse_yes_no(answer)
    return _normalize_text(answer)


def extract_answer(completion: str, kind: str, choices: dict[str, str] | None = None,
                   trigger: str = DEFAULT_TRIGGER, strict: bool = False) -> str | None:
    """The canonical answer a raw completion gives, or None if it gives none.

    The completion is cut at a made-up next question; then the sentence after
    the first trigger phrase is parsed. Only when no trigger occurs does a
    per-kind fallback search the whole text (last number, last labelled
    letter, last yes/no, last quoted string) — unless `strict`: then a
    completion without the answer sentence gives None (RL rewards use this, so
    that "She has 5 + 7 = 12 apples. Then she" is no answer, not "12").
    """
    _check_kind(kind)
    text = cut_at_next_question(completion)
    segment = _answer_segment(text, trigger)
    if strict and segment is None:
        return None
    if kind == "number":
        return _number_from_segment(segment) if segment is not None else _parse_number(text, last=True)
    if kind == "choice":
        return _choice_from_segment(segment, choices) if segment is not None else _choice_fallback(text, choices)
    if kind == "yes_no":
        return _parse_yes_no(segment) if segment is not None else _yes_no_fallback(text)
    return _normalize_text(segment) if segment is not None else _text_fallback(text)


def answers_match(pred: str | None, gold: str, kind: str) -> bool:
    """Whether a predicted answer equals the gold one after normalisation.

    Raises UnknownKindError for an unknown kind and InvalidGoldError when the
    gold answer itself does not parse (a data problem that must not pass as a
    wrong prediction).
    """
    _check_kind(kind)
    gold_norm = normalize_answer(gold, kind)
    if gold_norm is None:
        raise InvalidGoldError(f"gold answer {gold!r} is not a valid {kind} answer")
    if pred is None:
        return False
    pred_norm = normalize_answer(pred, kind)
    if pred_norm is None:
        return False
    if kind == "number":
        return _numbers_match(pred_norm, gold_norm)
    return pred_norm == gold_norm


def _numbers_match(pred: str, gold: str) -> bool:
    a, b = Fraction(pred), Fraction(gold)
    if a.denominator == 1 and b.denominator == 1:
        return a == b
    return math.isclose(float(a), float(b), rel_tol=_NUMBER_REL_TOL)
