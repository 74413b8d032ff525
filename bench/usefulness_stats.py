"""Means and 95% confidence intervals over seeds (Student's t), and paired lifts between arms.

A lift is the per-seed difference of two arms trained from the same seed (same initial network,
same batch draws), so the seed-to-seed variation they share cancels; its interval is the t
interval of those differences. The arithmetic is the product's (:mod:`augflow.models.proxy`).
"""

from __future__ import annotations

from augflow.models.proxy import mean_ci, paired_lift

__all__ = ["excludes_zero", "mean_ci", "paired_lift"]


def excludes_zero(summary: dict) -> bool:
    lo, hi = summary["ci95"]
    return lo > 0 or hi < 0
