from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import vlab_backend.pipeline
from tests.models import engine_package
from vlab_backend import engines, targets
from vlab_backend.engines.base import EngineSpec
from vlab_backend.targets import (
    MAX_CPU,
    MAX_MEMORY_BYTES,
    TargetConfigError,
    builtin_targets_dir,
    load_target_config,
    local_cpu_targets,
    parse_target_config,
)


def test_local_cpu_has_one_pinned_instance_per_core() -> None:
    instances = local_cpu_targets()
    cores = sorted(os.sched_getaffinity(0))
    assert [i.uid for i in instances] == [f"host-cpu-{c}" for c in cores]
    assert [i.cpuset for i in instances] == [[c] for c in cores]
    assert Path(instances[0].engines["onnxruntime"].repository, "AI_Manager",
                "manager.sh").is_file()


def test_host_cpu_offers_every_registered_engine_with_its_formats() -> None:
    offers = local_cpu_targets()[0].engines
    # All the built-in engines' runtimes are installed here; synthetic calibrates.
    assert list(offers) == ["onnxruntime", "openvino", "tflite", "synthetic"]
    assert offers["onnxruntime"].version == version("onnxruntime")
    assert offers["tflite"].version == version("ai-edge-litert")
    assert offers["openvino"].env["VLAB_ENGINE_FORMATS"] == "onnx tflite zip"
    assert offers["synthetic"].env["VLAB_ENGINE_FORMATS"] == "onnx tflite"
    assert offers["synthetic"].supported_types == ["TYPE1", "TYPE2"]


