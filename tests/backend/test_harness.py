"""The measurement harness, run as the target scripts run it: a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.models import two_input_model
from vlab_backend.harness.report import DAIEDGE_KEYS


def run_harness(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlab_backend.harness", "--out",
                           str(tmp_path / "out"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=300)


def report_of(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "out" / "report.json").read_text())
    return data


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_type1_report_has_every_key(tmp_path: Path, squeezenet: Path, engine: str) -> None:
    done = run_harness(tmp_path, "--engine", engine, "--model", str(squeezenet), "--runs", "7")
    assert done.returncode == 0, done.stderr
    # The summary line survives the harness's exit without finalisation (a pipe buffers it).
    assert done.stdout.startswith("7 inferences, mean ")
    report = report_of(tmp_path)
    assert set(DAIEDGE_KEYS) <= set(report)
    assert report["nb_infernece"] == report["nb_inference"] == 7
    latency = report["inference_latency"]
    assert len(latency["samples"]) == 7
    assert latency["min"] <= latency["median"] <= latency["p90"] <= latency["max"]
    assert latency["mean"] == pytest.approx(np.mean(latency["samples"]))
    assert report["inference_engine"] == engine and report["engine_version"]
    assert report["peak_memory_bytes"] > report["memory_delta_bytes"] > 0
    assert report["model_size"] == squeezenet.stat().st_size
    assert report["warmup_runs"] >= 5 and report["first_inference_s"] > 0
    assert report["cpuset"] and report["threads"] == len(report["cpuset"])
    assert report["host"]["cpu_model"]


def test_tflite_model_runs_on_litert(tmp_path: Path, face_tflite: Path) -> None:
    done = run_harness(tmp_path, "--engine", "tflite", "--model", str(face_tflite), "--runs", "5",
                       PARAMETERS_FILENAME=str(_params(tmp_path, {"threads": 1})))
    assert done.returncode == 0, done.stderr
    report = report_of(tmp_path)
    assert report["threads"] == 1 and report["parameters"]["use_xnnpack"] is True
    assert report["engine_version"].startswith("ai-edge-litert")


def _params(tmp_path: Path, params: dict[str, Any]) -> Path:
    path = tmp_path / "parameters.json"
    path.write_text(json.dumps(params))
    return path


def test_type2_outputs_match_the_engine(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 1, 4)).astype(np.float32)
    b = rng.standard_normal((5, 1, 4)).astype(np.float32)
    dataset = tmp_path / "data.bin"
    # Each sample is every input in model order: a then b.
    dataset.write_bytes(b"".join(a[i].tobytes() + b[i].tobytes() for i in range(5)))
    done = run_harness(tmp_path, "--engine", "onnxruntime", "--model", str(model), "--type",
                       "TYPE2", "--dataset", str(dataset))
    assert done.returncode == 0, done.stderr
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"a": a[i], "b": b[i]})[0] for i in range(5)])
    produced = np.fromfile(tmp_path / "out" / "raw_output.bin", dtype=np.float32)
    np.testing.assert_allclose(produced, expected.ravel(), rtol=1e-6)
    assert report_of(tmp_path)["nb_inference"] == 5


def test_dataset_of_the_wrong_size_is_a_clear_error(tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    dataset = tmp_path / "data.bin"
    dataset.write_bytes(b"\0" * 33)
    done = run_harness(tmp_path, "--engine", "onnxruntime", "--model", str(model), "--type",
                       "TYPE2", "--dataset", str(dataset))
    assert done.returncode == 2
    assert "33 bytes, not a multiple of the model's input size (32 bytes" in done.stderr
    assert "Traceback" not in done.stderr


def test_engine_format_mismatch_is_a_clear_error(tmp_path: Path, face_tflite: Path) -> None:
    done = run_harness(tmp_path, "--engine", "onnxruntime", "--model", str(face_tflite))
    assert done.returncode == 2
    assert "cannot run .tflite models" in done.stderr


def test_progress_file_ends_done(tmp_path: Path, small_onnx: Path) -> None:
    progress = tmp_path / "progress"
    done = run_harness(tmp_path, "--engine", "onnxruntime", "--model", str(small_onnx),
                       "--runs", "50", "--progress", str(progress))
    assert done.returncode == 0, done.stderr
    assert progress.read_text().split() == ["done", "50", "50"]


def test_min_time_extends_the_timed_phase(tmp_path: Path, small_onnx: Path) -> None:
    done = run_harness(tmp_path, "--engine", "onnxruntime", "--model", str(small_onnx), "--runs",
                       "3", PARAMETERS_FILENAME=str(_params(tmp_path, {"min_time_s": 0.3})))
    assert done.returncode == 0, done.stderr
    samples = report_of(tmp_path)["inference_latency"]["samples"]
    assert len(samples) > 3


def test_a_synthetic_engine_comes_back_with_its_known_statistics(tmp_path: Path,
                                                                 small_onnx: Path) -> None:
    """Busy-waits of 2 ms ± 0.2 ms (normal, seed 7): the report must give back each planned
    wait, never less, and its statistics must be those of what it measured."""
    runs = 400
    params = _params(tmp_path, {"mean_ms": 2.0, "std_ms": 0.2, "threads": 1, "seed": 7,
                                "warmup_min_s": 0})
    done = run_harness(tmp_path, "--engine", "synthetic", "--model", str(small_onnx), "--runs",
                       str(runs), PARAMETERS_FILENAME=str(params))
    assert done.returncode == 0, done.stderr
    report = report_of(tmp_path)
    latency = report["inference_latency"]
    samples = np.asarray(latency["samples"])
    # The engine's draws: one per inference, warm-up first (see synthetic_engine).
    rng = np.random.default_rng(7)
    draws = np.maximum(0.0, rng.normal(2e-3, 2e-4, report["warmup_runs"] + runs))
    planned = draws[report["warmup_runs"]:]
    assert len(samples) == runs
    # The clock is read around the wait alone: a sample is never shorter than its wait, and
    # runs the machine did not preempt add almost nothing (preemption only adds, so the
    # lower tail of the excess is what the harness itself costs).
    excess = samples - planned
    assert excess.min() >= 0
    assert np.percentile(excess, 10) < 1e-4
    assert planned.mean() == pytest.approx(2e-3, rel=0.05)
    assert latency["median"] == pytest.approx(float(np.median(samples)))
    assert latency["mean"] == pytest.approx(float(samples.mean()))
    assert latency["min"] == samples.min() and latency["max"] == samples.max()
    assert latency["ci95_mean"][0] < latency["mean"] < latency["ci95_mean"][1]
    assert report["layers"] is None  # no per-layer profile for this engine
    assert set(report["stability"]) == {"cv", "drift", "unstable", "reasons"}


def test_per_layer_profile_is_written(tmp_path: Path, squeezenet: Path) -> None:
    done = run_harness(tmp_path, "--engine", "onnxruntime", "--model", str(squeezenet),
                       "--runs", "5")
    assert done.returncode == 0, done.stderr
    profile = json.loads((tmp_path / "out" / "profile.json").read_text())
    # Slowest first; SqueezeNet's time goes mostly to its convolutions (which one layer tops
    # the list depends on the machine's noise).
    means = [layer["mean_s"] for layer in profile]
    assert means == sorted(means, reverse=True) and means[-1] >= 0 and means[0] > 0
    assert sum(layer["share"] for layer in profile if layer["type"] == "Conv") > 0.5
    assert sum(layer["share"] for layer in profile) == pytest.approx(1.0)
    assert report_of(tmp_path)["layers"] == profile[:20]
    cold = report_of(tmp_path)["cold_start"]
    assert cold["load_s"] > 0 and cold["first_inference_s"] > 0 and cold["steady_state_s"] > 0


def test_a_model_named_like_an_option_reaches_the_harness_as_a_file(tmp_path: Path,
                                                                      small_onnx: Path) -> None:
    """manager.sh hands the user's file name over as `--model=NAME`, never as an option."""
    repository = Path(__file__).parents[2] / "targets" / "host-cpu"
    (tmp_path / "--model.onnx").write_bytes(small_onnx.read_bytes())
    functions = Path(__file__).parents[2] / "backend" / "vlab_backend" / "pipeline"
    env = {"PATH": "/usr/bin:/bin", "FUNCTIONS_PATH": str(functions), "RUNTIME": "onnxruntime",
           "MODEL_FILENAME": "--model.onnx", "NB_INFERENCE": "3", "BENCHMARK_TYPE": "TYPE1",
           "VLAB_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(repository / "AI_Manager" / "manager.sh")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    errors = (tmp_path / "AI_Manager" / "out" / "error.log").read_text()
    assert done.returncode == 0, errors
    assert json.loads((tmp_path / "AI_Manager" / "out" / "report.json").read_text())[
        "model_file_name"] == "--model.onnx"
