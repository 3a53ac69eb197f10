"""Warm workers: harness runs forked from a process per instance with the engines imported."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.api.test_benchmarks_api import submit
from tests.api.test_job_isolation import namespaces_available
from tests.server import LiveServer, wait_status, wait_terminal
from vlab_backend.jobdir import JobDir
from vlab_backend.runners.local import ProcessRef

pytestmark = pytest.mark.slow


@pytest.fixture
def warm_server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "data").start()  # warm workers are the default
    live.wait_for_warm_workers()
    yield live
    live.stop()


def test_runs_are_fresh_forks_of_a_warm_worker(warm_server: LiveServer,
                                               small_onnx: Path) -> None:
    with warm_server.client() as client:
        reports = []
        for _ in range(2):
            bench_id = submit(client, small_onnx, nb_inference="5",
                              target_uids=["host-cpu-0"]).json()["id"]
            assert wait_terminal(client, bench_id)["status"] == "success"
            reports.append(client.get(f"/api/benchmarks/{bench_id}/results").json())
    assert all(r["worker"]["warm"] for r in reports)
    # One process per run: nothing a run leaves in memory reaches the next. Each run is a
    # process of its job's own PID namespace where there are namespaces (the same small pid
    # in each), else a process of this machine's.
    pids = [r["worker"]["pid"] for r in reports]
    if namespaces_available():
        assert pids[0] == pids[1] < 100
    else:
        assert pids[0] != pids[1]
    assert reports[0]["cpuset"] == reports[1]["cpuset"] == [0]


def start_long_run(server: LiveServer, model: Path, uid: str, seconds: float) -> str:
    with server.client() as client:
        bench_id = str(submit(client, model, nb_inference="5", target_uids=[uid],
                              parameters={"min_time_s": seconds}).json()["id"])
        wait_status(client, bench_id, "running")
    return bench_id


def test_cancel_stops_a_warm_run(warm_server: LiveServer, small_onnx: Path) -> None:
    bench_id = start_long_run(warm_server, small_onnx, "host-cpu-1", 60)
    # Both the pipeline and the harness are forks of the instance's worker.
    ref = JobDir(warm_server.data_dir / "jobs" / bench_id).recorded_reference()
    assert ref is not None
    pipeline_pid = ProcessRef.parse(ref).pid
    pipeline = psutil.Process(pipeline_pid)
    worker = pipeline.parent()
    assert worker is not None and "vlab_backend.runners.warm" in worker.cmdline()
    with warm_server.client() as client:
        deadline = time.monotonic() + 30
        harness: list[psutil.Process] = []
        while not harness and time.monotonic() < deadline:
            harness = [c for c in worker.children() if c.pid != pipeline_pid]
            time.sleep(0.2)
        assert harness, "no warm harness process found"
        client.post(f"/api/benchmarks/{bench_id}/cancel")
        assert wait_terminal(client, bench_id, timeout=30)["status"] == "canceled"
        _gone, alive = psutil.wait_procs([pipeline, *harness], timeout=10)
        assert not alive


def test_a_warm_run_survives_a_server_crash(warm_server: LiveServer, small_onnx: Path) -> None:
    bench_id = start_long_run(warm_server, small_onnx, "host-cpu-0", 4)
    warm_server.kill9()
    warm_server.start()
    with warm_server.client() as client:
        final = wait_terminal(client, bench_id)
        assert final["status"] == "success", final
        # Started before or after the crash, warm or not, the run finished once.
        assert client.get(f"/api/benchmarks/{bench_id}/results").json()["nb_inference"] >= 5


def test_a_warm_run_reports_the_peak_memory_of_a_cold_one(warm_server: LiveServer,
                                                          tmp_path: Path,
                                                          squeezenet: Path) -> None:
    """A fork shares the worker's preloaded pages; the report must not count them as the
    model's: peak memory stays within 5 % of what a cold harness reports."""
    cold_server = LiveServer(tmp_path / "cold", ["--no-warm-workers"]).start()
    peaks: dict[bool, int] = {}
    try:
        for server in (warm_server, cold_server):
            with server.client() as client:
                bench_id = submit(client, squeezenet, nb_inference="5",
                                  target_uids=["host-cpu-0"]).json()["id"]
                assert wait_terminal(client, bench_id)["status"] == "success"
                report = client.get(f"/api/benchmarks/{bench_id}/results").json()
            peaks[report["worker"]["warm"]] = report["peak_memory_bytes"]
    finally:
        cold_server.stop()
    assert set(peaks) == {True, False}
    assert abs(peaks[True] - peaks[False]) <= 0.05 * peaks[False], peaks
