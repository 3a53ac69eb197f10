"""The Voila dashboard's "Federated learning" section as a person sees it: the experiments
listed with their rounds and best accuracy, the picked one's rounds plotted (read from the
plotly figures in the page) with a client's failure marked, and Cancel on a running one. The
lab's FL-capable target is the scripted board of tests/api/test_federated.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect

from tests.api.test_federated import BOARD, digits, softmax_regression
from tests.browser.conftest import ARTIFACTS, Served
from tests.kernel.test_federation import board_server
from tests.server import LiveServer
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.federation import FLClient, failure
from vlab_kernel.lab import Lab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A figure's traces as plotted in the page: plotly keeps them on the figure's div.
PLOTTED = """(selector) => {
    const plot = document.querySelector(selector);
    return plot && plot.data ? plot.data.map(t => ({
        name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
        text: t.text ? Array.from(t.text) : []})) : null;
}"""
# The label of the picker's option for an experiment (labels start with its id).
OPTION = """([selector, id]) => {
    const option = Array.from(document.querySelectorAll(selector + ' option'))
        .find(o => o.textContent.startsWith(id));
    return option ? option.textContent : null;
}"""
ACCURACY = ".vlab-fl-section .js-plotly-plot.vlab-fl-accuracy"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's lab (the dashboard's kernel uses it): the scripted FL board."""
    live = board_server(tmp_path_factory.mktemp("fl-browser"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def lab(server: LiveServer) -> Iterator[Lab]:
    """The dashboard's user (the lab's local credential)."""
    lab = Lab(VlabClient(Connection(server.url, server.token)))
    yield lab
    lab.client.close()


def members(count: int, learning_rate: float) -> list[FLClient]:
    x, y, xt, yt = digits()
    return [FLClient(train=(x[p], y[p]), test=(xt[t], yt[t]), learning_rate=learning_rate)
            for p, t in zip(np.array_split(np.arange(len(x)), count),
                            np.array_split(np.arange(len(xt)), count), strict=True)]


def test_dashboard_plots_an_experiments_rounds(voila: Served, page: Any, lab: Lab,
                                               tmp_path: Path) -> None:
    model = softmax_regression(tmp_path / "digits.onnx")
    _, _, xt, yt = digits()
    fl = lab.federate(model, members(3, 0.05), rounds=3, target=BOARD,
                      server_dataset=(xt, yt), events={1: [failure(round=2)]}, wait=True)
    results = fl.results()
    page.goto(voila.url)
    table = page.locator(".vlab-fl-section.vlab-ready table.vlab-experiments-table")
    table.wait_for()
    row = table.locator("tbody tr", has_text=fl.id)
    expect(row).to_have_count(1)
    cells = row.locator("td").all_inner_texts()
    headers = table.locator("thead th").all_inner_texts()
    record = dict(zip(headers, cells, strict=True))
    assert record["status"] == "success" and record["rounds done"] == "3/3"
    best = max(r["global_accuracy"] for r in results["rounds_results"]) * 100
    assert float(record["best global accuracy (%)"]) == pytest.approx(best, rel=1e-2)
    assert record["objective met"] == "no"

    page.locator(ACCURACY).wait_for()
    page.locator(ACCURACY).scroll_into_view_if_needed()
    # The figure is drawn empty, then its traces arrive from the kernel.
    page.wait_for_function(f"s => (({PLOTTED})(s) || []).some(t => t.name === 'global')",
                           arg=ACCURACY)
    traces = {t["name"]: t for t in page.evaluate(PLOTTED, ACCURACY)}
    rounds = results["rounds_results"]
    assert traces["global"]["x"] == [0, 1, 2, 3]
    assert traces["global"]["y"] == pytest.approx(
        [results["initial"]["accuracy"] * 100] + [r["global_accuracy"] * 100 for r in rounds])
    assert traces["client_0"]["y"] == pytest.approx(
        [r["clients"]["client_0"]["eval_accuracy"] * 100 for r in rounds])
    marked = traces["event: failure"]
    assert marked["x"] == [2] and marked["text"][0].startswith("client_1: failure")
    participants = {t["name"]: t for t in page.evaluate(
        PLOTTED, ".vlab-fl-section .js-plotly-plot.vlab-fl-participants")}
    assert participants["aggregated"]["y"] == [3, 2, 3]
    assert participants["dropped"]["y"] == [0, 1, 0]
    expect(page.locator(".vlab-fl-section .vlab-fl-status")).to_have_text("success")
    expect(page.locator(".vlab-fl-section table.vlab-fl-rounds")).to_contain_text(
        "client_1: failure")
    page.screenshot(path=str(ARTIFACTS / "voila-dashboard-federated.png"), full_page=True)

    # Live: a new experiment appears in the list while the page is open; picked, it runs,
    # and Cancel stops it.
    running = lab.federate(model, members(2, 0.001), rounds=200, target=BOARD)
    picker = ".vlab-fl-section .vlab-experiments select"
    page.wait_for_function(f"([s, id]) => ({OPTION})([s, id]) !== null", arg=[picker, running.id])
    label = page.evaluate(OPTION, [picker, running.id])
    page.locator(picker).select_option(label=label)
    status = page.locator(".vlab-fl-section .vlab-fl-status")
    expect(status).to_have_text("running", timeout=120_000)
    page.locator(".vlab-fl-section .vlab-federation-view button", has_text="Cancel").click()
    expect(status).to_have_text("canceled", timeout=120_000)
    assert running.status == "canceled"
    expect(page.locator(".vlab-fl-section .vlab-run-reason")).to_contain_text(
        "Why it was canceled")
