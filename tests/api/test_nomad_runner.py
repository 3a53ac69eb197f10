"""The Nomad runner end to end against an HTTP stand-in for Nomad that runs the task locally."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_benchmarks_api import submit
from tests.nomad_fake import FakeNomad
from tests.server import LiveServer, wait_status, wait_terminal
from vlab_backend.nomad.models import JobRegisterRequest
from vlab_backend.targets import builtin_targets_dir

pytestmark = pytest.mark.slow


def offer(mode: str = "") -> dict[str, Any]:
    env = {"VLAB_REPOSITORY": str(builtin_targets_dir() / "host-cpu")}
    if mode:
        env["FAKE_NOMAD"] = mode
    return {"image": "registry.lab/vlab-host-cpu:1", "supported_types": ["TYPE1", "TYPE2"],
            "env": env}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LiveServer, FakeNomad]]:
    nomad = FakeNomad().start()
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({
        "rpi5": [{"target_uid": "rpi5-0001", "memory": {"ram": 4 << 30},
                  "engines": {"onnxruntime": offer()}}],
        "broken": [{"target_uid": "broken-0001", "engines": {"onnxruntime":
                                                             offer("driver_failure")}}],
        "flaky": [{"target_uid": "flaky-0001", "engines": {"onnxruntime": offer("lost")}}]}))
    server = LiveServer(tmp_path / "data", ["--runner", "nomad", "--targets", str(targets)],
                        env={"NOMAD_ADDR": nomad.url})
    server.extra_env["VLAB_PUBLIC_URL"] = server.url
    server.start()
    try:
        yield server, nomad
    finally:
        server.stop()
        nomad.stop()


def test_a_benchmark_runs_as_a_nomad_job(cluster: tuple[LiveServer, FakeNomad],
                                         small_onnx: Path) -> None:
    server, nomad = cluster
    with server.client() as client:
        bench_id = submit(client, small_onnx, device="rpi5", nb_inference="7").json()["id"]
        final = wait_terminal(client, bench_id)
        assert final["status"] == "success", final
        report = client.get(f"/api/benchmarks/{bench_id}/results").json()
        assert report["nb_inference"] == 7 and report["target_id"] == "rpi5-0001"
        assert "7 inferences" in client.get(f"/api/benchmarks/{bench_id}/user-log").text
    job_id = f"vlab-bench-{bench_id}"
    job = nomad.jobs[job_id]
    JobRegisterRequest.model_validate({"Job": {k: v for k, v in job.items() if k != "Status"}})
    assert job["Constraints"][0]["RTarget"] == "rpi5-0001"
    assert ("PUT", "/v1/validate/job") in nomad.requests  # validated before registering
    assert nomad.requests.index(("PUT", "/v1/validate/job")) < \
        nomad.requests.index(("PUT", "/v1/jobs"))
    # No secret in the job; the credential was a Nomad Variable, now deleted and revoked.
    text = json.dumps(job)
    assert "vlabjob_" not in text and server.token not in text
    assert f"nomad/jobs/{job_id}" not in nomad.variables


def test_job_credentials_are_scoped_and_short_lived(cluster: tuple[LiveServer, FakeNomad],
                                                    small_onnx: Path) -> None:
    server, nomad = cluster
    with server.client() as client:
        first = submit(client, small_onnx, device="rpi5", nb_inference="5",
                       parameters={"min_time_s": 3}).json()["id"]
        wait_status(client, first, "running")
        token = nomad.variables[f"nomad/jobs/vlab-bench-{first}"]["token"]
        as_job = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
        assert as_job.get(f"/api/jobs/{first}/spec").json()["target_uid"] == "rpi5-0001"
        assert as_job.get("/api/jobs/someone-else/spec").status_code == 403
        assert as_job.get("/api/benchmarks").status_code == 401  # not a user credential
        assert wait_terminal(client, first)["status"] == "success"
        assert as_job.get(f"/api/jobs/{first}/spec").status_code == 401  # revoked
        assert httpx.get(f"{server.url}/api/jobs/{first}/spec").status_code == 401


def test_failures_lost_nodes_and_cancel(cluster: tuple[LiveServer, FakeNomad],
                                        small_onnx: Path) -> None:
    server, nomad = cluster
    with server.client() as client:
        broken = submit(client, small_onnx, device="broken").json()["id"]
        flaky = submit(client, small_onnx, device="flaky", nb_inference="5",
                       parameters={"min_time_s": 30}).json()["id"]
        slow = submit(client, small_onnx, device="rpi5", nb_inference="5",
                      parameters={"min_time_s": 60}).json()["id"]
        final = wait_terminal(client, broken)
        assert final["status"] == "failed"
        assert final["message"] == ("Driver Failure: failed to pull image "
                                    "registry.lab/vlab-host-cpu:1")
        assert "failed to pull image" in client.get(f"/api/benchmarks/{broken}/error-log").text
        final = wait_terminal(client, flaky)
        assert final["status"] == "failed"
        assert "allocation lost" in final["message"]
        wait_status(client, slow, "running")
        assert client.post(f"/api/benchmarks/{slow}/cancel").json()["status"] == "canceled"
        assert wait_terminal(client, slow)["status"] == "canceled"
    assert ("DELETE", f"/v1/job/vlab-bench-{slow}") in nomad.requests
