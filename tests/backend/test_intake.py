from __future__ import annotations

from pathlib import Path

import pytest

from tests.models import conv_model, external_data_model
from vlab_backend.intake import ModelRejected, inspect_model


def test_model_zoo_onnx_is_described(squeezenet: Path) -> None:
    info = inspect_model(squeezenet, squeezenet.name)
    assert info.format == "onnx"
    assert [(t.name, t.shape, t.dtype) for t in info.inputs] == [
        ("data_0", (1, 3, 224, 224), "float32")]
    assert info.outputs[0].shape == (1, 1000, 1, 1)
    assert info.opset == 9
    # SqueezeNet 1.0 has about 1.2 million weights and 0.7-0.9 GFLOPs at 224x224.
    assert 1_200_000 < info.nb_parameters < 1_300_000
    assert 6e8 < info.flops < 1e9
    assert info.input_bytes == 3 * 224 * 224 * 4


def test_flops_and_parameters_of_a_known_network(tmp_path: Path) -> None:
    info = inspect_model(conv_model(tmp_path / "m.onnx", channels=4, size=8), "m.onnx")
    conv = 2 * (4 * 8 * 8) * 3 * 3 * 3  # 2 x outputs x (Cin x kh x kw)
    relu = 4 * 8 * 8
    gemm = 2 * 10 * 256
    assert info.flops == conv + relu + gemm
    assert info.nb_parameters == 4 * 3 * 3 * 3 + 4 + 256 * 10


def test_tflite_model_is_described(face_tflite: Path) -> None:
    info = inspect_model(face_tflite, face_tflite.name)
    assert info.format == "tflite"
    assert info.inputs[0].shape == (1, 128, 128, 3)
    assert len(info.outputs) == 2
    assert info.nb_parameters > 50_000
    assert info.flops > 1e7


@pytest.mark.parametrize(("name", "content", "message"), [
    ("notes.txt", b"hello", "unsupported model file"),
    ("model.onnx", b"this is not a protobuf at all \xff\xfe", "not a valid ONNX model"),
    ("model.tflite", b"\x00" * 64, "not a TFLite model"),
    ("empty.onnx", b"", "empty"),
])
def test_non_models_are_rejected(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelRejected, match=message):
        inspect_model(path, name)


def test_truncated_onnx_is_rejected(tmp_path: Path, squeezenet: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(squeezenet.read_bytes()[:5000])
    with pytest.raises(ModelRejected, match="not a valid ONNX model"):
        inspect_model(path, path.name)


def test_corrupt_tflite_is_rejected(tmp_path: Path, face_tflite: Path) -> None:
    data = bytearray(face_tflite.read_bytes())
    path = tmp_path / "cut.tflite"
    path.write_bytes(bytes(data[:2000]))
    with pytest.raises(ModelRejected, match="cannot be loaded"):
        inspect_model(path, path.name)


def test_external_data_is_rejected(tmp_path: Path) -> None:
    path = external_data_model(tmp_path)
    with pytest.raises(ModelRejected, match="external data"):
        inspect_model(path, path.name)
