"""Confidence intervals for accuracy (smlearn.evaluate.intervals)."""
from __future__ import annotations

import random

import pytest

from smlearn.evaluate.intervals import bootstrap_difference, bootstrap_mean, wilson


def test_wilson_known_values():
    lo, hi = wilson(5, 10)                      # textbook: 0.2366 - 0.7634
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)                      # never below 0, upper 0.2775
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_mean_brackets_the_mean_and_narrows_with_more_questions():
    rng = random.Random(1)
    small = [[float(rng.random() < 0.6) for _ in range(40)] for _ in range(3)]
    large = [[float(rng.random() < 0.6) for _ in range(400)] for _ in range(3)]
    point, lo, hi = bootstrap_mean(small)
    assert lo <= point <= hi and point == pytest.approx(sum(map(sum, small)) / 120)
    _, llo, lhi = bootstrap_mean(large)
    assert lhi - llo < hi - lo
    assert bootstrap_mean(small) == bootstrap_mean(small)          # seeded: the same interval twice
    assert bootstrap_mean([[1.0] * 5] * 3) == (1.0, 1.0, 1.0)


def test_bootstrap_difference_is_paired():
    # B is A with 3 more questions right: every paired resample differs by a positive amount, so the interval
    # is strictly above zero although the two accuracies' own intervals overlap.
    rng = random.Random(2)
    a = [[float(rng.random() < 0.5) for _ in range(60)] for _ in range(3)]
    b = []
    for v in a:
        w, flipped = list(v), 0
        for i, x in enumerate(w):
            if x == 0.0 and flipped < 3:
                w[i], flipped = 1.0, flipped + 1
        b.append(w)
    point, lo, hi = bootstrap_difference(b, a)
    assert point == pytest.approx(3 / 60) and lo >= 0.0 and hi > 0.0
    _, alo, ahi = bootstrap_mean(a)
    _, blo, bhi = bootstrap_mean(b)
    assert blo < ahi                                                 # unpaired intervals overlap
    assert bootstrap_difference(a, a) == (0.0, 0.0, 0.0)


def test_bootstrap_refuses_mismatched_inputs():
    with pytest.raises(ValueError):
        bootstrap_mean([[1.0, 0.0], [1.0]])
    with pytest.raises(ValueError):
        bootstrap_difference([[1.0]], [[1.0], [0.0]])
    with pytest.raises(ValueError):
        bootstrap_mean([])
