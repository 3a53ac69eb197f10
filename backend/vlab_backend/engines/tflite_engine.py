"""LiteRT (TensorFlow Lite) interpreter with its default XNNPACK CPU delegate."""

from __future__ import annotations

from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend.engines.base import EngineAdapter, EngineSpec, ParameterSpec, TensorSpec

SPEC = EngineSpec(
    name="tflite",
    display_name="LiteRT / TensorFlow Lite (CPU)",
    formats=("tflite",),
    runtime_modules=("ai_edge_litert.interpreter",),
    distribution="ai-edge-litert",
    parameters=(
        ParameterSpec("use_xnnpack", "boolean", True, "apply the XNNPACK delegate"),
    ),
)


class Adapter(EngineAdapter):
    spec = SPEC

    def load(self, model_path: Path, params: dict[str, Any], threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = (OpResolverType.AUTO if params.get("use_xnnpack", True)
                    else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self._interpreter = Interpreter(model_path=str(model_path),
                                        num_threads=threads if threads > 0 else None,
                                        experimental_op_resolver_type=resolver)
        self._interpreter.allocate_tensors()
        self._in = self._interpreter.get_input_details()
        self._out = self._interpreter.get_output_details()

    @staticmethod
    def _specs(details: list[dict[str, Any]]) -> list[TensorSpec]:
        return [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]),
                           str(np.dtype(d["dtype"]))) for d in details]

    def inputs(self) -> list[TensorSpec]:
        return self._specs(self._in)

    def outputs(self) -> list[TensorSpec]:
        return self._specs(self._out)

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        for detail, array in zip(self._in, arrays, strict=True):
            self._interpreter.set_tensor(detail["index"], array)

    def infer(self) -> None:
        self._interpreter.invoke()

    def results(self) -> list[np.ndarray]:
        return [np.array(self._interpreter.get_tensor(d["index"])) for d in self._out]

    def version(self) -> str:
        return "ai-edge-litert " + dist_version("ai-edge-litert")
