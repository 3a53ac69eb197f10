"""Conversions: `onnx_fp16` on networks whose weights are computed in-graph (the onnx
package's light model zoo: ConstantOfShape nodes), constant folding, the checks made before
any tool starts, int8 calibration data, and (slow: onnx2tf's cached environment) ONNX ->
TFLite -> ONNX with what each step did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.models import onnx_zoo
from vlab_backend.convert import (
    ConversionError,
    _calibration,
    check_conversion,
    convert,
    convert_traced,
    converted_name,
    fold_constants,
)


def run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, sess_options=options,
                                   providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, feeds)[0]
    return result


def mlp(path: Path) -> Path:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.1, n)
               for n, s in (("W1", (32, 64)), ("B1", (32,)), ("W2", (10, 32)), ("B2", (10,)))]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W1", "B1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "B2"], ["logits"], transB=1)],
        "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


@pytest.mark.parametrize("name", ["squeezenet", "densenet121"])
def test_onnx_fp16_converts_the_light_zoo(name: str, tmp_path: Path) -> None:
    source = onnx_zoo(name)
    produced, conversion = convert_traced(source, "onnx", "onnx_fp16", tmp_path)
    model = onnx.load(str(produced))
    assert not [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    assert {i.data_type for i in model.graph.initializer} >= {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O kept
    assert conversion.tool.startswith("onnxconverter-common ")
    assert conversion.options == {"keep_io_types": True, "fold_constants": True}
    [real_input] = model.graph.input  # the initializers left the inputs
    feeds = {real_input.name: np.random.default_rng(0).random(
        [d.dim_value for d in real_input.type.tensor_type.shape.dim], dtype=np.float32)}
    assert np.allclose(run(model, feeds), run(source, feeds), atol=1e-2)


def test_folding_keeps_what_it_cannot_fold(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["w"],
                          value=numpy_helper.from_array(np.array([0.5], np.float32))),
         helper.make_node("RandomUniform", [], ["noise"], shape=[2], dtype=TensorProto.FLOAT),
         helper.make_node("Add", ["x", "w"], ["y0"]),
         helper.make_node("Add", ["y0", "noise"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([2], np.int64), "shape")])
    model = fold_constants(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                             ir_version=3))
    assert [n.op_type for n in model.graph.node] == ["RandomUniform", "Add", "Add"]
    assert [i.name for i in model.graph.input] == ["x"]  # the initializer left the inputs
    assert model.ir_version == 4
    folded = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert folded["w"].tolist() == [0.5, 0.5]


@pytest.mark.parametrize(("source", "target", "dataset", "message"), [
    ("onnx", "tensorrt", False, "unknown conversion 'tensorrt'"),
    ("tflite", "tflite", False, "tflite applies to ONNX models, not tflite"),
    ("onnx", "onnx", False, "conversion to onnx applies to TFLite models"),
    ("onnx", "tflite_int8", False, "tflite_int8 needs a representative dataset"),
    ("zip", "openvino", False, "cannot convert zip models to OpenVINO IR"),
])
def test_conversions_are_checked_before_any_tool_starts(source: str, target: str,
                                                        dataset: bool, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        check_conversion(source, target, Path("d.bin") if dataset else None)


def test_converted_names() -> None:
    assert converted_name("digits.onnx", "tflite") == "digits_float32.tflite"
    assert converted_name("digits.onnx", "tflite_int8") == "digits_int8.tflite"
    assert converted_name("digits_int8.tflite", "onnx") == "digits_int8.onnx"
    assert converted_name("net.onnx", "onnx_fp16") == "net_fp16.onnx"


def test_calibration_data_from_a_raw_dataset(tmp_path: Path) -> None:
    conv = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["y"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 5])])
    model = helper.make_model(conv)
    samples = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    dataset = tmp_path / "d.bin"
    samples.tofile(dataset)
    [[name, npy, mean, std]], count = _calibration(model, dataset, tmp_path)
    assert name == "image" and count == 2
    assert np.array_equal(np.load(npy), samples.transpose(0, 2, 3, 1))  # NHWC for onnx2tf
    assert mean.shape == std.shape == (1, 1, 1, 3)
    (tmp_path / "bad.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ConversionError, match="not a multiple of the model's input size"):
        _calibration(model, tmp_path / "bad.bin", tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run creates onnx2tf's environment
def test_onnx_to_tflite_and_back(tmp_path: Path) -> None:
    """float32 and int8 through onnx2tf, then back to ONNX through tf2onnx: each result runs
    and computes what the source computes (int8 within its quantisation)."""
    source = mlp(tmp_path / "digits.onnx")
    x = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    expected = run(source, {"input": x})
    out = tmp_path / "out"
    out.mkdir()
    tflite, conversion = convert_traced(source, "onnx", "tflite", out)
    assert tflite.read_bytes()[4:8] == b"TFL3"
    assert conversion.tool == "onnx2tf 1.29.24" and conversion.options == {"source_opset": 17}
    float_tflite = tflite.rename(tmp_path / "digits_float32.tflite")

    back, conversion = convert_traced(float_tflite, "tflite", "onnx", out)
    assert conversion.tool == "tf2onnx 1.17.0" and conversion.options == {"opset": 17}
    back_model = onnx.load(str(back))
    [name] = [i.name for i in back_model.graph.input]
    assert np.allclose(run(back_model, {name: x}), expected, atol=1e-5)

    calibration = tmp_path / "calibration.bin"
    np.random.default_rng(2).random((16, 64), dtype=np.float32).tofile(calibration)
    int8 = convert(source, "onnx", "tflite_int8", out, calibration)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(int8))
    interpreter.allocate_tensors()
    [detail], [output] = interpreter.get_input_details(), interpreter.get_output_details()
    assert detail["dtype"] == np.int8 and output["dtype"] == np.int8
    scale, zero = detail["quantization"]
    interpreter.set_tensor(detail["index"], np.clip(np.round(x / scale + zero), -128, 127)
                           .astype(np.int8))
    interpreter.invoke()
    out_scale, out_zero = output["quantization"]
    got = (interpreter.get_tensor(output["index"]).astype(np.float32) - out_zero) * out_scale
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max() + 0.05
    assert int8.stat().st_size < float_tflite.stat().st_size
