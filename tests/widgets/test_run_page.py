"""The page of one run: live status, the failure reason, logs, key figures, the raw report,
the layer profile, the latency trace with its median, the stability verdict, the side-by-side
warning and Cancel; against a live backend."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.models import custom_op_model
from tests.server import LiveServer
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.lab import Lab
from vlab_widgets import RunPage
from vlab_widgets.common import side_by_side, side_by_side_html, side_by_side_text
from vlab_widgets.plots import latency_trace, layer_bars
from vlab_widgets.run_page import key_figures, stability_of, verdict_html


@pytest.fixture
def lab(server: LiveServer) -> Lab:
    return Lab(VlabClient(Connection(server.url, server.token)))


def wait_for(condition: Callable[[], object], timeout: float = 60) -> None:
    """Wait until `condition()` holds (a state, not a duration)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.05)


def test_side_by_side_counts_the_other_jobs_and_says_so() -> None:
    # `concurrent_jobs_on_host` counts the *other* jobs: 1 already means two side by side.
    assert [side_by_side(m) for m in ({}, None, {"concurrent_jobs_on_host": None},
                                      {"concurrent_jobs_on_host": 0},
                                      {"concurrent_jobs_on_host": 1},
                                      {"concurrent_jobs_on_host": 3.0})] == [0, 0, 0, 0, 1, 3]
    assert side_by_side_text(0) == "" and side_by_side_html({}) == ""
    assert side_by_side_text(1) == ("ran side by side with 1 other job on shared cores: "
                                    "numbers may be inflated")
    warning = side_by_side_html({"concurrent_jobs_on_host": 2})
    assert 'class="vlab-side-by-side"' in warning and \
        "ran side by side with 2 other jobs on shared cores: numbers may be inflated" in warning


def test_key_figures_stability_and_plots_use_ms_and_mib() -> None:
    report = {"inference_latency": {"median": 0.0075123, "mean": 0.008, "p90": 0.009,
                                    "p99": 0.0123456, "min": 0.007, "max": 0.02,
                                    "std": 0.0004},
              "peak_memory_bytes": 125 * 2**20, "memory_delta_bytes": 2**19,
              "cold_start": {"load_s": 0.25, "first_inference_s": 0.0123}, "nb_inference": 40,
              "stability": {"cv": 0.3, "drift": 0.0, "unstable": True,
                            "reasons": ["high variation (CV 30.0% > 10%)"]}}
    figures = key_figures(report).set_index("figure")
    assert figures.loc["median latency"].tolist() == ["7.51", "ms"]
    assert figures.loc["p99 latency"].tolist() == ["12.3", "ms"]
    assert figures.loc["peak memory"].tolist() == ["125", "MiB"]
    assert figures.loc["memory over baseline"].tolist() == ["0.5", "MiB"]
    assert figures.loc["model load"].tolist() == ["250", "ms"]
    assert figures.loc["timed inferences", "value"] == "40"
    unstable = verdict_html(stability_of(report, {}))
    assert 'class="vlab-unstable"' in unstable and \
        html.escape("unstable: high variation (CV 30.0% > 10%)") in unstable
    stable = verdict_html(stability_of({}, {"latency_cv": 0.0123, "unstable": False}))
    assert 'class="vlab-stable"' in stable and "stable (CV 1.23 %)" in stable
    assert verdict_html(stability_of(None, None)) == ""

    latencies = pd.Series([0.001, 0.003, 0.002, 0.010])
    trace = latency_trace(latencies, median=True)
    assert list(trace.data[0].y) == pytest.approx([1, 3, 2, 10])  # ms
    assert list(trace.data[1].y) == pytest.approx([2.5, 2.5])  # the median, marked
    assert trace.data[1].name == "median 2.5 ms"
    layers = pd.DataFrame([{"name": f"conv{i}", "type": "Conv", "mean_s": i / 1e4,
                            "share": i / 210} for i in range(1, 21)])
    bars = layer_bars(layers, top=5).data[0]
    assert list(bars.y) == [f"conv{i} (Conv)" for i in (16, 17, 18, 19, 20)]  # slowest on top
    assert list(bars.x) == pytest.approx([1.6, 1.7, 1.8, 1.9, 2.0])