def test_host_cpu_leaves_out_engines_it_cannot_run(monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    specs = {
        "cpu": EngineSpec("cpu", "CPU", ("onnx", "ONNXB"), runtime_modules=("numpy",)),
        "npu": EngineSpec("npu", "NPU", ("onnx",), runtime_modules=("vlab_no_npu_driver",)),
        "tflm": EngineSpec("tflm", "TFLite Micro", ("tflite",), host_cpu=False),
    }
    monkeypatch.setattr(targets, "engine_specs", lambda: specs)
    monkeypatch.setattr(targets, "engine_version", lambda name: "7")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    offers = local_cpu_targets()[0].engines
    assert list(offers) == ["cpu"]
    assert offers["cpu"].version == "7"
    assert offers["cpu"].env == {"VLAB_ENGINE_FORMATS": "onnx onnxb"}
    assert "engine npu is not offered on host-cpu: its runtime module 'vlab_no_npu_driver' " \
        "is not installed" in caplog.text


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test engine package (`onnxref`) installed in this process, on PYTHONPATH."""
    site = engine_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    engines.clear_cache()
    yield site
    engines.clear_cache()


def test_host_cpu_offers_an_installed_engine_package(installed_plugin: Path) -> None:
    instances = local_cpu_targets()
    offer = instances[-1].engines["onnxref"]
    assert offer.version == "0.1.0"
    # The job runs this server's interpreter and inherits its PYTHONPATH (pipeline.job), so it
    # finds the engine where this process did; the offer itself carries the formats only.
    assert offer.env == {"VLAB_ENGINE_FORMATS": "onnx"}
    assert offer.repository == str(builtin_targets_dir() / "host-cpu")
    assert instances[0].engines["onnxref"] is not offer  # each instance its own


def test_a_dAIEdge_target_file_is_read(tmp_path: Path) -> None:
    config = {"rpi5": [{"target_uid": "rpi5-0001-0001", "memory": {"ram": 8 << 30},
                        "repository": "repo",
                        "engines": {"tflite": {"version": "2.16", "image": "reg/rpi5:1",
                                               "supported_types": ["TYPE1", "TYPE2"],
                                               "env": {"BOARD": "a"}}}}]}
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(config))
    [instance] = load_target_config(path)
    assert instance.target_type == "rpi5" and instance.uid == "rpi5-0001-0001"
    offer = instance.engines["tflite"]
    assert offer.repository == str((tmp_path / "repo").resolve())
    # A registered engine also gets its formats, for a repository like targets/host-cpu.
    assert offer.image == "reg/rpi5:1"
    assert offer.env == {"VLAB_ENGINE_FORMATS": "tflite", "BOARD": "a"}


def test_a_target_file_may_set_the_engine_formats() -> None:
    [instance] = parse_target_config({"board": [{
        "target_uid": "b-1", "repository": "/r",
        "engines": {"tflite": {"env": {"VLAB_ENGINE_FORMATS": "tflite bin"}}, "tensorrt": {}}}]})
    assert instance.engines["tflite"].env == {"VLAB_ENGINE_FORMATS": "tflite bin"}
    assert instance.engines["tensorrt"].env == {}  # not registered: the file would say


@pytest.mark.parametrize(("config", "message"), [
    ([], "non-empty JSON object"),
    ({"rpi5": []}, "non-empty list"),
    ({"rpi5": [{"engines": {"tflite": {"repository": "r"}}}]}, "missing 'target_uid'"),
    ({"rpi5": [{"target_uid": "a"}]}, "missing 'engines'"),
    ({"rpi5": [{"target_uid": "a", "engines": {"tflite": {}}}]}, "needs a 'repository'"),
    ({"rpi5": [{"target_uid": "a", "engines": {"tflite": {"repository": "r",
                                                           "supported_types": ["TYPE9"]}}}]},
     "supported_types"),
    ({"rpi5": [{"target_uid": "a", "engines": {"tflite": {"repository": "r"}}},
               {"target_uid": "a", "engines": {"tflite": {"repository": "r"}}}]},
     "duplicate target_uid"),
    ({"rpi5": [{"target_uid": "a", "cpuset": ["x"],
                "engines": {"tflite": {"repository": "r"}}}]}, "cpuset"),
    ({"rpi5": [{"target_uid": "a", "cpuset": [True],
                "engines": {"tflite": {"repository": "r"}}}]}, "cpuset"),
    ({"rpi5": [{"target_uid": "a", "cpuset": [MAX_CPU + 1],
                "engines": {"tflite": {"repository": "r"}}}]}, f"from 0 to {MAX_CPU}"),
    ({"rpi5": [{"target_uid": "a", "memory": {"ram": -1},
                "engines": {"tflite": {"repository": "r"}}}]}, "memory 'ram' must be"),
    ({"rpi5": [{"target_uid": "a", "memory": {"ram": 2.5e9},
                "engines": {"tflite": {"repository": "r"}}}]}, "memory 'ram' must be"),
    ({"rpi5": [{"target_uid": "a", "memory": {"storage": MAX_MEMORY_BYTES + 1},
                "engines": {"tflite": {"repository": "r"}}}]}, "memory 'storage' must be"),
])
def test_invalid_target_files_get_clear_errors(config: Any, message: str) -> None:
    with pytest.raises(TargetConfigError, match=message):
        parse_target_config(config)


def test_unreadable_target_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(TargetConfigError, match="not valid JSON"):
        load_target_config(bad)
    with pytest.raises(TargetConfigError, match="cannot read"):
        load_target_config(tmp_path / "missing.json")


@pytest.mark.parametrize("text", [
    '{"rpi5": [{"target_uid": "a", "memory": {"ram": Infinity}, "engines": {}}]}',
    '{"rpi5": [{"target_uid": "a", "memory": {"ram": NaN}, "engines": {}}]}',
    '{"rpi5": [{"target_uid": "a", "memory": {"ram": 1e999}, "engines": {}}]}',
    '{"rpi5": ' + "[" * 5000 + "]" * 5000 + "}",  # json.loads: RecursionError
])
def test_a_target_file_with_non_finite_or_deep_values_is_refused(tmp_path: Path,
                                                                  text: str) -> None:
    path = tmp_path / "targets.json"
    path.write_text(text)
    with pytest.raises(TargetConfigError, match="not valid JSON"):
        load_target_config(path)


SUPPORT = builtin_targets_dir() / "host-cpu" / "AI_Support" / "support.sh"


def run_support(work: Path, model: str, **env: str) -> tuple[int, str]:
    """host-cpu's support step on the dAIEdge variables (plus `env`): exit code, error.log."""
    work.mkdir(exist_ok=True)
    (work / model).write_bytes(b"model")
    out = work / "AI_Manager" / "out"
    variables = {"PATH": os.environ["PATH"], "TARGET": "host-cpu", "TARGET_UID": "host-cpu-0",
                 "RUNTIME": "onnxref", "BENCHMARK_TYPE": "TYPE1", "NB_INFERENCE": "5",
                 "MODEL_FILENAME": model, "VERSION_TAG": "t", "VLAB_OUT_DIR": str(out),
                 "FUNCTIONS_PATH": str(Path(vlab_backend.pipeline.__file__).parent), **env}
    done = subprocess.run(["bash", str(SUPPORT)], cwd=work, env=variables, timeout=30,
                          capture_output=True, text=True)
    return done.returncode, (out / "error.log").read_text()


def test_the_support_step_takes_the_formats_from_the_job(tmp_path: Path) -> None:
    # On every job's path: with the formats given, it starts no interpreter.
    tripwire = tmp_path / "python"
    tripwire.write_text(f"#!/bin/sh\ntouch {tmp_path / 'python-started'}\nexit 1\n")
    tripwire.chmod(0o755)
    given = {"VLAB_PYTHON": str(tripwire)}
    assert run_support(tmp_path / "a", "m_1.onnx", VLAB_ENGINE_FORMATS="onnx tflite",
                       **given) == (0, "")
    assert run_support(tmp_path / "b", "M_1.ONNX", VLAB_ENGINE_FORMATS="tflite,onnx",
                       **given) == (0, "")
    assert run_support(tmp_path / "c", "m_1.zip", VLAB_ENGINE_FORMATS="onnx tflite",
                       **given) == (1, "engine onnxref cannot run .zip models (it runs: onnx "
                                       "tflite)\n")
    assert not (tmp_path / "python-started").exists()


def test_the_support_step_asks_the_registry_when_the_job_has_no_formats(
        tmp_path: Path) -> None:
    # A remote job, whose pipeline gets the engine's environment only as its own.
    python = {"VLAB_PYTHON": sys.executable}
    assert run_support(tmp_path / "a", "m_1.tflite", RUNTIME="openvino", **python) == (0, "")
    assert run_support(tmp_path / "b", "m_1.tflite", RUNTIME="onnxruntime", **python) == (
        1, "engine onnxruntime cannot run .tflite models (it runs: onnx)\n")
    code, log = run_support(tmp_path / "c", "m_1.onnx", RUNTIME="tensorrt", **python)
    assert code == 1 and log.startswith("engine tensorrt is not offered by target host-cpu: "
                                        "unknown engine 'tensorrt'; known engines: ")
    assert log.count("\n") == 1


def test_the_support_step_refuses_an_engine_it_cannot_look_up(tmp_path: Path) -> None:
    # The repository on the dAIEdge variables alone: the engine is not one this lab offers.
    code, log = run_support(tmp_path / "a", "m_1.onnx")
    assert (code, log) == (1, "engine onnxref is not offered by target host-cpu (no "
                              "VLAB_ENGINE_FORMATS: the lab gives each offered engine's model "
                              "formats)\n")
    assert run_support(tmp_path / "b", "m_1.onnx", VLAB_ENGINE_FORMATS=" ")[0] == 1
    code, log = run_support(tmp_path / "c", "m_1.onnx", VLAB_PYTHON="/bin/false")
    assert (code, log) == (1, "engine onnxref is not offered by target host-cpu: /bin/false "
                              "has no VLab engine registry\n")
