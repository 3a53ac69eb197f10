"""The three notebooks, executed by papermill against a live backend."""

from __future__ import annotations

import csv
from pathlib import Path

import nbformat
import papermill
import pytest

from tests.server import LiveServer

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def kernel_env(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels inherit this process's environment, as under the Jupyter extension."""
    monkeypatch.setenv("VLAB_URL", server.url)
    monkeypatch.setenv("VLAB_DATA_DIR", str(server.data_dir))
    monkeypatch.delenv("VLAB_TOKEN", raising=False)


def outputs(notebook: nbformat.NotebookNode) -> str:
    text = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text.append(str(output.get("text", "")))
            text.extend(str(v) for v in output.get("data", {}).values())
    return "\n".join(text)


def run(name: str, tmp_path: Path, **parameters: object) -> nbformat.NotebookNode:
    out = tmp_path / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters,
                               kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
                               execution_timeout=300)
    return nbformat.read(out, as_version=4)


def test_explore_runs_end_to_end(tmp_path: Path) -> None:
    executed = run("explore.ipynb", tmp_path)
    text = outputs(executed)
    assert "application/vnd.jupyter.widget-view+json" in str(executed.cells[3].outputs)
    assert "count" in text and "latency_s" in text  # bench.latencies.describe()


def test_dashboard_shows_a_leaderboard(tmp_path: Path, server: LiveServer,
                                       small_onnx: Path) -> None:
    assert server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine",
                      "onnxruntime", "--runs", "5").returncode == 0
    text = outputs(run("dashboard.ipynb", tmp_path))
    assert "vlab-leaderboard" in text and "small_conv.onnx" in text
    assert "application/vnd.plotly.v1+json" in str(
        [c.get("outputs") for c in nbformat.read(tmp_path / "dashboard.ipynb", 4).cells])


def test_sweep_writes_results_and_figures(tmp_path: Path, small_onnx: Path,
                                          face_tflite: Path) -> None:
    out = tmp_path / "sweep-out"
    run("sweep.ipynb", tmp_path, models=[str(small_onnx), str(face_tflite)],
        targets=["host-cpu"], engines=["onnxruntime", "tflite"], runs=5,
        benchmark_type="TYPE1", output_dir=str(out))
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert list(rows[0])[:7] == ["model", "target", "engine", "status", "latency_mean_s",
                                 "latency_p90_s", "peak_memory_bytes"]
    statuses = {(r["model"], r["engine"]): r["status"] for r in rows}
    assert statuses[("small_conv.onnx", "onnxruntime")] == "success"
    assert statuses[("small_conv.onnx", "tflite")] == "rejected"
    assert float(next(r for r in rows if r["status"] == "success")["latency_mean_s"]) > 0
    assert "plotly" in (out / "figures.html").read_text()


def test_vlab_sweep_command(tmp_path: Path, server: LiveServer, small_onnx: Path) -> None:
    done = server.cli("sweep", "--models", str(small_onnx), "--targets", "host-cpu",
                      "--engines", "onnxruntime", "openvino", "--runs", "5", "-o",
                      str(tmp_path / "cli-sweep"))
    assert done.returncode == 0, done.stderr
    assert "small_conv.onnx" in done.stdout and "success" in done.stdout
    assert (tmp_path / "cli-sweep" / "results.csv").is_file()
    missing = server.cli("sweep", "--models", "nope.onnx", "--targets", "host-cpu",
                         "--engines", "onnxruntime")
    assert missing.returncode == 1 and "model file" in missing.stderr