def test_a_failed_runs_page_gives_the_engines_reason_and_its_logs(lab: Lab,
                                                                 tmp_path: Path) -> None:
    bench = lab.benchmark(custom_op_model(tmp_path / "fancy.onnx"), "host-cpu", "onnxruntime",
                          runs=5)
    page = RunPage(lab, bench.id)
    try:
        assert page.loaded.wait(120), "the run never ended"
        wait_for(lambda: "vlab-status-failed" in page.status.value)
        final = bench.info()
        assert final["status"] == "failed" and "FancyCustomOp" in final["message"]
        assert 'class="vlab-run-reason"' in page.reason.value
        assert html.escape(final["message"]) in page.reason.value  # the engine's words
        assert page.cancel.layout.display == "none"  # nothing left to cancel
        assert page.log_tabs.titles == ("error log", "user log")
        assert page.log_tabs.selected_index == 0  # a failure opens on its error log
        assert "FancyCustomOp" in page.log_tabs.children[0].value
        assert page.warnings.value == ""  # no stability verdict for a run without numbers
        assert not page.trace.data and "no report" in page.raw.children[0].value
        assert "vlab-ready" in page._dom_classes
    finally:
        page.close()


def test_a_successful_runs_page_has_figures_trace_profile_and_report(lab: Lab,
                                                                    small_onnx: Path) -> None:
    bench = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=30).wait(progress=False)
    page = RunPage(lab, bench)  # a Benchmark works as well as its id
    try:
        assert page.loaded.is_set()  # ended before: loaded at once, nothing followed
        assert not page._follower.running
        report = bench.report
        assert "vlab-status-success" in page.status.value and page.reason.value == ""
        assert "<td>median latency</td>" in page.figures.value
        assert f"<td>{html.escape(key_figures(report).iloc[0]['value'])}</td>" in \
            page.figures.value
        latency, median = page.trace.data
        assert len(latency.y) == 30
        assert latency.y == pytest.approx([s * 1e3 for s in report["inference_latency"][
            "samples"]])
        assert median.y[0] == pytest.approx(pd.Series(latency.y).median())
        assert page.layer_plot.data and len(page.layer_plot.data[0].y) == min(15, len(
            bench.layers))  # onnxruntime profiles its layers
        assert json.loads(html.unescape(page.raw.children[0].value.split(">", 1)[1]
                                        .rsplit("</pre>", 1)[0]))["nb_inference"] == 30
        assert page.raw.selected_index is None  # the raw JSON is collapsed
        assert ("vlab-stable" in page.warnings.value) != ("vlab-unstable" in page.warnings.value)
        shared = {**page.info, "metrics": {**page.info["metrics"],
                                           "concurrent_jobs_on_host": 2}}
        page._show_state(shared)
        assert "ran side by side with 2 other jobs on shared cores: numbers may be inflated" in \
            page.warnings.value
    finally:
        page.close()


def test_an_unstable_run_is_flagged_with_its_reason(lab: Lab, small_onnx: Path) -> None:
    bench = lab.benchmark(small_onnx, "host-cpu", "synthetic", runs=60,
                          params={"mean_ms": 1, "std_ms": 0.5}).wait(progress=False)
    assert bench.report["stability"]["unstable"]
    page = RunPage(lab, bench.id)
    try:
        assert 'class="vlab-unstable"' in page.warnings.value
        for reason in bench.report["stability"]["reasons"]:
            assert html.escape(reason) in page.warnings.value
    finally:
        page.close()


def test_the_page_follows_a_run_live_and_cancel_stops_it(lab: Lab, small_onnx: Path) -> None:
    bench = lab.benchmark(small_onnx, "host-cpu", "synthetic", runs=10,
                          params={"min_time_s": 60})
    page = RunPage(lab, bench.id)
    try:
        wait_for(lambda: "vlab-status-running" in page.status.value)
        assert page.cancel.layout.display is None and not page.cancel.disabled
        assert not page.loaded.is_set()
        page.cancel.click()
        wait_for(lambda: "vlab-status-canceled" in page.status.value)  # from its events
        assert page.loaded.wait(60)
        assert page.cancel.layout.display == "none"
        assert "Why it was canceled" in page.reason.value
        assert bench.status == "canceled"
        wait_for(lambda: not page._follower.running)  # the stream ended with the run
    finally:
        page.close()


def test_an_unknown_run_says_so_and_is_not_followed(lab: Lab) -> None:
    page = RunPage(lab, "0000000000000000")
    try:
        assert 'class="vlab-error"' in page.message.value
        assert not page._follower.running and page.info == {}
    finally:
        page.close()
