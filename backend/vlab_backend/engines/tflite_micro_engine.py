"""TensorFlow Lite Micro: the runtime of the MCU-class targets (`targets/mcu`).

It runs on a board (a real one, or the simulated board of `targets/mcu`, which executes the
model with TFLite Micro's own interpreter under the board's flash and SRAM budgets), driven
from the host by the target repository: never in the harness of a CPU host, so `host-cpu`
does not offer it. Its runtime lives in the target's own cached environment
(`vlab_backend.toolenv`), not in the server's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend.engines.base import EngineAdapter, EngineSpec, ParameterSpec, TensorSpec

SPEC = EngineSpec(
    name="tflite-micro",
    display_name="TensorFlow Lite Micro (microcontrollers)",
    formats=("tflite",),
    parameters=(
        ParameterSpec("arena_bytes", "integer", 0,
                      "tensor arena in bytes; 0 = the board's whole SRAM", minimum=0,
                      maximum=2**31),
    ),
    host_cpu=False,
    preload=False,
)


class Adapter(EngineAdapter):
    """Refuses to run in the harness: the MCU target's own steps drive the board."""

    spec = SPEC

    def load(self, model_path: Path, params: dict[str, Any], threads: int) -> None:
        raise RuntimeError("tflite-micro runs on MCU targets (targets/mcu), through the board "
                           "link, not in the CPU harness")

    def inputs(self) -> list[TensorSpec]:
        return []

    def outputs(self) -> list[TensorSpec]:
        return []

    def set_inputs(self, arrays: list[np.ndarray]) -> None:
        raise RuntimeError("no model is loaded")

    def infer(self) -> None:
        raise RuntimeError("no model is loaded")

    def results(self) -> list[np.ndarray]:
        return []

    def version(self) -> str:
        from vlab_backend.toolenv import TFLM_VERSION

        return TFLM_VERSION
