"""JupyterLab runs explore.ipynb and a benchmark completes through the launcher; the Voila
dashboard shows plots and no code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import ARTIFACTS, Served
from tests.server import LiveServer
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_explore_notebook_and_launcher_in_jupyterlab(jupyterlab: Served, page: Any) -> None:
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
    launch.click()
    result = launcher.locator(".vlab-result")
    result.wait_for(timeout=180_000)
    assert f"{DEFAULT_NB_INFERENCE} inferences" in result.inner_text()
    launcher.locator(".js-plotly-plot").wait_for()
    result.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-launcher-result.png"))


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
