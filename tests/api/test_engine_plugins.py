"""Engines from the registry on host-cpu, end to end: a third-party engine package installed
next to the lab (built here, on the module path of a real `vlab serve`, no file of the project
changed) and the built-in synthetic engine benchmark through the CLI, with warm workers and
without."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.models import engine_package
from tests.server import LiveServer

PLUGIN = "onnxref"  # ONNX's reference evaluator, from tests.models.engine_package


@pytest.fixture(scope="module", params=["cold", "warm"])
def lab(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, bool]]:
    warm = request.param == "warm"
    site = engine_package(tmp_path_factory.mktemp("site"))
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH"))
                                         if p)}
    live = LiveServer(tmp_path_factory.mktemp("vlab") / "data",
                      [] if warm else ["--no-warm-workers"], env=env).start()
    if warm:  # a job that arrives before its worker is ready starts cold
        live.wait_for_warm_workers()
    yield live, warm
    live.stop()


def bench(server: LiveServer, model: Path, engine: str, *args: str) -> dict[str, Any]:
    done = server.cli("bench", str(model), "--target", "host-cpu", "--engine", engine,
                      "--json", *args)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_targets_list_the_installed_engine_on_host_cpu(lab: tuple[LiveServer, bool]) -> None:
    server, _warm = lab
    done = server.cli("targets", "--json")
    assert done.returncode == 0, done.stderr
    [host_cpu] = [t for t in json.loads(done.stdout) if t["target"] == "host-cpu"]
    assert {PLUGIN, "synthetic", "onnxruntime"} <= set(host_cpu["engines"])
    for instance in host_cpu["instances"]:
        assert instance["engines"][PLUGIN] == {"version": "0.1.0",
                                               "supported_types": ["TYPE1", "TYPE2"]}
    assert f"{PLUGIN} (TYPE1/TYPE2)" in server.cli("targets").stdout


def test_the_installed_engine_benchmarks_on_host_cpu(lab: tuple[LiveServer, bool],
                                                     small_onnx: Path) -> None:
    server, warm = lab
    report = bench(server, small_onnx, PLUGIN, "--runs", "5", "--param", "repeats=2")
    assert report["inference_engine"] == PLUGIN and report["target"] == "host-cpu"
    assert report["engine_version"].startswith("onnx-reference ")
    assert report["nb_inference"] == 5 and report["inference_latency"]["mean"] > 0
    assert report["parameters"]["repeats"] == 2
    assert report["worker"]["warm"] is warm


def test_a_model_format_the_engine_does_not_run_is_refused(lab: tuple[LiveServer, bool],
                                                          face_tflite: Path) -> None:
    server, _warm = lab
    done = server.cli("bench", str(face_tflite), "--target", "host-cpu", "--engine", PLUGIN)
    assert done.returncode != 0 and ".onnx" in done.stderr


def test_the_synthetic_engine_benchmarks_on_host_cpu(lab: tuple[LiveServer, bool],
                                                     small_onnx: Path) -> None:
    server, warm = lab
    report = bench(server, small_onnx, "synthetic", "--runs", "20", "--param", "mean_ms=3")
    assert report["inference_engine"] == "synthetic"
    # Each inference busy-waits 3 ms (std 0): the calibration the engine exists for.
    latency = report["inference_latency"]
    assert latency["min"] >= 3e-3 and latency["median"] < 4.5e-3
    assert report["worker"]["warm"] is warm
