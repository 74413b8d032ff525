"""Means and 95% confidence intervals over seeds (Student's t), and paired lifts between arms.

A lift is the per-seed difference of two arms trained from the same seed (same initial network,
same batch draws), so the seed-to-seed variation they share cancels; its interval is the t
interval of those differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def mean_ci(values: Sequence[float]) -> dict[str, float | list[float]]:
    """``{"mean": m, "ci95": [lo, hi]}``; with one value the interval is that value."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarise")
    m = sum(values) / n
    if n == 1:
        return {"mean": m, "ci95": [m, m]}
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return {"mean": m, "ci95": [m - half, m + half]}


def paired_lift(a: Sequence[float], b: Sequence[float]) -> dict[str, float | list[float]]:
    """Mean and 95% CI of ``a - b`` over seeds (same seeds, same order)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} seeds: lifts need the same seeds on both sides")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)])


def excludes_zero(summary: dict) -> bool:
    lo, hi = summary["ci95"]
    return lo > 0 or hi < 0
