"""A synthetic engine with a known latency distribution, for calibrating the measurement:
each inference busy-waits a duration drawn from a normal distribution (mean_ms, std_ms).
It accepts any ONNX or TFLite model and ignores it; outputs echo the inputs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend.engines.base import EngineAdapter, EngineSpec, ParameterSpec, TensorSpec

# One inference may wait a minute at most: a calibration run, not a way to hold an instance.
MAX_LATENCY_MS = 60_000.0

SPEC = EngineSpec(
    name="synthetic",
    display_name="Synthetic latency (calibration)",
    formats=("onnx", "tflite"),
    parameters=(
        ParameterSpec("mean_ms", "number", 1.0, "mean latency of an inference", minimum=0,
                      maximum=MAX_LATENCY_MS),
        ParameterSpec("std_ms", "number", 0.0, "standard deviation of the latency", minimum=0,
                      maximum=MAX_LATENCY_MS),
    ),
)


class Adapter(EngineAdapter):
    spec = SPEC

    def load(self, model_path: Path, params: dict[str, Any], threads: int) -> None:
        self._mean = float(params.get("mean_ms", 1.0)) / 1e3
        self._std = float(params.get("std_ms", 0.0)) / 1e3
        self._rng = np.random.default_rng(int(params.get("seed", 0)))
        self._inputs: list[np.ndarray] = []

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("x", (1, 4), "float32")]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("y", (1, 4), "float32")]

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        self._inputs = arrays
        self._next = max(0.0, self._rng.normal(self._mean, self._std))

    def infer(self) -> None:
        deadline = time.perf_counter() + self._next
        while time.perf_counter() < deadline:
            pass
        self._next = max(0.0, self._rng.normal(self._mean, self._std))

    def results(self) -> list[np.ndarray]:
        return list(self._inputs)

    def version(self) -> str:
        return "synthetic 1"
