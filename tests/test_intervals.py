"""Confidence intervals for accuracy (smlearn.evaluate.intervals)."""
from __future__ import annotations

import random

import pytest

from smlearn.evaluate.intervals import (bootstrap_difference, bootstrap_mean, cluster_bootstrap, cluster_mean_difference,
                                       seeds_mean_text, t_interval, wilson)


def test_wilson_known_values():
    lo, hi = wilson(5, 10)                      # textbook: 0.2366 - 0.7634
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)                      # never below 0, upper 0.2775
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_t_interval_known_values():
    # 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776 -> 3 ± 2.776 * 1.5811 / sqrt(5) = 3 ± 1.963
    mean, lo, hi = t_interval([1, 2, 3, 4, 5])
    assert mean == 3 and lo == pytest.approx(1.037, abs=1e-3) and hi == pytest.approx(4.963, abs=1e-3)
    mean, lo, hi = t_interval([2.0, 4.0])                           # df 1: t = 12.706, sd sqrt(2)
    assert (mean, lo, hi) == pytest.approx((3.0, 3 - 12.706, 3 + 12.706))
    many = [float(i % 7) for i in range(50)]                        # df > 30: the normal value
    m, lo, hi = t_interval(many)
    sd = (sum((v - m) ** 2 for v in many) / 49) ** 0.5
    assert hi - m == pytest.approx(1.959964 * sd / 50 ** 0.5, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


def test_seeds_mean_text_is_the_t_interval_as_table_text():
    assert seeds_mean_text([1, 2, 3, 4, 5]) == ("+3.0", "[+1.0, +5.0]")
    assert seeds_mean_text([0.25, 0.5], fmt=".2f") == ("0.38", "[-1.21, 1.96]")        # 0.375 ± 12.706 · 0.1768 / √2
    assert seeds_mean_text([4.0]) == ("+4.0", "(one seed)")


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


def test_cluster_bootstrap_is_wider_than_treating_clustered_items_as_independent():
    # 16 questions with 5 pairs each, every pair of a question won or lost together: 80 items but only 16
    # independent trials. The interval must be about as wide as 8/16's, not as 40/80's.
    clusters = [[1.0] * 5 if q % 2 else [0.0] * 5 for q in range(16)]
    point, lo, hi = cluster_bootstrap(clusters)
    assert point == 0.5 and lo <= point <= hi
    wlo, whi = wilson(40, 80)
    qlo, qhi = wilson(8, 16)
    assert hi - lo > (whi - wlo) * 1.3 and hi - lo == pytest.approx(qhi - qlo, abs=0.12)
    # independent items: close to the binomial interval
    rng = random.Random(3)
    flat = [[float(rng.random() < 0.7)] for _ in range(200)]
    p2, lo2, hi2 = cluster_bootstrap(flat)
    blo, bhi = wilson(int(sum(c[0] for c in flat)), 200)
    assert hi2 - lo2 == pytest.approx(bhi - blo, abs=0.03)
    assert cluster_bootstrap(clusters) == cluster_bootstrap(clusters)            # seeded
    assert cluster_bootstrap([[1.0, 1.0], [1.0]]) == (1.0, 1.0, 1.0)
    # pooled over items, as the point estimate: a big cluster weighs by its size
    assert cluster_bootstrap([[1.0] * 9, [0.0]])[0] == 0.9
    with pytest.raises(ValueError):
        cluster_bootstrap([[], []])


def test_cluster_mean_difference_pools_items_and_resamples_questions():
    # two questions: a = [3, 1] vs b = [0] and a = [2] vs b = [1, 1]: pooled means 2.0 - 2/3
    clusters = [([3.0, 1.0], [0.0]), ([2.0], [1.0, 1.0])]
    point, lo, hi = cluster_mean_difference(clusters)
    assert point == pytest.approx(2.0 - 2 / 3)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(2.0)   # resamples: q2 twice 1.0, q1 twice 2.0, mixed 4/3
    assert cluster_mean_difference(clusters) == (point, lo, hi)    # seeded
    # a question with items on one side only still counts: it is resampled with the others
    point, lo, hi = cluster_mean_difference([([1.0], []), ([], [0.0]), ([1.0], [0.0])])
    assert point == 1.0 and (lo, hi) == (1.0, 1.0)
    # the same gap, noisy items: no gap at all and a CI that covers 0 and shrinks with more questions
    rng = random.Random(5)
    few = [([rng.gauss(0, 2)], [rng.gauss(0, 2)]) for _ in range(10)]
    many = [([rng.gauss(0, 2)], [rng.gauss(0, 2)]) for _ in range(400)]
    _, lo_f, hi_f = cluster_mean_difference(few)
    p_m, lo_m, hi_m = cluster_mean_difference(many)
    assert lo_m < 0 < hi_m and hi_m - lo_m < (hi_f - lo_f) / 3
    with pytest.raises(ValueError):
        cluster_mean_difference([([1.0], []), ([2.0], [])])
