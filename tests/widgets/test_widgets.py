"""Widget logic without a browser: clicks, state and errors, against a live backend."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.server import LiveServer, wait_terminal
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.lab import Lab
from vlab_widgets import Launcher, ResultsExplorer, TargetBoard


@pytest.fixture
def lab(server: LiveServer) -> Lab:
    return Lab(VlabClient(Connection(server.url, server.token)))


def file_item(name: str, content: bytes) -> dict[str, object]:
    """A FileUpload value entry, as the browser sends it."""
    return {"name": name, "type": "", "size": len(content), "content": memoryview(content),
            "last_modified": datetime.now(UTC)}


def upload(launcher: Launcher, path: Path) -> None:
    launcher.upload.value = (file_item(path.name, path.read_bytes()),)


def test_launcher_is_fed_by_the_api_and_filters_engines(lab: Lab, small_onnx: Path,
                                                        face_tflite: Path) -> None:
    launcher = Launcher(lab)
    assert "vlab-ready" in launcher._dom_classes
    assert launcher.target.value == "host-cpu"
    upload(launcher, small_onnx)
    assert launcher.models[launcher.model.value]["filename"] == "small_conv.onnx"
    assert "2,672 parameters" in launcher.model_summary.value
    assert list(launcher.engine.options) == ["onnxruntime", "openvino", "synthetic"]
    upload(launcher, face_tflite)
    assert list(launcher.engine.options) == ["openvino", "synthetic", "tflite"]
    assert not launcher.launch.disabled


def test_launch_runs_and_shows_the_result(lab: Lab, small_onnx: Path) -> None:
    launcher = Launcher(lab)
    upload(launcher, small_onnx)
    launcher.engine.value = "onnxruntime"
    launcher.runs.value = 40
    launcher.params.value = '{"threads": 1}'
    launcher.launch.click()
    assert launcher.launch.disabled  # while submitting and running
    assert launcher.task is not None
    launcher.task.result(timeout=120)
    assert not launcher.launch.disabled
    assert launcher.current is not None and launcher.current.status == "success"
    assert 'class="vlab-result"' in launcher.result.value and "40 inferences" in \
        launcher.result.value
    assert launcher.progress.bar_style == "success"
    assert len(launcher.plot.data) == 1 and len(launcher.plot.data[0].y) == 40


def test_launcher_errors_are_shown_not_raised(lab: Lab, small_onnx: Path) -> None:
    launcher = Launcher(lab)
    upload(launcher, small_onnx)
    launcher.params.value = "{threads: 1"
    launcher.launch.click()
    assert "parameters must be a JSON object" in launcher.message.value
    assert launcher.task is None and not launcher.launch.disabled
    launcher.params.value = '{"threads": "many"}'
    launcher.launch.click()
    launcher.task.result(timeout=60)  # type: ignore[union-attr]
    assert "must be an integer" in launcher.message.value
    assert 'class="vlab-error"' in launcher.message.value
    launcher.path.value = "/nowhere/model.onnx"
    launcher.add_path.click()
    assert "model file /nowhere/model.onnx not found" in launcher.message.value
    launcher.upload.value = (file_item("notes.txt", b"hello"),)
    assert "unsupported model file" in launcher.message.value


def test_explorer_filters_plots_and_compares(lab: Lab, server: LiveServer,
                                             small_onnx: Path) -> None:
    ids = [lab.benchmark(small_onnx, "host-cpu", engine, runs=15).id
           for engine in ("onnxruntime", "openvino")]
    with server.client() as client:
        for bench_id in ids:
            assert wait_terminal(client, bench_id)["status"] == "success"
    explorer = ResultsExplorer(lab)
    assert set(ids) <= set(explorer.frame["id"])
    explorer.filters["engine"].value = "openvino"
    assert set(explorer.frame["engine"]) == {"openvino"}
    assert "openvino" in explorer.table.value and ids[1] in explorer.table.value
    explorer.filters["engine"].value = "(all)"
    explorer.runs.value = tuple(ids)
    comparison = explorer.comparison()
    assert list(comparison.columns) == ids
    assert "latency_mean_s" in comparison.index
    assert len(explorer.distribution.data) == 2
    assert 'class="vlab-verdict"' in explorer.verdict.value  # two runs: significance verdict
    assert len(explorer.percentiles.data) == 3  # p50, p90, p99
    assert explorer.scatter.data and explorer.memory.data


def test_board_shows_instances_and_refreshes_on_events(lab: Lab, small_onnx: Path) -> None:
    board = TargetBoard(lab)
    try:
        assert "host-cpu-0" in board.table.value and "vlab-state-" in board.table.value
        time.sleep(0.5)
        before = board.refreshes
        bench = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=5)
        bench.wait(progress=False)
        deadline = time.monotonic() + 10
        while board.refreshes < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert board.refreshes >= before + 2  # pending, queued, running, success...
    finally:
        board.stop()
