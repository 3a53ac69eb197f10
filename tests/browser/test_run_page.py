"""A person on the Voila dashboard: their queue fills and empties live (Cancel from the page),
a failed run's page gives the engine's reason, and a noisy run's page flags it unstable and
says it ran side by side with another job."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS, Served
from tests.models import custom_op_model
from tests.server import LiveServer, wait_terminal

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SIDE_BY_SIDE = "ran side by side with 1 other job on shared cores: numbers may be inflated"


def submit(client: httpx.Client, model: Path, engine: str, **params: Any) -> str:
    with model.open("rb") as handle:
        response = client.post("/api/benchmarks/run", data={
            "device": "host-cpu", "engine": engine, "nb_inference": "40",
            "benchmark_type": "TYPE1", "parameters": json.dumps(params)},
            files={"model": (model.name, handle)})
    assert response.status_code < 300, response.text
    return str(response.json()["id"])


def wait_running(client: httpx.Client, ids: list[str], timeout: float = 60) -> None:
    """Until every one of `ids` runs at once (a state, not a duration)."""
    deadline = time.monotonic() + timeout
    while not all(client.get(f"/api/benchmarks/{i}").json()["status"] == "running"
                  for i in ids):
        assert time.monotonic() < deadline, "the runs never ran side by side"
        time.sleep(0.05)


def label(run: dict[str, Any]) -> str:
    """How the dashboard's run picker names a run."""
    return f"{run['id']} · {run['model']} · {run['engine']} · {run['status']}"


def test_queue_and_run_pages_on_the_dashboard(voila: Served, page: Any, server: LiveServer,
                                              small_onnx: Path, tmp_path: Path) -> None:
    model = tmp_path / "run_page_probe.onnx"
    shutil.copy(small_onnx, model)
    with server.client() as client:
        failed_id = submit(client, custom_op_model(tmp_path / "fancy_probe.onnx"),
                           "onnxruntime")
        failed = wait_terminal(client, failed_id)
        assert failed["status"] == "failed" and "FancyCustomOp" in failed["message"]
        # Two noisy runs on the two host-cpu instances at once: side by side, unstable.
        noisy = [submit(client, model, "synthetic", mean_ms=1, std_ms=0.6, min_time_s=2)
                 for _ in range(2)]
        wait_running(client, noisy)
        finals = [wait_terminal(client, bench_id) for bench_id in noisy]
        assert all(f["status"] == "success" for f in finals)
        shared = finals[0]
        assert shared["metrics"]["concurrent_jobs_on_host"] == 1
        assert shared["metrics"]["unstable"]

    page.goto(voila.url)
    page.locator(".vlab-ready table.vlab-leaderboard").wait_for()
    queue = page.locator(".vlab-queue")
    expect(queue).to_contain_text("Nothing queued")

    # A long run appears in the queue live, and the person cancels it from there.
    with server.client() as client:
        long_id = submit(client, model, "synthetic", min_time_s=120)
    row_cancel = queue.locator(".vlab-queue-cancel")
    expect(queue).to_contain_text(long_id, timeout=60_000)
    expect(queue).to_contain_text("running", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-queue-running.png"), full_page=True)
    row_cancel.first.click()
    expect(queue).to_contain_text("Nothing queued", timeout=60_000)
    with server.client() as client:
        assert client.get(f"/api/benchmarks/{long_id}").json()["status"] == "canceled"

    # The failed run's page: its status and the engine's reason, in words.
    picker = page.locator(".vlab-run-picker select")
    # The dashboard has taken in the cancel (its run list is current) before the pick.
    expect(picker.locator("option", has_text=long_id)).to_contain_text("canceled",
                                                                       timeout=60_000)
    picker.select_option(label=label(failed))
    run_page = page.locator(".vlab-run-page")
    expect(run_page.locator(".vlab-run-status")).to_have_text("failed", timeout=60_000)
    reason = run_page.locator(".vlab-run-reason")
    expect(reason).to_contain_text("Why it failed")
    expect(reason).to_contain_text("FancyCustomOp")
    assert failed["message"] in reason.inner_text()
    run_page.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "dashboard-failed-run-page.png"), full_page=True)

    # The noisy run's page: unstable with its reason, the side-by-side warning, the trace.
    picker.select_option(label=label(shared))
    expect(run_page.locator(".vlab-run-status")).to_have_text("success", timeout=60_000)
    expect(run_page.locator(".vlab-unstable")).to_contain_text("unstable")
    expect(run_page.locator(".vlab-side-by-side")).to_contain_text(SIDE_BY_SIDE)
    expect(run_page.locator(".vlab-latency-trace")).to_be_visible()
    expect(run_page.locator(".vlab-key-figures")).to_contain_text("median latency")
    # The runs table flags it too.
    runs = page.locator("table.vlab-runs")
    expect(runs).to_contain_text(f"⚠ {SIDE_BY_SIDE}")
    expect(runs).to_contain_text("⚠ unstable")
    assert "lab.results(" not in page.locator("body").inner_text()  # no code, only views
    run_page.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "dashboard-unstable-side-by-side-run-page.png"),
                    full_page=True)
