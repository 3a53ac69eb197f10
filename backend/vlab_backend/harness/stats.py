"""Latency statistics.

Percentiles use linear interpolation between closest ranks (NumPy's default, Hyndman & Fan
type 7): p-th percentile = x[(n-1)·p/100] interpolated. For n >= 100 it differs from
onnxruntime_perf_test's nearest-rank sorted[floor(n·p)] by at most one sample gap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_summary(samples_s: Sequence[float]) -> dict[str, float | None]:
    if len(samples_s) == 0:
        return dict.fromkeys(("mean", "std", "min", "max", "median", "p90", "p95", "p99"))
    data = np.asarray(samples_s, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(data, [50, 90, 95, 99])
    return {
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "min": float(data.min()),
        "max": float(data.max()),
        "median": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
    }
