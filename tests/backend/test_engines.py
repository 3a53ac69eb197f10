from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from tests.models import conv_model, engine_package
from vlab_backend import __version__, engines
from vlab_backend.engines import (
    create_adapter,
    engine_modules,
    engine_specs,
    engine_version,
    get_spec,
)
from vlab_backend.engines.base import (
    MAX_JSON_DEPTH,
    MAX_STRING_CHARS,
    EngineSpec,
    ParameterSpec,
    check_json_value,
    parse_user_json,
)


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
    engines.clear_cache()
    try:
        assert get_spec("onnxruntime").name == "onnxruntime"
        assert create_adapter("synthetic").__class__.__module__.endswith("synthetic_engine")
    finally:
        engines.clear_cache()


def test_an_entry_point_cannot_take_over_a_builtin_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata
    import types

    impostor = types.ModuleType("impostor_engine")
    impostor.SPEC = EngineSpec("onnxruntime", "Impostor", ("onnx",))  # type: ignore[attr-defined]
    impostor.Adapter = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "impostor_engine", impostor)
    entry = importlib.metadata.EntryPoint("impostor", "impostor_engine", "vlab.engines")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_kwargs: [entry])
    engines.clear_cache()
    try:
        assert engine_specs()["onnxruntime"] is get_spec("onnxruntime")
        assert get_spec("onnxruntime").display_name == "ONNX Runtime (CPU)"
    finally:
        engines.clear_cache()


def test_builtin_engines_declare_their_runtime() -> None:
    specs = engine_specs()
    assert specs["onnxruntime"].runtime_modules == ("onnxruntime",)
    assert specs["tflite"].distribution == "ai-edge-litert"
    assert all(spec.missing_runtime() is None for spec in specs.values())
    # The micro runtime runs on (simulated) boards only, not on the host's cores.
    assert [name for name, spec in specs.items() if not spec.host_cpu] == ["tflite-micro"]
    # The calibration engine needs nothing but numpy.
    assert specs["synthetic"].runtime_modules == ()
    assert engine_version("onnxruntime") == version("onnxruntime")
    assert engine_version("tflite") == version("ai-edge-litert")
    assert engine_version("synthetic") == __version__
    assert engine_modules()["synthetic"] == "vlab_backend.engines.synthetic_engine"


