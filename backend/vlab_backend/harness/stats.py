"""Latency statistics and the measurement policy's checks.

Percentiles use linear interpolation between closest ranks (NumPy's default, Hyndman & Fan
type 7): the p-th percentile is x[(n-1)·p/100] interpolated. For n >= 100 it differs from
onnxruntime_perf_test's nearest-rank sorted[floor(n·p)] by at most one sample gap.

Confidence intervals are 95 % percentile-bootstrap intervals (2,000 resamples, fixed seed, so a
report is reproducible from its samples) up to 1,000 samples; above, where the bootstrap would
cost seconds, the mean's interval is the normal one (mean ± 1.96·s/√n) and the median's the
distribution-free order-statistic interval (ranks n/2 ± 1.96·√n/2).

A run is flagged unstable when its coefficient of variation exceeds 10 %, when the median of
its second half differs from the first half's by more than 5 % (drift: warm-up too short,
throttling, interference), or when the CPU frequency fell by more than 10 % during the run.

Comparing two runs (`compare`) is the client's (`vlab_kernel.stats`); the resampling constants
live there so that both sides resample alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlab_kernel.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

CV_LIMIT = 0.10
DRIFT_LIMIT = 0.05
FREQUENCY_DROP_LIMIT = 0.10
_CHUNK_ELEMENTS = 5_000_000  # bounds the memory of one bootstrap batch


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


def bootstrap_ci(samples: np.ndarray, statistic: str, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean or the median."""
    rng = np.random.default_rng(seed)
    n = samples.size
    rows = max(1, min(resamples, _CHUNK_ELEMENTS // max(n, 1)))
    estimates: list[np.ndarray] = []
    done = 0
    while done < resamples:
        batch = min(rows, resamples - done)
        draws = samples[rng.integers(0, n, size=(batch, n))]
        estimates.append(draws.mean(axis=1) if statistic == "mean"
                         else np.median(draws, axis=1))
        done += batch
    low, high = np.percentile(np.concatenate(estimates), [2.5, 97.5])
    return float(low), float(high)


def stability(samples_s: Sequence[float], freq_start_mhz: float | None = None,
              freq_end_mhz: float | None = None) -> dict[str, Any]:
    """Coefficient of variation, drift between halves, and the verdict with its reasons."""
    data = np.asarray(samples_s, dtype=np.float64)
    result: dict[str, Any] = {"cv": None, "drift": None, "unstable": False, "reasons": []}
    if data.size < 4:
        return result
    cv = float(data.std(ddof=1) / data.mean()) if data.mean() > 0 else 0.0
    half = data.size // 2
    first, second = float(np.median(data[:half])), float(np.median(data[half:]))
    drift = (second - first) / first if first > 0 else 0.0
    result.update(cv=cv, drift=drift)
    if cv > CV_LIMIT:
        result["reasons"].append(f"high variation (CV {cv:.1%} > {CV_LIMIT:.0%})")
    if abs(drift) > DRIFT_LIMIT:
        result["reasons"].append(f"drift between halves ({drift:+.1%})")
    if freq_start_mhz and freq_end_mhz and \
            freq_end_mhz < freq_start_mhz * (1 - FREQUENCY_DROP_LIMIT):
        result["reasons"].append(f"CPU frequency fell from {freq_start_mhz:.0f} to "
                                 f"{freq_end_mhz:.0f} MHz (throttling)")
    result["unstable"] = bool(result["reasons"])
    return result


LARGE_SAMPLE = 1000


def large_sample_ci(samples: np.ndarray, statistic: str) -> tuple[float, float]:
    n = samples.size
    if statistic == "mean":
        half = 1.96 * float(samples.std(ddof=1)) / np.sqrt(n)
        center = float(samples.mean())
        return center - half, center + half
    ordered = np.sort(samples)
    spread = 1.96 * np.sqrt(n) / 2
    low = max(0, int(np.floor(n / 2 - spread)) - 1)
    high = min(n - 1, int(np.ceil(n / 2 + spread)))
    return float(ordered[low]), float(ordered[high])


def confidence_interval(samples: np.ndarray, statistic: str) -> tuple[float, float]:
    if samples.size > LARGE_SAMPLE:
        return large_sample_ci(samples, statistic)
    return bootstrap_ci(samples, statistic)


def full_statistics(samples_s: Sequence[float], freq_start_mhz: float | None = None,
                    freq_end_mhz: float | None = None) -> dict[str, Any]:
    """The report's `inference_latency` block without the raw samples."""
    summary: dict[str, Any] = dict(latency_summary(samples_s))
    data = np.asarray(samples_s, dtype=np.float64)
    if data.size >= 2:
        summary["ci95_mean"] = list(confidence_interval(data, "mean"))
        summary["ci95_median"] = list(confidence_interval(data, "median"))
    else:
        summary["ci95_mean"] = summary["ci95_median"] = None
    summary["stability"] = stability(samples_s, freq_start_mhz, freq_end_mhz)
    return summary

