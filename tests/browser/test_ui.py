"""JupyterLab runs explore.ipynb, two benchmarks of one configuration complete through the
launcher and the explorer plots them as one group of two runs; the Voila dashboard shows plots
and no code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import ARTIFACTS, Served
from tests.server import LiveServer
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# The explorer's p50 bars as plotted in the page: plotly keeps a figure's data on its div.
PLOTTED_P50 = """() => {
    const plot = document.querySelector('.vlab-explorer .js-plotly-plot.vlab-percentiles');
    const p50 = plot && plot.data && plot.data.find(trace => trace.name === 'p50');
    return p50 ? {x: Array.from(p50.x), y: Array.from(p50.y),
                  runs: Array.from(p50.customdata)} : null;
}"""

CLASSES = """() => Array.from(document.querySelectorAll('.vlab-explorer [class*=vlab]'))
    .map(e => e.className + ' ' + e.querySelectorAll('.js-plotly-plot').length)"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A lab of this module's own: the explorer's groups hold only these tests' runs."""
    live = LiveServer(tmp_path_factory.mktemp("ui") / "data").start()
    yield live
    live.stop()


def launch_and_wait(launcher: Any, page: Any) -> str:
    """Press Launch and wait for this run's own result; returns the benchmark's id."""
    result = launcher.locator(".vlab-result")
    before = result.inner_text() if result.count() else ""
    launcher.get_by_role("button", name="Launch").click()
    page.wait_for_function(
        """before => { const r = document.querySelector('.vlab-launcher .vlab-result');
                       return r !== null && r.innerText !== before; }""",
        arg=before, timeout=180_000)
    return str(result.locator("b").first.inner_text())


def test_explore_notebook_and_launcher_in_jupyterlab(jupyterlab: Served, page: Any,
                                                     server: LiveServer) -> None:
    page.goto(jupyterlab.url)
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    select_kernel = page.locator(".jp-Dialog").get_by_role("button", name="Select")
    try:
        select_kernel.wait_for(timeout=15_000)
        select_kernel.click()
    except PlaywrightTimeout:
        pass  # the kernel started without asking
    page.locator(".jp-Dialog").wait_for(state="detached")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    # Run all cells; the command's promise settles only when they all ran, so do not await it.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    launcher = page.locator(".vlab-launcher.vlab-ready")
    launcher.wait_for()
    page.locator(".vlab-board table").wait_for()
    launch = launcher.get_by_role("button", name="Launch")
    launch.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher-ready.png"))
    # Wait for the notebook's own run to finish before launching from the widget.
    page.locator(".jp-OutputArea-output .js-plotly-plot").first.wait_for()
    page.locator(".vlab-explorer.vlab-ready").wait_for()
    ids = [launch_and_wait(launcher, page) for _ in range(2)]  # one configuration, twice
    result = launcher.locator(".vlab-result")
    assert f"{DEFAULT_NB_INFERENCE} inferences" in result.inner_text()
    assert ids[1] in result.inner_text() and ids[0] != ids[1]
    launcher.locator(".js-plotly-plot").wait_for()
    result.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher-result.png"))
    with server.client() as client:
        rows = [client.get(f"/api/benchmarks/{bench_id}").json() for bench_id in ids]
    medians_ms = [row["metrics"]["latency_median_s"] * 1e3 for row in rows]
    label = f"{rows[0]['model']} · {rows[0]['engine']} · {rows[0]['device']}"
    # The explorer follows the server's events: it redraws by itself once both runs ended.
    try:
        page.wait_for_function(
            f"""label => {{ const p50 = ({PLOTTED_P50})();
                            return p50 !== null && p50.x.includes(label) &&
                                   p50.runs[p50.x.indexOf(label)] === 2; }}""",
            arg=label, timeout=60_000)
    except PlaywrightTimeout:
        pytest.fail(f"the explorer plots {page.evaluate(PLOTTED_P50)}, not {label} with 2 runs; "
                    f"classes: {page.evaluate(CLASSES)}")
    plotted = page.evaluate(PLOTTED_P50)
    where = plotted["x"].index(label)
    assert plotted["x"].count(label) == 1  # one x category per configuration
    assert plotted["runs"][where] == 2
    # The bar is the runs' median (here the mean of two), never their sum.
    assert plotted["y"][where] == pytest.approx(median(medians_ms), rel=1e-6)
    page.locator(".vlab-explorer .vlab-percentiles").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-explorer-grouped-runs.png"))

    # The notebook run a second time: its own benchmark (SqueezeNet on OpenVINO) now has two
    # runs, and the re-drawn explorer plots their median, not their sum.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    label = "light_squeezenet.onnx · openvino · host-cpu"
    try:
        page.wait_for_function(
            f"""label => {{ const p50 = ({PLOTTED_P50})();
                            return p50 !== null && p50.x.includes(label) &&
                                   p50.runs[p50.x.indexOf(label)] === 2; }}""",
            arg=label, timeout=300_000)
    except PlaywrightTimeout:
        pytest.fail(f"after the second run the explorer plots {page.evaluate(PLOTTED_P50)}, "
                    f"not {label} with 2 runs")
    with server.client() as client:
        runs = [r for r in client.get("/api/results").json()
                if r["engine"] == "openvino" and r["status"] == "success"]
    assert len(runs) == 2, runs
    plotted = page.evaluate(PLOTTED_P50)
    where = plotted["x"].index(label)
    assert plotted["x"].count(label) == 1
    assert plotted["y"][where] == pytest.approx(
        median(r["latency_median_s"] * 1e3 for r in runs), rel=1e-6)


def test_voila_dashboard_shows_plots_and_no_code(voila: Served, page: Any, server: LiveServer,
                                                 small_onnx: Path) -> None:
    assert server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine",
                      "onnxruntime", "--runs", "5").returncode == 0
    page.goto(voila.url)
    page.locator("table.vlab-leaderboard").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    assert page.locator(".js-plotly-plot").count() >= 3
    assert "small_conv.onnx" in page.locator("table.vlab-leaderboard").inner_text()
    body = page.locator("body").inner_text()
    assert "import pandas" not in body and "lab.results(" not in body
    assert page.locator(".jp-InputArea-editor, .jp-CodeMirrorEditor").count() == 0
    page.screenshot(path=str(ARTIFACTS / "voila-dashboard.png"), full_page=True)
