"""Comparing two runs (`Lab.compare`), on the client side."""

from __future__ import annotations

import numpy as np
import pytest

from vlab_kernel.stats import compare


def test_compare_says_when_a_difference_is_noise() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(0.010, 0.0005, 300)
    same = rng.normal(0.010, 0.0005, 300)
    result = compare(a, same)
    assert result["significant"] is False and "within noise" in result["verdict"]
    slower = rng.normal(0.011, 0.0005, 300)  # 10 % slower
    result = compare(a, slower)
    assert result["significant"] is True and "slower" in result["verdict"]
    low, high = result["ci95_difference_s"]
    assert low < 0.001 < high
    assert result["relative_difference"] == pytest.approx(0.10, abs=0.02)
    with pytest.raises(ValueError):
        compare([0.01], [0.01, 0.02])
