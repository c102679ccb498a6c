"""95 % confidence intervals for test accuracy and for the difference between two models.

- `wilson`: one model, one run: the Wilson score interval of `correct` out of `n` (better than the normal
  approximation near 0 and 1 and for small n, which is where our real-model numbers live).
- `bootstrap_mean` / `bootstrap_difference`: several seeds on one test set. Each seed's per-question
  correctness is a 0/1 vector over the same questions; the statistic is the mean over seeds of the accuracy
  (or of model A minus model B). A two-level bootstrap resamples seeds, then questions (the same questions
  for every seed and both models: the comparison stays paired), so the interval covers both the test-set
  sample and the seed-to-seed spread. With 3 seeds the seed level is coarse; the per-seed values are
  reported beside it.
- `cluster_bootstrap`: one accuracy over items that come in clusters (a reward model's held-out pairs:
  several pairs share a question and are not independent). It resamples whole clusters, so a question with
  many pairs does not pass for many independent trials; the statistic is the pooled share over all items,
  the same as the point estimate.
- `cluster_mean_difference`: the same resampling for a difference of two pooled means over clustered items
  (a reward model's mean score on mid rationales minus low ones, held-out questions as the clusters).
- `t_interval`: many seeds, one number each (SML − SFT accuracy of a seed): the Student-t interval of their
  mean, seeds as the unit. It answers "would another seed land here", which the two-level bootstrap above,
  coarse with few seeds, answers less well once there are ten or more.
"""
from __future__ import annotations

import math
import random
import statistics
from typing import Sequence

Z95 = 1.959963984540054

# Two-sided 95 % Student-t critical values t(0.975, df) for df = 1..30; beyond 30 the normal Z95 is within 2 %.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if correct == 0 else max(0.0, centre - half)), (1.0 if correct == n else min(1.0, centre + half))


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of independent values (one per seed): mean ± t(0.975, n − 1) · sd / √n."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {n}")
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = (T975[n - 2] if n - 1 <= len(T975) else Z95) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def seeds_mean_text(values: Sequence[float], fmt: str = "+.1f") -> tuple[str, str]:
    """The mean over seeds and its 95 % t-interval as text, for tables: ("+11.0", "[+6.4, +15.6]"), or
    (value, "(one seed)") when there is one seed. Two parts, so a table may set the mean apart (bold)."""
    if len(values) == 1:
        return format(values[0], fmt), "(one seed)"
    mean, lo, hi = t_interval(values)
    return format(mean, fmt), f"[{format(lo, fmt)}, {format(hi, fmt)}]"


def _check(per_seed: Sequence[Sequence[float]]) -> int:
    if not per_seed:
        raise ValueError("no seeds")
    n = len(per_seed[0])
    if n == 0 or any(len(v) != n for v in per_seed):
        raise ValueError("every seed needs a correctness value for the same, non-empty list of questions")
    return n


def _bootstrap(per_seed: Sequence[Sequence[float]], resamples: int, seed: int) -> tuple[float, float, float]:
    n = _check(per_seed)
    k = len(per_seed)
    point = sum(sum(v) / n for v in per_seed) / k
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        seeds = [per_seed[rng.randrange(k)] for _ in range(k)]
        questions = [rng.randrange(n) for _ in range(n)]
        stats.append(sum(sum(v[q] for q in questions) / n for v in seeds) / k)
    stats.sort()
    lo = stats[int(0.025 * (resamples - 1))]
    hi = stats[int(math.ceil(0.975 * (resamples - 1)))]
    return point, lo, hi


def bootstrap_mean(per_seed: Sequence[Sequence[float]], resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean over seeds of the accuracy, 2.5 %, 97.5 %): `per_seed[s][q]` is 1.0 when seed s got question q."""
    return _bootstrap(per_seed, resamples, seed)


def bootstrap_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean over seeds of accuracy(a) - accuracy(b), 2.5 %, 97.5 %), paired by seed and question."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} seeds for one model and {len(b)} for the other")
    return _bootstrap([[x - y for x, y in zip(va, vb, strict=True)] for va, vb in zip(a, b)], resamples, seed)


def cluster_bootstrap(clusters: Sequence[Sequence[float]], resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """(pooled mean over every item, 2.5 %, 97.5 %): `clusters[q]` are the values of cluster q's items (e.g. the
    0/1 outcomes of question q's held-out pairs, or one value a question: a plain bootstrap over questions);
    whole clusters are resampled with replacement."""
    clusters = [list(c) for c in clusters if len(c)]
    if not clusters:
        raise ValueError("no items")
    sums, sizes = [sum(c) for c in clusters], [len(c) for c in clusters]
    point = sum(sums) / sum(sizes)
    rng = random.Random(seed)
    k = len(clusters)
    stats = []
    for _ in range(resamples):
        picks = [rng.randrange(k) for _ in range(k)]
        stats.append(sum(sums[i] for i in picks) / sum(sizes[i] for i in picks))
    stats.sort()
    return point, stats[int(0.025 * (resamples - 1))], stats[int(math.ceil(0.975 * (resamples - 1)))]


def cluster_mean_difference(clusters: Sequence[tuple[Sequence[float], Sequence[float]]], resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float, float]:
    """(mean of every a item - mean of every b item, 2.5 %, 97.5 %): `clusters[q]` = (q's a values, q's b
    values), e.g. one held-out question's RM scores of mid and of low rationales. Whole clusters are
    resampled; a resample with no a or no b item is drawn again."""
    clusters = [(list(a), list(b)) for a, b in clusters if len(a) or len(b)]
    if not any(a for a, _ in clusters) or not any(b for _, b in clusters):
        raise ValueError("no items on one side")
    sa, na = [sum(a) for a, _ in clusters], [len(a) for a, _ in clusters]
    sb, nb = [sum(b) for _, b in clusters], [len(b) for _, b in clusters]
    point = sum(sa) / sum(na) - sum(sb) / sum(nb)
    rng = random.Random(seed)
    k = len(clusters)
    stats: list[float] = []
    while len(stats) < resamples:
        picks = [rng.randrange(k) for _ in range(k)]
        n_a, n_b = sum(na[i] for i in picks), sum(nb[i] for i in picks)
        if n_a and n_b:
            stats.append(sum(sa[i] for i in picks) / n_a - sum(sb[i] for i in picks) / n_b)
    stats.sort()
    return point, stats[int(0.025 * (resamples - 1))], stats[int(math.ceil(0.975 * (resamples - 1)))]
