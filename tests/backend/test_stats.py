from __future__ import annotations

import numpy as np
import pytest

from vlab_backend.harness.stats import latency_summary


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
