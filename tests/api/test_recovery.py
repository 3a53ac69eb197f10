"""A `kill -9` of the server leaves no benchmark behind: each ends in one terminal state."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.api.test_benchmarks_api import submit
from tests.server import LiveServer, wait_status, wait_terminal
from vlab_backend.jobdir import JobDir
from vlab_backend.runners.local import ProcessRef

pytestmark = pytest.mark.slow


def test_restart_adopts_running_jobs_and_runs_waiting_ones(fresh_server: LiveServer,
                                                           small_onnx: Path) -> None:
    server = fresh_server
    with server.client() as client:
        ids = [submit(client, small_onnx, nb_inference="5", parameters={"min_time_s": 4}
                      ).json()["id"] for _ in range(3)]
        wait_status(client, ids[0], "running")
        wait_status(client, ids[1], "running")
        before = {i: client.get(f"/api/benchmarks/{i}").json() for i in ids}
    assert before[ids[2]]["status"] == "pending"
    server.kill9()
    server.start()
    with server.client() as client:
        finals = {i: wait_terminal(client, i) for i in ids}
    assert all(f["status"] == "success" for f in finals.values()), finals
    for bench_id in ids[:2]:
        # Adopted, not restarted: same start time, one report of the requested length.
        assert finals[bench_id]["started_at"] == before[bench_id]["started_at"]
        assert finals[bench_id]["metrics"]["nb_inference"] >= 5


def test_jobs_that_died_with_the_server_end_failed(fresh_server: LiveServer,
                                                   small_onnx: Path) -> None:
    server = fresh_server
    with server.client() as client:
        bench_id = submit(client, small_onnx, nb_inference="5",
                          parameters={"min_time_s": 30}).json()["id"]
        wait_status(client, bench_id, "running")
    ref = JobDir(server.data_dir / "jobs" / bench_id).recorded_reference()
    assert ref is not None
    pipeline_pid = ProcessRef.parse(ref).pid
    server.kill9()
    os.killpg(pipeline_pid, signal.SIGKILL)
    server.start()
    with server.client() as client:
        final = wait_terminal(client, bench_id, timeout=30)
        assert final["status"] == "failed"
        assert final["message"] == "the job's process ended while the server was down"
        # The instance is usable again.
        again = submit(client, small_onnx, nb_inference="3").json()["id"]
        assert wait_terminal(client, again)["status"] == "success"


def test_restart_removes_job_directories_of_ended_benchmarks(fresh_server: LiveServer,
                                                            small_onnx: Path) -> None:
    server = fresh_server
    with server.client() as client:
        bench_id = submit(client, small_onnx, nb_inference="5").json()["id"]
        assert wait_terminal(client, bench_id)["status"] == "success"
    server.kill9()
    # What a stop between a job's end and its clean-up leaves behind (the server is down, so
    # its own clean-up of this directory, which follows the terminal event, cannot race this).
    stale = JobDir(server.data_dir / "jobs" / bench_id)
    stale.out.mkdir(parents=True, exist_ok=True)
    server.start()
    assert not stale.exists()
    with server.client() as client:
        assert client.get(f"/api/benchmarks/{bench_id}").json()["status"] == "success"
