"""Comparing two runs' latencies (`Lab.compare`, the results explorer), and the resampling
constants that the server's measurement statistics (`vlab_backend.harness.stats`) share.

Resampling uses a fixed seed, so a comparison or a report is reproducible from its samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261128
# Beyond this many samples per run, random subsamples keep the resampling affordable.
COMPARE_SUBSAMPLE = 5000


def compare(a_s: Sequence[float], b_s: Sequence[float], permutations: int = 2000,
            seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """B against A: the relative difference of medians with a 95 % bootstrap interval and a
    two-sided permutation test. Within noise when the interval contains 0 or p >= 0.05."""
    a = np.asarray(a_s, dtype=np.float64)
    b = np.asarray(b_s, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError("each run needs at least 2 samples to compare")
    rng = np.random.default_rng(seed)
    if a.size > COMPARE_SUBSAMPLE:
        a = rng.choice(a, COMPARE_SUBSAMPLE, replace=False)
    if b.size > COMPARE_SUBSAMPLE:
        b = rng.choice(b, COMPARE_SUBSAMPLE, replace=False)
    med_a, med_b = float(np.median(a)), float(np.median(b))
    observed = med_b - med_a
    # Bootstrap of the difference of medians (runs resampled independently).
    diffs = []
    for _ in range(BOOTSTRAP_RESAMPLES // 100):
        ra = a[rng.integers(0, a.size, size=(100, a.size))]
        rb = b[rng.integers(0, b.size, size=(100, b.size))]
        diffs.append(np.median(rb, axis=1) - np.median(ra, axis=1))
    low, high = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    # Permutation test of the difference of medians.
    pooled = np.concatenate([a, b])
    extreme = 0
    for _ in range(permutations):
        rng.shuffle(pooled)
        difference = np.median(pooled[a.size:]) - np.median(pooled[:a.size])
        extreme += abs(difference) >= abs(observed) - 1e-15
    p_value = (extreme + 1) / (permutations + 1)
    relative = observed / med_a if med_a else 0.0
    significant = bool(p_value < 0.05 and not (low <= 0.0 <= high))
    if significant:
        verdict = (f"B is {abs(relative):.1%} {'slower' if observed > 0 else 'faster'} than A "
                   f"(median; 95% CI {low / med_a:+.1%} to {high / med_a:+.1%}, p={p_value:.3f})")
    else:
        verdict = (f"no significant difference: within noise (median difference "
                   f"{relative:+.1%}, 95% CI {low / med_a:+.1%} to {high / med_a:+.1%}, "
                   f"p={p_value:.3f})")
    return {"median_a_s": med_a, "median_b_s": med_b, "difference_s": observed,
            "relative_difference": relative, "ci95_difference_s": [float(low), float(high)],
            "p_value": p_value, "significant": significant, "verdict": verdict}
