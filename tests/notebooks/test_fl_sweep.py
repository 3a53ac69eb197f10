"""notebooks/fl_sweep.ipynb, executed by papermill against a live backend whose FL-capable
target is the scripted board of tests/api/test_federated.py: one CSV row per setting, the
rounds, the figures inline and in figures.html."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import nbformat
import papermill
import pytest

from tests.api.test_federated import BOARD
from tests.kernel.test_federation import board_server
from tests.server import LiveServer

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = board_server(tmp_path_factory.mktemp("fl-sweep"))
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def kernel_env(fl_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels inherit this process's environment, as under the Jupyter extension."""
    monkeypatch.setenv("VLAB_URL", fl_server.url)
    monkeypatch.setenv("VLAB_DATA_DIR", str(fl_server.data_dir))
    monkeypatch.delenv("VLAB_TOKEN", raising=False)


def test_fl_sweep_writes_one_row_per_setting(tmp_path: Path) -> None:
    out = tmp_path / "fl-out"
    executed_path = tmp_path / "fl_sweep.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "fl_sweep.ipynb"), str(executed_path), kernel_name="python3",
        progress_bar=False, cwd=str(tmp_path), execution_timeout=300,
        parameters={"clients": [2, 3], "failure_rates": [0.0, 0.5], "rounds": 2, "epochs": 1,
                    "target": BOARD, "engine": "onnxruntime", "output_dir": str(out)})
    executed = nbformat.read(executed_path, as_version=4)
    with (out / "results.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["clients"]), float(r["failure_rate"])) for r in rows] == [
        (2, 0.0), (2, 0.5), (3, 0.0), (3, 0.5)]
    assert all(r["status"] == "success" for r in rows), rows
    assert all(int(r["rounds_done"]) == 2 for r in rows)
    assert all(0 <= float(r["final_global_accuracy"]) <= 1 for r in rows)
    no_failures = [r for r in rows if float(r["failure_rate"]) == 0]
    assert all(int(r["failures_scheduled"]) == 0 and int(r["dropped"]) == 0 for r in no_failures)
    # Failures drawn are failures seen: each scheduled one drops its client that round.
    assert all(int(r["failures_scheduled"]) == int(r["dropped"]) for r in rows)
    with (out / "rounds.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 4 * 2
    text = "\n".join(str(o.get("text", "")) for c in executed.cells for o in c.get("outputs", []))
    assert "[4/4] 3 clients · failure rate 0.5: success" in text
    assert "Final accuracy (%)" in text
    assert str(executed.cells[-1].outputs).count("application/vnd.plotly.v1+json") == 2
    page = (out / "figures.html").read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and "plotly" in page and "Final accuracy (%)" in page
