"""The Voila dashboard as a person sees it: one row per configuration with its run count,
interval and stability, readable headers and units, filters, sorting, and live updates."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, Served
from tests.server import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def bench(server: LiveServer, model: Path, engine: str) -> None:
    done = server.cli("bench", str(model), "--target", "host-cpu", "--engine", engine,
                      "--runs", "5")
    assert done.returncode == 0, done.stderr


def significant_digits(number: str) -> int:
    return len(number.replace(".", "").lstrip("0"))


def test_dashboard_groups_filters_sorts_and_updates_live(voila: Served, page: Any,
                                                         server: LiveServer, small_onnx: Path,
                                                         tmp_path: Path) -> None:
    # A model name of its own: other tests' runs on the shared server are filtered out.
    model = tmp_path / "dashboard_probe.onnx"
    shutil.copy(small_onnx, model)
    for _ in range(2):
        bench(server, model, "onnxruntime")
    page.goto(voila.url)
    page.locator(".vlab-ready table.vlab-leaderboard").wait_for()
    selects = page.locator(".vlab-dashboard select")  # target, engine, model, status, sort by
    selects.nth(2).select_option(model.name)
    board = page.locator("table.vlab-leaderboard")
    expect(board.locator("tbody tr")).to_have_count(1)
    headers = board.locator("thead th").all_inner_texts()
    assert headers == ["Model", "Target", "Engine", "Runs", "Mean (ms)", "Interval (ms)",
                       "p90 (ms)", "Peak memory (MiB)", "Stability", "Last run (UTC)"]
    cells = board.locator("tbody tr").first.locator("td").all_inner_texts()
    record = dict(zip(headers, cells, strict=True))
    assert record["Runs"] == "2"  # repeated runs are one configuration, counted
    assert re.fullmatch(r"[\d.]+ – [\d.]+", record["Interval (ms)"])
    assert significant_digits(record["Mean (ms)"]) <= 3
    assert "runs" in record["Stability"]  # "all 2 runs stable" or "1 of 2 runs unstable"
    # Timestamps to the second.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record["Last run (UTC)"])
    expect(page.locator(".vlab-plots .js-plotly-plot")).to_have_count(3)

    # Live: a run that ends while the page is open appears without a reload.
    bench(server, model, "openvino")
    expect(board).to_contain_text("openvino", timeout=60_000)
    expect(board.locator("tbody tr")).to_have_count(2)

    # Sorting: by engine, descending puts openvino first; ascending onnxruntime.
    selects.nth(4).select_option("Engine")
    page.get_by_role("button", name="descending").click()
    expect(board.locator("tbody tr").first).to_contain_text("openvino")
    page.get_by_role("button", name="ascending").click()
    expect(board.locator("tbody tr").first).to_contain_text("onnxruntime")

    # Filters: one engine only, in both tables.
    selects.nth(1).select_option("openvino")
    expect(board.locator("tbody tr")).to_have_count(1)
    expect(board).to_contain_text("openvino")
    expect(page.locator("table.vlab-runs tbody tr")).to_have_count(1)
    # Redrawn: three new figures, which take seconds on a loaded machine.
    expect(page.locator(".vlab-plots .js-plotly-plot")).to_have_count(3, timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "voila-dashboard-filtered.png"), full_page=True)
