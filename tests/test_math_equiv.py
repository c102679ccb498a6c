"""Math answer equivalence (issue 12): LaTeX, fractions and expressions as number answers.

The math-verify cases need the optional extra (pip install 'smlearn[math]', which CI installs); they are
skipped with a reason without it. Plain LaTeX fractions with digits are read without it.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from smlearn.answers import answers_match, extract, extract_answer, math_equiv, set_math_verify

needs_math_verify = pytest.mark.skipif(not math_equiv.available(),
                                       reason="math-verify not installed (pip install 'smlearn[math]')")


@pytest.fixture
def math_verify_off():
    set_math_verify(False)
    yield
    set_math_verify(None)


@pytest.mark.parametrize("completion, expected", [
    ("The answer is \\frac{1}{2}.", "0.5"),
    ("The answer is $\\dfrac{3}{4}$.", "0.75"),
    ("So the answer is \\tfrac{7}{2}.", "3.5"),
])
def test_latex_fractions_without_math_verify(math_verify_off, completion, expected):
    assert extract_answer(completion, "number") == expected
    assert answers_match("\\frac{1}{2}", "0.5", "number")


@needs_math_verify
@pytest.mark.parametrize("completion, expected", [
    ("The answer is \\frac{1}{2}.", "0.5"),
    ("The answer is $2^{3}$.", "8"),
    ("The answer is \\sqrt{16}.", "4"),
    ("The answer is 3 \\cdot 4.", "12"),
    ("The answer is \\frac{1}{2} + \\frac{1}{4}.", "0.75"),
    ("The answer is \\boxed{18}.", "18"),
    ("We add them, so the answer is 10^{2} = 100.", "100"),
])
def test_math_verify_reads_latex_and_expressions(completion, expected):
    assert extract_answer(completion, "number") == expected


@needs_math_verify
@pytest.mark.parametrize("pred, gold", [
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{2}{4}", "1/2"),
    ("2^{-1}", "0.5"),
    ("\\sqrt{2}", "1.4142135623730951"),
])
def test_math_verify_equivalence(pred, gold):
    assert answers_match(pred, gold, "number")


@needs_math_verify
@pytest.mark.parametrize("pred, gold", [("\\frac{1}{3}", "0.5"), ("2^{3}", "9"), ("\\sqrt{-1}", "1")])
def test_math_verify_non_equivalence(pred, gold):
    assert not answers_match(pred, gold, "number")


@needs_math_verify
def test_math_verify_works_off_the_main_thread():
    # math-verify's own timeout (signal.alarm) raises ValueError in a worker thread; ours does not.
    math_equiv.math_number.cache_clear()
    texts = [f"The answer is \\frac{{{i}}}{{4}} + 2^{{2}}." for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: extract_answer(t, "number"), texts))
    assert got == [extract._format_number(extract.Fraction(i, 4) + 4) for i in range(8)]


def test_timeout_guard_returns_promptly_from_any_thread():
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: math_equiv.call_with_timeout(lambda: time.sleep(s) or "done", 0.2),
                                [5, 0]))
    assert results == [(False, None), (True, "done")]
    assert time.monotonic() - t0 < 2


def test_forcing_math_verify_when_absent_is_an_error(monkeypatch):
    monkeypatch.setattr(math_equiv, "available", lambda: False)
    with pytest.raises(Exception, match="smlearn\\[math\\]"):
        set_math_verify(True)
