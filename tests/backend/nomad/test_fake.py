"""The Nomad stand-in is strict where Nomad is: feasibility, blocked evaluations, the Variable
ACL, lost allocations, the per-client connection limit, and the faults it can inject."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.nomad_fake import FakeNomad
from tests.nomad_feasibility import (
    constraint_met,
    feasibility,
    node_from_client_config,
    nodes_from_client_config,
    parse_hcl,
)
from vlab_backend.hosts.sdk import init_host
from vlab_backend.nomad.jobs import benchmark_job

CLIENT_HCL = """
# a client configuration with what `vlab host init` may write
client {
  enabled    = true
  node_pool  = "vlab-targets"
  node_class = "edge"
  meta {
    vlab_targets = "rpi5-0001,rpi5-0002"
    vlab_role    = "full"
  }
  host_volume "vlab-host" {
    path      = "/etc/vlab"
    read_only = true
  }
  reserved {
    memory = 512
  }
}
plugin "docker" {
  config {
    allow_caps = ["chown", "net_admin"]
    volumes { enabled = true }
  }
}
"""


def job_for(uid: str, **task: Any) -> dict[str, Any]:
    job = benchmark_job(benchmark_id=f"b-{uid}", target_type="rpi5", target_uid=uid,
                        engine="tflite", offer={"image": "registry.lab/x:1"}, memory={},
                        api_url="http://api:8765").to_json()
    job["Job"]["TaskGroups"][0]["Tasks"][0].update(task)
    return job


@pytest.fixture
def node() -> dict[str, Any]:
    return node_from_client_config(CLIENT_HCL, "alpha", memory_mb=4096)


def test_nodes_come_from_what_vlab_host_init_writes(tmp_path: Path) -> None:
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"rpi5": [{"target_uid": "rpi5-0001", "engines": {
        "tflite": {"image": "registry.lab/rpi5:1", "supported_types": ["TYPE1"]}}}]}))
    init_host(targets, tmp_path / "beta", name="beta")
    [beta] = nodes_from_client_config({"beta": tmp_path / "beta"})
    assert beta["Name"] == "beta" and beta["NodePool"] == "vlab-targets"
    assert beta["Meta"]["vlab_targets"] == "rpi5-0001" and beta["Meta"]["vlab_host"] == "beta"
    assert feasibility(job_for("rpi5-0001"), beta) is None
    assert feasibility(job_for("rpi5-0009"), beta) == \
        "${meta.vlab_targets} set_contains rpi5-0009"


def test_the_hcl_subset() -> None:
    config = parse_hcl(CLIENT_HCL + '\nname = "x" // trailing\n/* block */ datacenter = "lab"')
    assert config["client"]["host_volume"]["vlab-host"] == {"path": "/etc/vlab",
                                                            "read_only": True}
    assert config["plugin"]["docker"]["config"]["allow_caps"] == ["chown", "net_admin"]
    assert config["datacenter"] == "lab"
    assert parse_hcl('client { meta = { a = "b" } }') == {"client": {"meta": {"a": "b"}}}


def test_constraints_and_interpolation(node: dict[str, Any]) -> None:
    def met(left: str, operand: str, right: str = "") -> bool:
        return constraint_met({"LTarget": left, "RTarget": right, "Operand": operand}, node)

    assert met("${node.unique.name}", "=", "alpha") and not met("${node.unique.name}", "=", "b")
    assert met("${meta.vlab_role}", "!=", "minimal") and met("${meta.nope}", "!=", "x")
    assert met("${node.class}", "==", "edge") and met("${node.pool}", "is", "vlab-targets")
    assert met("${attr.kernel.name}", "regexp", "^lin") and not met("${meta.nope}", "regexp", ".")
    assert met("${meta.vlab_role}", "is_set") and met("${meta.nope}", "is_not_set")
    assert not met("${meta.nope}", "is_set") and not met("${bogus.x}", "is_set")
    assert met("${meta.vlab_targets}", "set_contains", "rpi5-0002,rpi5-0001")
    assert met("${meta.vlab_targets}", "set_contains_any", "x,rpi5-0002")
    assert met("${attr.nomad.version}", "version", ">= 1.8, < 2.0")
    assert met("${attr.cpu.totalcompute}", ">", "900")  # numbers compare as numbers


def test_feasibility_reasons(node: dict[str, Any]) -> None:
    assert feasibility(job_for("rpi5-0001"), node) is None
    job = job_for("rpi5-0001")
    job["Job"]["NodePool"] = "default"
    assert feasibility(job, node) == 'node pool "vlab-targets" is not the job\'s "default"'
    job = job_for("rpi5-0001")
    job["Job"]["TaskGroups"][0]["Volumes"] = {"host": {"Type": "host", "Source": "vlab-host"}}
    assert feasibility(job, node) == "missing compatible host volumes"  # read-only for a writer
    job["Job"]["TaskGroups"][0]["Volumes"]["host"]["ReadOnly"] = True
    assert feasibility(job, node) is None
    job["Job"]["TaskGroups"][0]["Volumes"]["data"] = {"Type": "host", "Source": "vlab-data"}
    assert feasibility(job, node) == "missing compatible host volumes"
    assert feasibility(job_for("rpi5-0001", Driver="raw_exec"), node) == "missing drivers"
    big = job_for("rpi5-0001", Resources={"CPU": 100, "MemoryMB": 4000})
    assert feasibility(big, node) == 'dimension "memory" exhausted'  # 4096 - 512 reserved
    assert feasibility(job_for("rpi5-0001"), node, used_mb=3000) == \
        'dimension "memory" exhausted'
    caps = job_for("rpi5-0001", Config={"image": "x", "cap_add": ["NET_ADMIN", "sys_admin"]})
    assert feasibility(caps, node) == "driver does not allow the following capabilities: " \
                                      "sys_admin"
    assert feasibility(caps, node, driver_checks=False) is None


@pytest.fixture
def nomad(node: dict[str, Any]) -> Iterator[FakeNomad]:
    gamma = node_from_client_config(CLIENT_HCL.replace("rpi5-0001,rpi5-0002", "rpi5-0003"),
                                    "gamma", memory_mb=4096)
    fake = FakeNomad([node, gamma], execute=False).start()
    try:
        yield fake
    finally:
        fake.stop()


def register(nomad: FakeNomad, job: dict[str, Any]) -> str:
    response = httpx.put(f"{nomad.url}/v1/jobs", json=job)
    response.raise_for_status()
    return str(job["Job"]["ID"])


def test_an_unplaceable_job_stays_pending_with_failed_allocs(nomad: FakeNomad) -> None:
    job = job_for("rpi5-0001")
    job["Job"]["TaskGroups"][0]["Volumes"] = {"data": {"Type": "host", "Source": "vlab-data"}}
    job_id = register(nomad, job)
    assert httpx.get(f"{nomad.url}/v1/job/{job_id}").json()["Status"] == "pending"
    evals = httpx.get(f"{nomad.url}/v1/job/{job_id}/evaluations").json()
    [failed] = [e for e in evals if e["FailedTGAllocs"]]
    [metric] = failed["FailedTGAllocs"].values()
    assert metric["ConstraintFiltered"] == {
        "missing compatible host volumes": 1, "${meta.vlab_targets} set_contains rpi5-0001": 1}
    assert metric["NodesEvaluated"] == 2 and metric["NodesFiltered"] == 2
    assert any(e["Status"] == "blocked" for e in evals)
    assert nomad.job_allocs(job_id) == []


def test_a_blocked_job_is_placed_when_memory_frees(nomad: FakeNomad) -> None:
    first = register(nomad, job_for("rpi5-0001", Resources={"CPU": 100, "MemoryMB": 3000}))
    nomad.wait_until(lambda: nomad.running_alloc(first))
    second = register(nomad, job_for("rpi5-0002", Resources={"CPU": 100, "MemoryMB": 3000}))
    evals = httpx.get(f"{nomad.url}/v1/job/{second}/evaluations").json()
    [metric] = next(e for e in evals if e["FailedTGAllocs"])["FailedTGAllocs"].values()
    assert metric["DimensionExhausted"] == {"memory": 1}
    nomad.finish(first)
    assert nomad.wait_until(lambda: nomad.running_alloc(second))["NodeName"] == "alpha"


def test_a_workload_reads_only_its_own_variables(nomad: FakeNomad) -> None:
    template = {"EmbeddedTmpl": '{{ with nomadVar "nomad/jobs/vlab-api" }}T={{ .t }}{{ end }}',
                "DestPath": "secrets/x.env", "Envvars": True}
    job_id = register(nomad, job_for("rpi5-0001", Templates=[template]))
    [alloc] = nomad.wait_until(lambda: [a for a in nomad.job_allocs(job_id)
                                        if a["ClientStatus"] == "failed"])
    [event] = [e for e in alloc["TaskStates"]["pipeline"]["Events"] if e["Type"] == "Killing"]
    assert "nomad.var.block(nomad/jobs/vlab-api@default.global): Permission denied" in \
        event["DisplayMessage"]
    own = register(nomad, job_for("rpi5-0002"))  # its template reads nomad/jobs/<its id>
    assert nomad.wait_until(lambda: nomad.running_alloc(own))


def test_lost_allocations_are_replaced_unless_the_job_forbids_it(nomad: FakeNomad) -> None:
    spread = node_from_client_config(CLIENT_HCL, "beta", memory_mb=4096)
    nomad.nodes["beta"] = spread
    plain = job_for("rpi5-0001")
    del plain["Job"]["TaskGroups"][0]["Disconnect"]
    replaced = register(nomad, plain)
    nomad.wait_until(lambda: nomad.running_alloc(replaced))
    kept = register(nomad, job_for("rpi5-0002"))  # Disconnect.Replace = false
    nomad.wait_until(lambda: nomad.running_alloc(kept))
    nomad.lose_node("alpha")
    replacement = nomad.wait_until(lambda: nomad.running_alloc(replaced))
    assert replacement["NodeName"] == "beta"
    assert sorted(a["ClientStatus"] for a in nomad.job_allocs(replaced)) == ["lost", "running"]
    [alloc] = nomad.job_allocs(kept)
    assert alloc["ClientStatus"] == "unknown"


def test_the_connection_limit_answers_429(node: dict[str, Any]) -> None:
    fake = FakeNomad([node], execute=False, max_conns_per_client=3).start()
    held = [socket.create_connection(("127.0.0.1", fake.port)) for _ in range(3)]
    try:
        fake.wait_until(lambda: fake.max_connections == 3)
        response = httpx.get(f"{fake.url}/v1/nodes")
        assert response.status_code == 429 and fake.refused_429 == 1
    finally:
        for sock in held:
            sock.close()
    assert fake.wait_until(lambda: httpx.get(f"{fake.url}/v1/nodes").status_code == 200)
    fake.stop()


def test_injected_faults(nomad: FakeNomad) -> None:
    nomad.fail_next(2)
    for _ in range(2):
        response = httpx.get(f"{nomad.url}/v1/nodes")
        assert (response.status_code, response.text) == (500, "No cluster leader")
    assert httpx.get(f"{nomad.url}/v1/nodes").status_code == 200
    nomad.drop_next(1)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{nomad.url}/v1/nodes")
    with nomad.outage(), pytest.raises(httpx.TransportError):
        httpx.get(f"{nomad.url}/v1/nodes")
    assert httpx.get(f"{nomad.url}/v1/nodes").status_code == 200


def test_a_system_job_runs_on_every_node_that_can_run_it(nomad: FakeNomad) -> None:
    job = job_for("rpi5-0001")
    job["Job"].update(Type="system", Constraints=[
        {"LTarget": "${node.unique.name}", "RTarget": "^(alpha|beta)$", "Operand": "regexp"}])
    job_id = register(nomad, job)
    nomad.wait_until(lambda: nomad.running_alloc(job_id))
    assert [a["NodeName"] for a in nomad.job_allocs(job_id)] == ["alpha"]  # gamma filtered
    nomad.add_nodes([node_from_client_config(CLIENT_HCL, "beta", memory_mb=4096)])
    nomad.wait_until(lambda: len(nomad.job_allocs(job_id)) == 2)
    assert sorted(a["NodeName"] for a in nomad.job_allocs(job_id)) == ["alpha", "beta"]
