"""The three notebooks, executed by papermill against a live backend."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
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
    for _ in range(2):
        assert server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine",
                          "onnxruntime", "--runs", "5").returncode == 0
    executed = run("dashboard.ipynb", tmp_path)
    assert "application/vnd.jupyter.widget-view+json" in str(executed.cells[-1].outputs)
    # The widgets as the kernel left them.
    models = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    state = json.dumps(models)
    assert "vlab-leaderboard" in state and "small_conv.onnx" in state
    assert "<th>Mean (ms)</th>" in state and "latency_mean_s" not in state
    plots = next(m["state"] for m in models.values()
                 if "vlab-plots" in m["state"].get("_dom_classes", []))
    assert len(plots["children"]) == 3


def test_sweep_writes_results_and_figures(tmp_path: Path, small_onnx: Path,
                                          face_tflite: Path) -> None:
    out = tmp_path / "sweep-out"
    executed = run("sweep.ipynb", tmp_path, models=[str(small_onnx), str(face_tflite)],
                   targets=["host-cpu"], engines=["onnxruntime", "tflite"], runs=5,
                   benchmark_type="TYPE1", params={"threads": 1}, output_dir=str(out))
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert list(rows[0])[:7] == ["model", "target", "engine", "status", "latency_mean_s",
                                 "latency_p90_s", "peak_memory_bytes"]
    statuses = {(r["model"], r["engine"]): r["status"] for r in rows}
    assert statuses[("small_conv.onnx", "onnxruntime")] == "success"
    assert statuses[("small_conv.onnx", "tflite")] == "rejected"
    assert float(next(r for r in rows if r["status"] == "success")["latency_mean_s"]) > 0
    assert {float(r["threads"]) for r in rows if r["status"] == "success"} == {1}  # params
    # Inline plots that render in the saved notebook.
    assert str(executed.cells[-1].outputs).count("application/vnd.plotly.v1+json") == 3
    page = (out / "figures.html").read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and "plotly" in page
    # Each figure sits in a box of a set height, not one as tall as the screen.
    assert re.findall(r'<div style="height:(\w+); width:100%;">', page) == ["420px"] * 3


def test_vlab_sweep_command(tmp_path: Path, server: LiveServer, small_onnx: Path) -> None:
    done = server.cli("sweep", "--models", str(small_onnx), "--targets", "host-cpu",
                      "--engines", "onnxruntime", "openvino", "--runs", "5", "--param",
                      "threads=1", "-o", str(tmp_path / "cli-sweep"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # A line per combination as it ends, then the table in ms with 3 significant digits.
    assert any(line.startswith("[1/2] small_conv.onnx") for line in lines)
    assert any(line.startswith("[2/2] small_conv.onnx") for line in lines)
    header = next(line for line in lines if line.lstrip().startswith("Model"))
    assert "Mean (ms)" in header and "Peak memory (MiB)" in header and "Stability" in header
    assert not re.search(r"\.\d{6,}", done.stdout)  # no 17-digit floats
    assert "IPKernelApp" not in done.stdout + done.stderr
    with (tmp_path / "cli-sweep" / "results.csv").open() as handle:
        assert {float(row["threads"]) for row in csv.DictReader(handle)} == {1}
    missing = server.cli("sweep", "--models", "nope.onnx", "--targets", "host-cpu",
                         "--engines", "onnxruntime")
    assert missing.returncode == 1 and "model file" in missing.stderr


def test_vlab_sweep_shows_a_refused_combination_and_fails(tmp_path: Path, server: LiveServer,
                                                          small_onnx: Path) -> None:
    done = server.cli("sweep", "--models", str(small_onnx), "--targets", "host-cpu",
                      "--engines", "tflite", "--runs", "5", "-o", str(tmp_path / "refused"))
    assert done.returncode == 1
    refused = next(line for line in done.stdout.splitlines() if line.startswith("[1/1]"))
    assert "rejected" in refused and "tflite" in refused and len(refused) > 50  # the reason
    assert "1 of 1 combinations did not succeed" in done.stderr


@pytest.mark.parametrize("command", ["sweep", "dashboard", "lab"])
def test_notebook_commands_explain_themselves(command: str) -> None:
    """`--help` has a description and the defaults, not a bare usage line."""
    done = subprocess.run([sys.executable, "-m", "vlab_kernel.cli", command, "--help"],
                          capture_output=True, text=True, check=True)
    description = " ".join(done.stdout.split("\n\n")[1].split())
    assert len(description) > 40, done.stdout
    if command == "sweep":
        assert "(default: 20)" in done.stdout and "--param KEY=VALUE" in done.stdout
    if command == "dashboard":
        assert "(default: 8866)" in done.stdout
    if command == "lab":
        assert "JupyterLab" in description and "jupyter lab --help" in description
