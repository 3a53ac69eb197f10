"""The statistics behind the fidelity verdicts of `make bench`."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.fidelity import median_interval, verdict


def test_median_interval_is_the_sign_test_interval() -> None:
    assert median_interval([float(v) for v in range(9, 0, -1)]) == (2.0, 8.0)
    # Too few values for 95 %: the whole range, the widest honest answer.
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)


def test_median_interval_covers_the_median_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    trials = 4000
    covered = 0
    for _ in range(trials):
        low, high = median_interval(list(rng.lognormal(0.0, 0.3, size=9)))
        covered += low <= 1.0 <= high  # the lognormal(0, σ) median is exactly 1
    coverage = covered / trials
    exact = 1 - 2 * sum(math.comb(9, i) for i in range(2)) / 2 ** 9  # 0.961
    assert abs(coverage - exact) < 0.015


def test_verdicts() -> None:
    assert verdict(0.985, 1.015) == "met"
    assert verdict(0.95, 1.01) == verdict(0.99, 1.05) == "within noise"
    assert verdict(1.03, 1.08) == verdict(0.90, 0.97) == "not met"
