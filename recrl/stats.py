"""Intervals over training seeds (no torch, no plotting: recrl.report and recrl.compare share it).

A handful of seeds is a small sample: the 95% interval of their mean uses Student's t, not the
normal 1.96 that suits hundreds of users (recrl.evaluation.mean_ci95).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Two-sided 95% quantiles of Student's t by degrees of freedom (seeds - 1); 1.96 beyond 30.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
        17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
        25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}


def mean_ci95_over_seeds(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% CI over seeds (NaN for one seed)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_95.get(n - 1, 1.96) * sd / math.sqrt(n)
