from __future__ import annotations

import pytest

from vlab_backend.engines import create_adapter, engine_specs, get_spec


def test_builtin_engines_are_registered() -> None:
    specs = engine_specs()
    assert {"onnxruntime", "openvino", "tflite"} <= set(specs)
    assert specs["onnxruntime"].formats == ("onnx",)
    assert "tflite" in specs["openvino"].formats


def test_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known engines: onnxruntime, openvino, synthetic, tflite"):
        get_spec("tensorrt")
    with pytest.raises(KeyError):
        create_adapter("tensorrt")


def test_parameters_are_validated_against_declared_types() -> None:
    spec = get_spec("onnxruntime")
    assert spec.validate_parameters({"threads": "2", "graph_optimization_level": "basic"}) == {
        "threads": 2, "graph_optimization_level": "basic"}
    with pytest.raises(ValueError, match="must be an integer"):
        spec.validate_parameters({"threads": "many"})
    with pytest.raises(ValueError, match="must be one of"):
        spec.validate_parameters({"graph_optimization_level": "max"})
    with pytest.raises(ValueError, match="has no parameter"):
        spec.validate_parameters({"use_xnnpack": True})
    with pytest.raises(ValueError, match="at least 0"):
        spec.validate_parameters({"threads": -1})
    assert get_spec("tflite").validate_parameters({"use_xnnpack": "false"}) == {
        "use_xnnpack": False}


def test_a_builtin_engine_is_found_without_scanning_entry_points(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness looks up one engine per run; scanning every installed distribution for
    # entry points would cost it tens of milliseconds.
    import importlib.metadata

    from vlab_backend import engines

    def no_scan(**_kwargs: object) -> object:
        raise AssertionError("entry points scanned")

    monkeypatch.setattr(importlib.metadata, "entry_points", no_scan)
    engines._modules.cache_clear()
    try:
        assert get_spec("onnxruntime").name == "onnxruntime"
        assert create_adapter("synthetic").__class__.__module__.endswith("synthetic_engine")
    finally:
        engines._modules.cache_clear()


def test_an_entry_point_cannot_take_over_a_builtin_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import sys
    import types

    from vlab_backend import engines

    impostor = types.ModuleType("impostor_engine")
    impostor.SPEC = type("Spec", (), {"name": "onnxruntime"})()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "impostor_engine", impostor)
    entry = importlib.metadata.EntryPoint("impostor", "impostor_engine", "vlab.engines")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_kwargs: [entry])
    engines._modules.cache_clear()
    try:
        assert engine_specs()["onnxruntime"] is get_spec("onnxruntime")
        assert get_spec("onnxruntime").display_name == "ONNX Runtime (CPU)"
    finally:
        engines._modules.cache_clear()
