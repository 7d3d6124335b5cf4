"""Bootstrap intervals: coverage of a known mean, and agreement with the normal-theory interval."""

import math
import random

from llama_rlhf.algorithms.bootstrap import mean_ci, paired_diff_ci


def test_interval_matches_normal_theory_for_a_large_sample():
    rng = random.Random(1)
    xs = [rng.random() for _ in range(400)]
    mean, lo, hi = mean_ci(xs, resamples=4000)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = 1.96 * sd / math.sqrt(len(xs))
    assert lo < mean < hi
    assert abs((hi - lo) / 2 - half) < 0.15 * half


def test_coverage_of_the_true_mean_is_near_95_percent():
    rng = random.Random(2)
    hits = 0
    trials = 200
    for t in range(trials):
        xs = [1.0 if rng.random() < 0.3 else 0.0 for _ in range(100)]
        _, lo, hi = mean_ci(xs, resamples=500, seed=t)
        hits += lo <= 0.3 <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_paired_difference_is_tighter_than_unpaired_when_scores_correlate():
    rng = random.Random(3)
    base = [rng.random() for _ in range(200)]
    a = [x + 0.05 for x in base]
    d, lo, hi = paired_diff_ci(a, base)
    assert abs(d - 0.05) < 1e-9 and lo > 0.049 and hi < 0.051


def test_degenerate_inputs():
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([0.5]) == (0.5, 0.5, 0.5)
