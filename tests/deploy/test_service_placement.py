"""Every service job under deploy/nomad/ can be placed on the nodes `vlab host init`
configures (node pool, constraints, drivers, host volumes, resources, the docker driver's
capabilities), and only where it should run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.nomad_feasibility import feasibility, nodes_from_client_config
from vlab_backend.hosts.sdk import init_host
from vlab_backend.nomad.jobs import benchmark_job

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = ("vlab-api", "vlab-web", "vlab-db", "vlab-gateway")


def job(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "nomad" / f"{name}.json").read_text())
    return data


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The walkthrough's hosts: alpha (services and a Raspberry Pi 5), beta (a Jetson), gamma
    (CPU cores), and `hub`, a services host without boards."""
    root = tmp_path_factory.mktemp("hosts")
    examples = DEPLOY / "examples"
    outs = {}
    for name, targets, role in (("alpha", examples / "host-alpha-targets.json", "services"),
                                ("beta", examples / "host-beta-targets.json", "targets"),
                                ("gamma", examples / "host-gamma-targets.json", "targets"),
                                ("hub", None, "services")):
        outs[name] = root / name
        init_host(targets, outs[name], name=name, role=role, data_root=root / f"{name}-data")
    return {node["Name"]: node for node in nodes_from_client_config(outs)}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_job_runs_on_services_hosts_only(service: str,
                                                   nodes: dict[str, dict[str, Any]]) -> None:
    assert feasibility(job(service), nodes["alpha"]) is None
    assert feasibility(job(service), nodes["hub"]) is None
    for name in ("beta", "gamma"):
        assert feasibility(job(service), nodes[name]) == "${meta.vlab_role} = services"


def test_the_vpn_runs_on_every_node(nodes: dict[str, dict[str, Any]]) -> None:
    """A system job in the `all` pool, with the host volume and NET_ADMIN every host has."""
    for node in nodes.values():
        assert feasibility(job("vlab-vpn"), node) is None, node["Name"]


def test_the_services_fit_together_on_one_host(nodes: dict[str, dict[str, Any]]) -> None:
    """All four services and a benchmark job on alpha at once (Nomad's default node: 8 GiB)."""
    used_mb = used_cpu = 0
    for service in SERVICES:
        assert feasibility(job(service), nodes["alpha"], used_mb=used_mb,
                           used_cpu=used_cpu) is None, service
        for group in job(service)["Job"]["TaskGroups"]:
            used_mb += sum(t["Resources"]["MemoryMB"] for t in group["Tasks"])
            used_cpu += sum(t["Resources"]["CPU"] for t in group["Tasks"])
    bench = benchmark_job(benchmark_id="b1", target_type="rpi5", target_uid="rpi5-0001",
                          engine="tflite", memory={},
                          offer={"image": "registry.lab/vlab/rpi5-tflite:1.0.0"},
                          api_url="http://alpha:8765").model_dump()
    assert feasibility(bench, nodes["alpha"], used_mb=used_mb, used_cpu=used_cpu) is None
    # The benchmark job needs the node pool of target hosts: `hub` has no boards.
    assert feasibility(bench, nodes["hub"]) is not None


def test_without_what_host_init_writes_nothing_is_placed(
        nodes: dict[str, dict[str, Any]]) -> None:
    """The failure the review found, as the check sees it: a node of Nomad's default pool
    without the meta, the volumes or NET_ADMIN."""
    bare = {**nodes["alpha"], "NodePool": "default", "Meta": {}, "HostVolumes": {},
            "PluginConfig": {"docker": {"allow_caps": ["chown"], "allow_privileged": False,
                                        "volumes_enabled": False}}}
    assert feasibility(job("vlab-api"), bare) == "${meta.vlab_role} = services"
    assert feasibility(job("vlab-vpn"), bare) == "missing compatible host volumes"
    with_volume = {**bare, "HostVolumes": nodes["alpha"]["HostVolumes"]}
    assert "capabilities" in (feasibility(job("vlab-vpn"), with_volume) or "")


def test_the_gateway_listens_on_the_lan(nodes: dict[str, dict[str, Any]]) -> None:
    """Nomad binds allocations to the mesh (`network_interface = wg-vlab`); the gateway's
    port is on the services host's `public` host network, where users reach it."""
    gateway = job("vlab-gateway")
    ports = [p for g in gateway["Job"]["TaskGroups"] for n in g["Networks"]
             for p in n["ReservedPorts"]]
    assert [p["HostNetwork"] for p in ports] == ["public"]
    assert set(nodes["alpha"]["HostNetworks"]) == {"public"}
    without_lan = {**nodes["alpha"], "HostNetworks": {}}
    assert feasibility(gateway, without_lan) == 'missing host network "public" for port "https"'
