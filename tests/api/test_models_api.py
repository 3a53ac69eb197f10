"""The model library: upload, list, convert, benchmark the converted models, delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.test_benchmarks_api import submit
from tests.server import LiveServer, wait_terminal


def upload(client: object, path: Path) -> dict[str, object]:
    with path.open("rb") as handle:
        response = client.post("/api/models/download",  # type: ignore[attr-defined]
                               params={"platform": "user_models", "resource_identifier": ""},
                               files={"model": (path.name, handle)})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_upload_describes_the_model(server: LiveServer, squeezenet: Path) -> None:
    with server.client() as client:
        model = upload(client, squeezenet)
        assert model["format"] == "onnx" and model["opset"] == 9
        assert model["inputs"] == [{"name": "data_0", "shape": [1, 3, 224, 224],
                                    "dtype": "float32"}]
        again = upload(client, squeezenet)
        assert again["model"] == model["model"]  # stored once
        listed = client.get("/api/models/list", params={"platform": "user_models"}).json()
        assert model["model"] in [m["model"] for m in listed["models"]]
        assert client.get("/api/models/list", params={"platform": "mars"}).status_code == 400


@pytest.mark.parametrize(("model", "target", "engine", "filename"), [
    ("small_onnx", "onnx_fp16", "onnxruntime", "small_conv_fp16.onnx"),
    ("squeezenet", "onnx_opset13", "onnxruntime", "light_squeezenet_opset13.onnx"),
    # Its weights come from ConstantOfShape nodes: folded before the float16 conversion.
    ("squeezenet", "onnx_fp16", "onnxruntime", "light_squeezenet_fp16.onnx"),
    ("squeezenet", "openvino", "openvino", "light_squeezenet_openvino.zip"),
])
def test_converted_models_run(server: LiveServer, request: pytest.FixtureRequest, model: str,
                              target: str, engine: str, filename: str) -> None:
    with server.client() as client:
        source = upload(client, request.getfixturevalue(model))
        response = client.post("/api/models/convert", params={
            "platform": "user_models", "resource_identifier": source["model"],
            "format": "onnx", "convert_to": target})
        assert response.status_code == 201, response.text
        converted = response.json()
        assert converted["filename"] == filename
        assert converted["inputs"][0]["dtype"] == "float32"  # fp16 keeps float32 I/O
        bench = submit(client, None, model_ref=converted["model"], engine=engine,
                       nb_inference="3").json()
        final = wait_terminal(client, bench["id"])
        assert final["status"] == "success", final
        assert final["model"] == filename


def test_openvino_ir_needs_the_openvino_engine(server: LiveServer, squeezenet: Path) -> None:
    with server.client() as client:
        source = upload(client, squeezenet)
        ir = client.post("/api/models/convert", params={
            "resource_identifier": source["model"], "convert_to": "openvino"}).json()
        refused = submit(client, None, model_ref=ir["model"], engine="onnxruntime")
        assert refused.status_code == 400
        assert "engine onnxruntime cannot run zip models" in refused.json()["error"]


def test_bad_conversions(server: LiveServer, squeezenet: Path, face_tflite: Path) -> None:
    with server.client() as client:
        onnx_ref = upload(client, squeezenet)["model"]
        tflite_ref = upload(client, face_tflite)["model"]
        for params, status, message in [
            ({"resource_identifier": onnx_ref, "convert_to": "tensorrt"}, 400,
             "unknown conversion"),
            ({"resource_identifier": tflite_ref, "convert_to": "onnx_fp16"}, 400,
             "applies to ONNX models"),
            ({"resource_identifier": onnx_ref, "convert_to": "onnx_fp16", "format": "tflite"},
             400, "is a onnx model"),
            ({"resource_identifier": "model-424242", "convert_to": "onnx_fp16"}, 404,
             "unknown model"),
            # Calibration needs the user's representative data.
            ({"resource_identifier": onnx_ref, "convert_to": "tflite_int8"}, 400,
             "needs a representative dataset"),
        ]:
            response = client.post("/api/models/convert", params=params)
            assert response.status_code == status, response.text
            assert message in response.json()["error"]
            assert ".cc:" not in response.json()["error"]  # no C++ source locations


def test_delete_a_model(server: LiveServer, small_onnx: Path, tmp_path: Path) -> None:
    copy = tmp_path / "to_delete.onnx"
    copy.write_bytes(small_onnx.read_bytes() + b"")
    with server.client() as client:
        model = upload(client, copy)
        assert client.delete(f"/api/models/{model['model']}").json()["deleted"] is True
        assert client.delete(f"/api/models/{model['model']}").status_code == 404
        used = upload(client, small_onnx)
        bench = submit(client, None, model_ref=used["model"], nb_inference="1").json()
        wait_terminal(client, bench["id"])
        assert client.delete(f"/api/models/{used['model']}").status_code == 409