def test_a_missing_runtime_is_found_without_importing_anything() -> None:
    spec = EngineSpec("npu", "NPU", ("onnx",), runtime_modules=("numpy", "vlab_no_npu.driver"))
    assert spec.missing_runtime() == "its runtime module 'vlab_no_npu' is not installed"
    assert "vlab_no_npu" not in sys.modules
    assert EngineSpec("cpu", "CPU", ("onnx",), runtime_modules=("numpy.linalg",)
                      ).missing_runtime() is None


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test engine package (`onnxref`) installed in this process."""
    site = engine_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    engines.clear_cache()
    yield site
    sys.modules.pop("vlab_onnxref", None)
    engines.clear_cache()


def test_an_installed_package_registers_its_engine(installed_plugin: Path,
                                                   tmp_path: Path) -> None:
    specs = engine_specs()
    assert list(specs)[:4] == ["onnxruntime", "openvino", "tflite", "synthetic"]
    spec = specs["onnxref"]
    assert get_spec("onnxref") is spec and spec.formats == ("onnx",)
    assert engine_version("onnxref") == "0.1.0"  # its distribution's
    assert engine_modules()["onnxref"] == "vlab_onnxref"
    assert spec.validate_parameters({"repeats": "3"}) == {"repeats": 3}
    adapter = create_adapter("onnxref")
    adapter.load(conv_model(tmp_path / "m.onnx"), {"repeats": 1}, threads=1)
    [x] = adapter.inputs()
    adapter.set_inputs([np.ones(x.shape, x.dtype)])
    adapter.infer()
    assert adapter.results()[0].shape == (1, 10)


def test_a_broken_package_does_not_hide_the_other_engines(
        installed_plugin: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine_package(installed_plugin, engine="broken")
    (installed_plugin / "vlab_broken.py").write_text("raise ImportError('no driver')\n")
    try:
        assert {"onnxruntime", "synthetic", "onnxref"} <= set(engine_specs())
        assert "broken" not in engine_specs()
        assert "vlab_broken not loaded: ImportError: no driver" in caplog.text
        with pytest.raises(KeyError, match="its entry point failed to load: ImportError: no "
                                           "driver"):
            get_spec("broken")
    finally:
        sys.modules.pop("vlab_broken", None)


def run_harness(model: Path, out: Path, engine: str,
                pythonpath: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "vlab_backend.harness", "--engine", engine,
                           "--model", str(model), "--runs", "3", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_harness_finds_an_engine_through_its_entry_point(tmp_path: Path) -> None:
    # The harness imports a built-in engine's module directly; any other name falls back to
    # the entry-point scan.
    site = engine_package(tmp_path / "site")
    model = conv_model(tmp_path / "m.onnx")
    done = run_harness(model, tmp_path / "out", "onnxref", str(site))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["inference_engine"] == "onnxref" and report["nb_inference"] == 3
    assert report["engine_version"].startswith("onnx-reference ")
    absent = run_harness(model, tmp_path / "out2", "onnxref", None)
    assert absent.returncode == 2
    assert absent.stderr.startswith("error: unknown engine 'onnxref'; known engines: ")


def test_the_formats_of_an_engine_that_runs_here(installed_plugin: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from vlab_backend.engines.__main__ import main

    engine_package(installed_plugin, engine="npu", runtime_modules=("vlab_no_npu_driver",))
    try:
        assert main(["openvino"]) == 0 and capsys.readouterr().out == "onnx tflite zip\n"
        assert main(["onnxref"]) == 0 and capsys.readouterr().out == "onnx\n"
        assert main(["npu"]) == 1
        assert capsys.readouterr().out == ("engine 'npu' does not run here: its runtime module "
                                           "'vlab_no_npu_driver' is not installed\n")
        assert main(["tensorrt"]) == 1
        assert capsys.readouterr().out.startswith("unknown engine 'tensorrt'; known engines: ")
    finally:
        sys.modules.pop("vlab_npu", None)


@pytest.mark.parametrize(("params", "message"), [
    ({"min_time_s": float("inf")}, "'min_time_s' must be a finite number"),
    ({"min_time_s": "NaN"}, "'min_time_s' must be a finite number"),
    ({"warmup_min_s": "1e999"}, "'warmup_min_s' must be a finite number"),
    ({"min_time_s": 601}, "'min_time_s' must be at most 600"),
    ({"warmup_min_s": 61}, "'warmup_min_s' must be at most 60"),
    ({"threads": 1025}, "'threads' must be at most 1024"),
    ({"warmup_runs": 10**6}, "'warmup_runs' must be at most 100000"),
    ({"profile_runs": 0}, "'profile_runs' must be at least 1"),
    ({"seed": 2**63}, "'seed' must be at most 9223372036854775807"),
    ({"seed": "9" * 5000}, "'seed' must be an integer"),
])
def test_numbers_are_finite_and_within_their_bounds(params: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        get_spec("onnxruntime").validate_parameters(params)


def test_parameters_without_declared_bounds_still_have_limits() -> None:
    """A parameter an administrator attached declares only its type."""
    count = ParameterSpec("batches", "integer", 1)
    assert count.validate(2**63 - 1) == 2**63 - 1
    with pytest.raises(ValueError, match="at most 9223372036854775807"):
        count.validate(2**63)
    with pytest.raises(ValueError, match="finite"):
        ParameterSpec("gain", "number", 1.0).validate("-inf")
    with pytest.raises(ValueError, match=f"at most {MAX_STRING_CHARS} characters"):
        ParameterSpec("label", "string", "").validate("x" * (MAX_STRING_CHARS + 1))


def test_json_parameters_are_finite_and_shallow() -> None:
    shape = ParameterSpec("shape", "object", {})
    assert shape.validate('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    deep = "[" * 2000 + "]" * 2000  # json.loads raised RecursionError on this
    for text, message in ((deep, "depth limit exceeded"), ('{"a": NaN}', "NaN and Infinity"),
                          ('{"a": 1e999}', "infinity")):
        with pytest.raises(ValueError, match=message):
            shape.validate(text)
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        nested = [nested]
    with pytest.raises(ValueError, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        ParameterSpec("layers", "array", []).validate(nested)
    with pytest.raises(ValueError, match="numbers must be finite"):
        shape.validate({"a": [float("nan")]})


def test_parse_user_json_never_raises_recursion_error() -> None:
    for text in ("[" * 100_000, "{\"a\":" * 100_000, b"\xff\xfe", "NaN", "-Infinity"):
        with pytest.raises(ValueError):
            parse_user_json(text)
    check_json_value({"a": [[1.0]] * 3})
