"""The Nomad runner end to end against an HTTP stand-in for Nomad that runs the task locally,
on nodes built from the client configuration `vlab host init` writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_benchmarks_api import submit
from tests.nomad_fake import FakeNomad
from tests.nomad_feasibility import nodes_from_client_config
from tests.server import LiveServer, wait_status, wait_terminal
from vlab_backend.hosts.sdk import init_host
from vlab_backend.nomad.models import JobRegisterRequest
from vlab_backend.targets import builtin_targets_dir

pytestmark = pytest.mark.slow

DEADLINE_S = 3  # the server's placement deadline here (VLAB_NOMAD_PLACEMENT_DEADLINE_S)


def offer(mode: str = "") -> dict[str, Any]:
    env = {"VLAB_REPOSITORY": str(builtin_targets_dir() / "host-cpu")}
    if mode:
        env["FAKE_NOMAD"] = mode
    return {"image": "registry.lab/vlab-host-cpu:1", "supported_types": ["TYPE1", "TYPE2"],
            "env": env}


# Host -> the targets it describes (the file `vlab host init --targets` reads).
HOSTS: dict[str, dict[str, Any]] = {
    "alpha": {"rpi5": [{"target_uid": "rpi5-0001", "memory": {"ram": 4 << 30},
                        "engines": {"onnxruntime": offer()}}]},
    "beta": {"broken": [{"target_uid": "broken-0001",
                         "engines": {"onnxruntime": offer("driver_failure")}}]},
    "gamma": {"flaky": [{"target_uid": "flaky-0001", "engines": {"onnxruntime": offer()}}]},
}
# An instance no host has joined the cluster with: Nomad cannot place its jobs.
GHOST = {"ghost": [{"target_uid": "ghost-0001", "engines": {"onnxruntime": offer()}}]}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LiveServer, FakeNomad]]:
    configs: dict[str, str | Path] = {}
    for host, targets in HOSTS.items():
        path = tmp_path / f"{host}-targets.json"
        path.write_text(json.dumps(targets))
        init_host(path, tmp_path / host, name=host)
        configs[host] = tmp_path / host
    nomad = FakeNomad(nodes_from_client_config(configs)).start()
    targets_file = tmp_path / "targets.json"
    targets_file.write_text(json.dumps({k: v for targets in [*HOSTS.values(), GHOST]
                                        for k, v in targets.items()}))
    server = LiveServer(tmp_path / "data", ["--runner", "nomad", "--targets", str(targets_file)],
                        env={"NOMAD_ADDR": nomad.url,
                             "VLAB_NOMAD_PLACEMENT_DEADLINE_S": str(DEADLINE_S)})
    server.extra_env["VLAB_PUBLIC_URL"] = server.url
    server.start()
    try:
        yield server, nomad
    finally:
        server.stop()
        nomad.stop()
    log = server.log_path.read_text()
    assert "Task exception was never retrieved" not in log
    assert "Traceback" not in log


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
    [alloc] = nomad.job_allocs(job_id)
    assert alloc["NodeName"] == "alpha"  # the host whose node meta advertises rpi5-0001
    job = alloc["Job"]
    JobRegisterRequest.model_validate({"Job": {k: v for k, v in job.items()
                                               if k not in ("Stop", "SubmitTime")}})
    assert job["Constraints"][0]["RTarget"] == "rpi5-0001"
    assert job["TaskGroups"][0]["Disconnect"]["Replace"] is False
    assert job["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] == 1024  # not RAM / 2
    assert ("POST", "/v1/validate/job") in nomad.requests  # validated before registering
    assert nomad.requests.index(("POST", "/v1/validate/job")) < \
        nomad.requests.index(("POST", "/v1/jobs"))
    # No secret in the job; the credential was a Nomad Variable, now deleted and revoked;
    # the ended job is purged.
    text = json.dumps(job)
    assert "vlabjob_" not in text and server.token not in text
    nomad.wait_until(lambda: job_id in nomad.purged)
    assert f"nomad/jobs/{job_id}" not in nomad.variables


def test_job_credentials_are_scoped_and_short_lived(cluster: tuple[LiveServer, FakeNomad],
                                                    small_onnx: Path) -> None:
    server, nomad = cluster
    with server.client() as client:
        first = submit(client, small_onnx, device="rpi5", nb_inference="5",
                       parameters={"min_time_s": 3}).json()["id"]
        wait_status(client, first, "running")
        token = nomad.wait_until(
            lambda: nomad.variables.get(f"nomad/jobs/vlab-bench-{first}"))["token"]
        as_job = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
        assert as_job.get(f"/api/jobs/{first}/spec").json()["target_uid"] == "rpi5-0001"
        assert as_job.get("/api/jobs/someone-else/spec").status_code == 403
        assert as_job.get("/api/benchmarks").status_code == 401  # not a user credential
        assert wait_terminal(client, first)["status"] == "success"
        assert as_job.get(f"/api/jobs/{first}/spec").status_code == 401  # revoked
        assert httpx.get(f"{server.url}/api/jobs/{first}/spec").status_code == 401


def test_failures_lost_hosts_and_cancel(cluster: tuple[LiveServer, FakeNomad],
                                        small_onnx: Path) -> None:
    server, nomad = cluster
    with server.client() as client:
        broken = submit(client, small_onnx, device="broken").json()["id"]
        flaky = submit(client, small_onnx, device="flaky", nb_inference="5",
                       parameters={"min_time_s": 60}).json()["id"]
        slow = submit(client, small_onnx, device="rpi5", nb_inference="5",
                      parameters={"min_time_s": 60}).json()["id"]
        final = wait_terminal(client, broken)
        assert final["status"] == "failed"
        assert final["message"] == ("Driver Failure: failed to pull image "
                                    "registry.lab/vlab-host-cpu:1")
        assert "failed to pull image" in client.get(f"/api/benchmarks/{broken}/error-log").text
        # The host of `flaky` stops heartbeating: the benchmark fails, nothing runs it again.
        flaky_job = f"vlab-bench-{flaky}"
        nomad.wait_until(lambda: nomad.running_alloc(flaky_job))
        nomad.lose_node("gamma")
        final = wait_terminal(client, flaky)
        assert final["status"] == "failed"
        assert final["message"] == (
            f"the target's host gamma stopped answering Nomad for {DEADLINE_S} s (allocation "
            "unknown); the benchmark was stopped and not run elsewhere")
        nomad.wait_until(lambda: flaky_job in nomad.purged)
        assert [a["ClientStatus"] for a in nomad.job_allocs(flaky_job)] == ["unknown"]
        wait_status(client, slow, "running")
        assert client.post(f"/api/benchmarks/{slow}/cancel").json()["status"] == "canceled"
        assert wait_terminal(client, slow)["status"] == "canceled"
    nomad.wait_until(lambda: f"vlab-bench-{slow}" in nomad.purged)


def test_an_unplaceable_benchmark_fails_with_nomads_reason(
        cluster: tuple[LiveServer, FakeNomad], small_onnx: Path) -> None:
    server, nomad = cluster
    with server.client() as client:
        ghost = submit(client, small_onnx, device="ghost").json()["id"]
        final = wait_terminal(client, ghost)
        assert final["status"] == "failed"
        assert final["message"] == (
            f"not placed within {DEADLINE_S} s: no Nomad node can run it: "
            "${meta.vlab_targets} set_contains ghost-0001 (3 nodes filtered)")
        assert "set_contains ghost-0001" in client.get(
            f"/api/benchmarks/{ghost}/error-log").text
        # The target is free again: the next benchmark for it gets its turn (and fails too).
        again = submit(client, small_onnx, device="ghost").json()["id"]
        assert wait_terminal(client, again)["status"] == "failed"
    assert nomad.job_allocs(f"vlab-bench-{ghost}") == []
    nomad.wait_until(lambda: f"vlab-bench-{ghost}" in nomad.purged)


def test_a_nomad_outage_mid_run_ends_from_the_posted_result(
        cluster: tuple[LiveServer, FakeNomad], small_onnx: Path) -> None:
    server, nomad = cluster
    with server.client() as client:
        first = submit(client, small_onnx, device="rpi5", nb_inference="5",
                       parameters={"min_time_s": 2}).json()["id"]
        second = submit(client, small_onnx, device="rpi5", nb_inference="3").json()["id"]
        wait_status(client, first, "running")
        nomad.wait_until(lambda: nomad.running_alloc(f"vlab-bench-{first}"))
        with nomad.outage():  # from mid-run until the benchmark has ended (~3 s)
            final = wait_terminal(client, first)
            assert final["status"] == "success", final
            assert client.get(f"/api/benchmarks/{second}/status").json()["status"] in (
                "queued", "pending")  # its start waits for Nomad
            resets = nomad.outage_resets
        assert resets > 0  # the server did try Nomad meanwhile (watcher, clean-up, start)
        final = wait_terminal(client, second)  # the target was freed: the next one runs
        assert final["status"] == "success", final
    nomad.wait_until(lambda: f"vlab-bench-{first}" in nomad.purged)
    nomad.wait_until(lambda: f"nomad/jobs/vlab-bench-{first}" not in nomad.variables)


def test_200_concurrent_remote_benchmarks_stay_under_nomads_connection_limit(
        tmp_path: Path, small_onnx: Path) -> None:
    """200 instances on one host, 200 benchmarks at once; each task posts a report at once
    (`FAKE_NOMAD=post`): no 429 from Nomad's 100-connection limit, no Nomad error."""
    count = 200
    uids = [f"many-{i:04d}" for i in range(count)]
    targets_file = tmp_path / "targets.json"
    targets_file.write_text(json.dumps({"many": [
        {"target_uid": uid, "engines": {"onnxruntime": offer("post")}} for uid in uids]}))
    init_host(targets_file, tmp_path / "big", name="big")
    nomad = FakeNomad(nodes_from_client_config({"big": tmp_path / "big"},
                                               memory_mb=1024 * count,
                                               cpu_mhz=1000 * count)).start()
    server = LiveServer(tmp_path / "data", ["--runner", "nomad", "--targets", str(targets_file)],
                        env={"NOMAD_ADDR": nomad.url})
    server.extra_env["VLAB_PUBLIC_URL"] = server.url
    server.start()
    try:
        nomad.released.clear()  # every task waits, running, until all 200 are
        with server.client() as client:
            ids = [submit(client, small_onnx, device="many", nb_inference="1").json()["id"]
                   for _ in range(count)]
        nomad.wait_until(lambda: sum(a["ClientStatus"] == "running"
                                     for a in list(nomad.allocs.values())) == count,
                         timeout=300)
        nomad.released.set()
        with server.client() as client:  # a fresh connection: the idle one may be closing
            finals = [wait_terminal(client, bench_id, timeout=300) for bench_id in ids]
        assert [f["status"] for f in finals] == ["success"] * count, \
            {f["message"] for f in finals}
        assert nomad.refused_429 == 0 and nomad.max_connections <= 9
        nomad.wait_until(lambda: len(nomad.purged) == count, timeout=300)
    finally:
        server.stop()
        nomad.stop()
    log = server.log_path.read_text()
    assert "Nomad" not in log.replace("Nomad runner", "")  # no Nomad error or warning logged
    assert "Task exception was never retrieved" not in log
