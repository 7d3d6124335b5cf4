"""Bootstrap confidence intervals over prompts (percentile method).

Every gold figure of the report is a mean over held-out prompts; its 95% interval comes from resampling
the prompts with replacement. A difference between two policies evaluated on the same prompts is a
paired statistic: resample prompts, take the mean of the per-prompt differences.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def _percentiles(stats: list[float], level: float) -> tuple[float, float]:
    stats = sorted(stats)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    n = len(stats)
    return stats[max(0, math.floor(lo_q * n))], stats[min(n - 1, math.ceil(hi_q * n) - 1)]


def mean_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its bootstrap `level` interval."""
    xs = [float(x) for x in values]
    if not xs:
        return math.nan, math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, mean, mean
    rng = random.Random(seed)
    n = len(xs)
    stats = [sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)]
    return (mean, *_percentiles(stats, level))


def paired_diff_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """(mean(a - b), low, high) for per-prompt scores of two policies on the same prompts."""
    if len(a) != len(b):
        raise ValueError(f"paired_diff_ci: {len(a)} vs {len(b)} scores; pairs must cover the same prompts")
    return mean_ci([x - y for x, y in zip(a, b)], level, resamples, seed)
