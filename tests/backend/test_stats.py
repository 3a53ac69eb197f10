"""The measurement statistics of a report: summary, intervals, stability."""

from __future__ import annotations

import numpy as np
import pytest

from vlab_backend.harness.stats import bootstrap_ci, full_statistics, latency_summary, stability


def test_summary_of_a_known_sample() -> None:
    samples = [float(x) for x in range(1, 101)]  # 1..100
    summary = latency_summary(samples)
    assert summary["mean"] == pytest.approx(50.5)
    assert summary["min"] == 1 and summary["max"] == 100
    assert summary["median"] == pytest.approx(50.5)
    # Linear interpolation between closest ranks: x[(n-1)p].
    assert summary["p90"] == pytest.approx(90.1)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["std"] == pytest.approx(np.std(samples, ddof=1))


def test_summary_of_nothing_is_null() -> None:
    assert latency_summary([]) == dict.fromkeys(
        ("mean", "std", "min", "max", "median", "p90", "p95", "p99"))


def test_bootstrap_intervals_cover_the_true_values() -> None:
    rng = np.random.default_rng(11)
    # Lognormal latencies around 10 ms: true mean exp(mu + s^2/2), true median exp(mu).
    mu, sigma = np.log(0.010), 0.2
    samples = rng.lognormal(mu, sigma, 2000)
    low, high = bootstrap_ci(samples, "mean")
    assert low < np.exp(mu + sigma**2 / 2) < high
    low, high = bootstrap_ci(samples, "median")
    assert low < np.exp(mu) < high
    assert high - low < 0.0005  # a tight interval for 2,000 samples
    # Reproducible from the samples alone.
    assert bootstrap_ci(samples, "median") == (low, high)


def test_stability_flags_variation_drift_and_throttling() -> None:
    rng = np.random.default_rng(3)
    steady = rng.normal(0.010, 0.0003, 400)
    assert stability(steady)["unstable"] is False
    drifting = np.concatenate([steady[:200], steady[200:] * 1.2])
    verdict = stability(drifting)
    assert verdict["unstable"] and verdict["drift"] == pytest.approx(0.2, abs=0.02)
    assert any("drift" in r for r in verdict["reasons"])
    noisy = rng.lognormal(np.log(0.01), 0.5, 400)
    assert any("high variation" in r for r in stability(noisy)["reasons"])
    throttled = stability(steady, freq_start_mhz=3000, freq_end_mhz=2000)
    assert any("throttling" in r for r in throttled["reasons"])
    assert full_statistics(steady)["ci95_mean"][0] < 0.010 < full_statistics(steady)[
        "ci95_mean"][1]


def test_large_samples_use_the_analytic_intervals() -> None:
    rng = np.random.default_rng(8)
    samples = rng.normal(0.010, 0.001, 50_000)
    stats = full_statistics(samples)
    low, high = stats["ci95_mean"]
    assert low < 0.010 < high and high - low == pytest.approx(2 * 1.96 * 0.001 / np.sqrt(50_000),
                                                               rel=0.05)
    low, high = stats["ci95_median"]
    assert low < 0.010 < high and high - low < 0.0001
