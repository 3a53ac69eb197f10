"""ONNX Runtime on the CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend.engines.base import (
    MAX_THREADS,
    EngineAdapter,
    EngineSpec,
    ParameterSpec,
    TensorSpec,
    aggregate_layers,
)

_OPT_LEVELS = ("disable", "basic", "extended", "all")

SPEC = EngineSpec(
    name="onnxruntime",
    display_name="ONNX Runtime (CPU)",
    formats=("onnx",),
    runtime_modules=("onnxruntime",),
    distribution="onnxruntime",
    # TYPE3: targets/host-cpu trains with onnxruntime-training in its own environment.
    host_cpu_types=("TYPE1", "TYPE2", "TYPE3"),
    parameters=(
        ParameterSpec("graph_optimization_level", "enum", "all",
                      "graph optimisations applied when the session is created",
                      choices=_OPT_LEVELS),
        ParameterSpec("execution_mode", "enum", "sequential",
                      "run independent branches of the graph in parallel or not",
                      choices=("sequential", "parallel")),
        ParameterSpec("inter_op_threads", "integer", 0,
                      "threads across operators (parallel mode); 0 = default", minimum=0,
                      maximum=MAX_THREADS),
    ),
)


def _dtype_of(onnx_type: str) -> str:
    # "tensor(float)" -> float32, etc.
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
            "string": "object"}.get(name, name)


def _static(shape: list[Any]) -> tuple[int, ...]:
    # Symbolic or unknown dimensions (usually the batch) are benchmarked at 1.
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)


class Adapter(EngineAdapter):
    spec = SPEC

    def load(self, model_path: Path, params: dict[str, Any], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = int(params.get("inter_op_threads", 0))
        level = params.get("graph_optimization_level", "all")
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        if params.get("execution_mode") == "parallel":
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        self._session = ort.InferenceSession(str(model_path), options,
                                             providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self._session.get_inputs()]
        self._feed: dict[str, np.ndarray] = {}
        self._last: list[np.ndarray] = []
        self._version = ort.__version__

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, _static(i.shape), _dtype_of(i.type))
                for i in self._session.get_inputs()]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(o.name, _static(o.shape), _dtype_of(o.type))
                for o in self._session.get_outputs()]

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        self._feed = dict(zip(self._names, arrays, strict=True))

    def infer(self) -> None:
        self._last = self._session.run(None, self._feed)

    def results(self) -> list[np.ndarray]:
        return [np.asarray(a) for a in self._last]

    def version(self) -> str:
        return self._version

    def profile_layers(self, runs: int) -> list[dict[str, Any]] | None:
        """ONNX Runtime's profiler, in a second session (profiling slows the first down)."""
        import json
        import os
        import tempfile

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as directory:
            options.profile_file_prefix = os.path.join(directory, "ort")
            session = ort.InferenceSession(self._session._model_path, options,
                                           providers=["CPUExecutionProvider"])
            for _ in range(runs):
                session.run(None, self._feed)
            trace = json.loads(Path(session.end_profiling()).read_text())
        times: dict[tuple[str, str], list[float]] = {}
        for event in trace:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                key = (event["name"].removesuffix("_kernel_time"),
                       event.get("args", {}).get("op_name", ""))
                times.setdefault(key, []).append(event["dur"] / 1e6)
        return aggregate_layers(times)
