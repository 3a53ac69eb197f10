"""TFLite intake through the LiteRT interpreter: tensors, parameters and a FLOPs estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend.engines.base import TensorSpec
from vlab_backend.errors import short_message
from vlab_backend.intake.inspect import ModelInfo, ModelRejected


def _spec(detail: dict[str, Any]) -> TensorSpec:
    return TensorSpec(detail["name"], tuple(int(x) for x in detail["shape"]),
                      str(np.dtype(detail["dtype"])))


def inspect_tflite(path: Path, filename: str) -> ModelInfo:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        # The details decode names: a name that is not UTF-8 raises here.
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        ops = interpreter._get_ops_details()
        inputs = [_spec(d) for d in interpreter.get_input_details()]
        outputs = [_spec(d) for d in interpreter.get_output_details()]
    except UnicodeDecodeError:
        raise  # inspect_model words it, for every format
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError variants
        raise ModelRejected(
            f"{filename}: the TFLite model cannot be loaded: {short_message(exc)}") from exc
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    constants = {int(i) for op in ops for i in op["inputs"]
                 if i >= 0 and int(i) not in produced and int(i) not in graph_inputs}

    def numel(index: int) -> int:
        return int(np.prod(tensors[index]["shape"], dtype=np.int64)) if index in tensors else 0

    flops = 0
    for op in ops:
        produces = [int(i) for i in op["outputs"] if i >= 0]
        consumes = [int(i) for i in op["inputs"]]
        out = numel(produces[0]) if produces else 0
        name = op["op_name"]
        weight = tensors.get(consumes[1]) if len(consumes) > 1 else None
        if name == "CONV_2D" and weight is not None:
            flops += 2 * out * int(np.prod(weight["shape"][1:]))
        elif name == "DEPTHWISE_CONV_2D" and weight is not None and len(weight["shape"]) > 2:
            kh, kw = weight["shape"][1:3]
            flops += 2 * out * int(kh) * int(kw)
        elif name == "FULLY_CONNECTED" and weight is not None and len(weight["shape"]):
            flops += 2 * out * int(weight["shape"][-1])
        elif name not in ("RESHAPE", "DEQUANTIZE", "QUANTIZE", "CONCATENATION", "PAD"):
            flops += out
    return ModelInfo(
        format="tflite",
        inputs=inputs,
        outputs=outputs,
        nb_parameters=sum(numel(i) for i in constants),
        flops=flops,
    )
