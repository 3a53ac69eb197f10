from __future__ import annotations

import zipfile
from pathlib import Path

import onnx
import pytest

from tests.models import conv_model, external_data_model, ir_bomb, openvino_ir_members, zip_of
from vlab_backend.errors import short_message
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


@pytest.fixture(scope="module")
def ir_members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return openvino_ir_members(conv_model(tmp_path_factory.mktemp("ir") / "m.onnx"))


def test_openvino_ir_archive_is_described(tmp_path: Path, ir_members: dict[str, bytes]) -> None:
    info = inspect_model(zip_of(tmp_path / "ir.zip", ir_members), "ir.zip")
    assert info.format == "zip" and info.inputs[0].shape == (1, 3, 8, 8)
    assert info.nb_parameters == 4 * 3 * 3 * 3 + 4 + 256 * 10


def test_an_ir_zip_bomb_is_refused_before_it_inflates(tmp_path: Path,
                                                     ir_members: dict[str, bytes]) -> None:
    bomb = ir_bomb(tmp_path / "bomb.zip", ir_members["model.xml"], 256 << 20)
    with pytest.raises(ModelRejected, match="more than 100 times its size"):
        inspect_model(bomb, "bomb.zip", max_model_bytes=512 << 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]  # no extraction left


def test_an_ir_that_inflates_past_the_model_size_limit_is_refused(
        tmp_path: Path, ir_members: dict[str, bytes]) -> None:
    archive = zip_of(tmp_path / "ir.zip", ir_members, zipfile.ZIP_STORED)
    with pytest.raises(ModelRejected, match="more than 10000 bytes, the model size limit"):
        inspect_model(archive, "ir.zip", max_model_bytes=10_000)


def test_openvino_errors_give_their_reason_without_paths(tmp_path: Path,
                                                        ir_members: dict[str, bytes]) -> None:
    xml = ir_members["model.xml"].replace(b'type="Convolution"', b'type="Convolutionx"')
    archive = zip_of(tmp_path / "ir.zip", {**ir_members, "model.xml": xml})
    with pytest.raises(ModelRejected) as refused:
        inspect_model(archive, "ir.zip")
    message = str(refused.value)
    assert "doesn't contain the operation with type: Convolutionx" in message
    assert "Exception from" not in message and str(tmp_path) not in message


def test_an_unknown_onnx_element_type_is_refused(tmp_path: Path) -> None:
    model = onnx.load(conv_model(tmp_path / "m.onnx"))
    model.graph.input[0].type.tensor_type.elem_type = 99
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelRejected, match="'x' is a tensor of element type 99"):
        inspect_model(path, path.name)


def test_tflite_names_that_are_not_utf8_are_refused(tmp_path: Path, face_tflite: Path) -> None:
    path = tmp_path / "names.tflite"
    path.write_bytes(face_tflite.read_bytes().replace(b"conv2d/Kernel", b"conv2d/Kern\xff\xfe"))
    with pytest.raises(ModelRejected, match="not UTF-8"):
        inspect_model(path, path.name)


def test_an_unexpected_parser_failure_is_a_rejection(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path, filename: str) -> None:
        raise IndexError("list index out of range")

    monkeypatch.setattr("vlab_backend.intake.onnx_model.inspect_onnx", broken)
    path = conv_model(tmp_path / "m.onnx")
    with pytest.raises(ModelRejected, match="the onnx model cannot be read: list index"):
        inspect_model(path, path.name)


@pytest.mark.parametrize(("text", "expected"), [
    ("Exception from src/inference/src/cpp/core.cpp:84:\nException from src/core/x.cpp:12:\n"
     "Opset opset1 doesn't contain the operation with type: Foo\n\n",
     "Opset opset1 doesn't contain the operation with type: Foo"),
    ("Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'is_valid(a, b)' failed at "
     "src/core/xml.cpp:900:\nIncorrect weights in bin file!\n", "Incorrect weights in bin file!"),
    ("Exception from src/inference/src/cpp/core.cpp:84:\n", "RuntimeError"),
    ("line one\nthe reason", "the reason"),
    ("[ONNXRuntimeError] : 1 : FAIL : /src/graph.cc:1483 Graph::Graph : the cause", "the cause"),
])
def test_short_message_curates_engine_errors(text: str, expected: str) -> None:
    assert short_message(RuntimeError(text)) == expected
