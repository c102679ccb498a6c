"""Small statistics for the lab analysis, no scipy/sklearn needed: ranks, ROC AUC and curve, Spearman's rho,
rates and means (None where undefined), moving averages."""
from __future__ import annotations

import math
from typing import Iterable, Sequence


def rankdata(values: Sequence[float]) -> list[float]:
    """1-based ranks; ties get the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[bool | int]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting 1/2.

    Mann-Whitney form from ranks. None when either class is empty.
    """
    if len(scores) != len(labels):
        raise ValueError(f"roc_auc: {len(scores)} scores but {len(labels)} labels")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of tie-averaged ranks); None when undefined."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return None
    rx, ry = rankdata(x), rankdata(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def roc_curve(scores: Sequence[float], labels: Sequence[bool | int]) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates), thresholds from high to low (ties stepped together)."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    pairs = sorted(zip(scores, labels), key=lambda p: -p[0])
    fpr, tpr = [0.0], [0.0]
    tp = fp = 0
    for i, (s, y) in enumerate(pairs):
        tp += bool(y)
        fp += not y
        if i + 1 == len(pairs) or pairs[i + 1][0] != s:
            fpr.append(fp / n_neg if n_neg else 0.0)
            tpr.append(tp / n_pos if n_pos else 0.0)
    return fpr, tpr


def rate(num: int, den: int) -> float | None:
    return num / den if den else None


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out

