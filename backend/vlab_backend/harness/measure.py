"""The timing loop. Only `adapter.infer()` sits between the two clock reads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vlab_backend.engines.base import EngineAdapter

ProgressFn = Callable[[str, int, int], None]


@dataclass
class Timings:
    warmup_runs: int = 0
    first_inference_s: float = 0.0
    samples_s: list[float] = field(default_factory=list)


def warm_up(adapter: EngineAdapter, inputs: list[np.ndarray], min_runs: int, min_s: float,
            timings: Timings) -> None:
    """Untimed runs until both `min_runs` and `min_s` are reached (the first run is recorded)."""
    adapter.set_inputs(inputs)
    clock = time.perf_counter
    start = clock()
    adapter.infer()
    timings.first_inference_s = clock() - start
    runs = 1
    while runs < min_runs or clock() - start < min_s:
        adapter.infer()
        runs += 1
    timings.warmup_runs = runs


PROGRESS_INTERVAL_S = 0.25  # progress reports are rare so that they cost the target nothing


def timed_runs(adapter: EngineAdapter, runs: int, min_time_s: float, timings: Timings,
               progress: ProgressFn) -> None:
    """TYPE1: the same bound inputs, at least `runs` inferences and `min_time_s` seconds."""
    clock = time.perf_counter
    infer = adapter.infer
    samples = timings.samples_s
    started = reported = t1 = clock()
    done = 0
    while done < runs or t1 - started < min_time_s:  # t1: the end of the last inference
        t0 = clock()
        infer()
        t1 = clock()
        samples.append(t1 - t0)
        done += 1
        if t1 - reported >= PROGRESS_INTERVAL_S:
            progress("inference", done, runs)
            reported = t1


def dataset_runs(adapter: EngineAdapter, samples: Iterator[list[np.ndarray]], count: int,
                 timings: Timings, sink: Callable[[list[np.ndarray]], None],
                 progress: ProgressFn) -> None:
    """TYPE2: one timed inference per dataset sample; outputs handed to `sink` untimed."""
    clock = time.perf_counter
    infer = adapter.infer
    reported = clock()
    for done, arrays in enumerate(samples, start=1):
        adapter.set_inputs(arrays)
        t0 = clock()
        infer()
        t1 = clock()
        timings.samples_s.append(t1 - t0)
        sink(adapter.results())
        if t1 - reported >= PROGRESS_INTERVAL_S:
            progress("inference", done, count)
            reported = t1
