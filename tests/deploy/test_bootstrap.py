"""The README's bootstrap of a three-host cluster, step by step, against the Nomad stand-in
(nodes built from the client configurations `vlab host init` writes, jobs placed by Nomad's
feasibility rules, Variables under Nomad's implicit ACL):

1. alpha: `vlab host init --role services --no-register` (the API does not run yet);
2. the Nomad client on alpha joins; the Variables go in, each job's under its own path;
3. vlab-db, vlab-api, vlab-web and vlab-gateway are placed on alpha; the API starts;
4. alpha registers (with the local administrator's token the API left in its data volume),
   then beta and gamma register; each gets its host-scoped credential;
5. vlab-vpn: each host reconciles its mesh with its own credential;
6. `vlab targets` lists the registered boards with their host; a benchmark on the rpi5 runs
   on alpha; a drained host's targets are not scheduled."""

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
from tests.server import LiveServer, wait_terminal
from vlab_backend.hosts.mesh import public_key_of
from vlab_backend.hosts.sdk import HostFiles, host_token, init_host, register
from vlab_backend.hosts.vpn import sync
from vlab_backend.targets import builtin_targets_dir
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.lab import Lab
from vlab_widgets import TargetBoard

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = ("vlab-db", "vlab-api", "vlab-web", "vlab-gateway")


def job(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "nomad" / f"{name}.json").read_text())
    return data


def alpha_targets(path: Path) -> Path:
    """alpha's Raspberry Pi 5, its engine image standing in for the real one: the stand-in
    runs the pipeline here, on targets/host-cpu."""
    path.write_text(json.dumps({"rpi5": [{"target_uid": "rpi5-0001", "engines": {
        "onnxruntime": {"image": "registry.lab/vlab/rpi5-onnxruntime:1.0.0",
                        "supported_types": ["TYPE1", "TYPE2"],
                        "env": {"VLAB_REPOSITORY": str(builtin_targets_dir() / "host-cpu")}}}}]}))
    return path


@pytest.fixture
def nomad() -> Iterator[FakeNomad]:
    fake = FakeNomad(execute=False).start()
    yield fake
    fake.stop()


def test_a_cluster_bootstraps_from_nothing(nomad: FakeNomad, tmp_path: Path,
                                           small_onnx: Path) -> None:
    etc, var = tmp_path / "etc", tmp_path / "var"
    # 1. The first host: its services role, no registration yet.
    alpha = init_host(alpha_targets(tmp_path / "alpha.json"), etc / "alpha", name="alpha",
                      role="services", data_root=var / "alpha")
    # 2. Its Nomad client joins; the secrets go in, each job's under its own path.
    nomad.nodes.update({n["Name"]: n for n in nodes_from_client_config({"alpha": etc / "alpha"})})
    with httpx.Client(base_url=nomad.url) as api:
        for path, items in (("nomad/jobs/vlab-db", {"password": "db-secret"}),
                            ("nomad/jobs/vlab-api", {"db_password": "db-secret",
                                                     "nomad_token": "t", "public_url": "u"}),
                            ("nomad/jobs/vlab-web", {"api_token": "a", "jupyter_token": "j"})):
            assert api.put(f"/v1/var/{path}", json={"Path": path, "Items": items}
                           ).status_code == 200
        # 3. The services are placed on alpha and start (no template refused by the ACL).
        for name in SERVICES:
            answer = api.put("/v1/jobs", json=job(name))
            assert answer.status_code == 200, answer.text
        for name in SERVICES:
            allocs = nomad.wait_until(lambda n=name: [  # type: ignore[misc]
                a for a in nomad.job_allocs(n) if a["ClientStatus"] != "pending"])
            assert [(a["NodeName"], a["ClientStatus"]) for a in allocs] == \
                [("alpha", "running")], (name, allocs)
    # The API's data dir is the vlab-data host volume alpha's init created.
    assert alpha.volumes["vlab-data"] == (var / "alpha" / "data").resolve()
    server = LiveServer(alpha.volumes["vlab-data"], ["--runner", "nomad"],
                        env={"NOMAD_ADDR": nomad.url, "VLAB_WARM_WORKERS": "0",
                             "VLAB_NOMAD_NODE_POLL_S": "0.2"})
    server.extra_env["VLAB_PUBLIC_URL"] = server.url
    server.start()
    try:
        run_the_rest(server, nomad, alpha, etc, var, tmp_path, small_onnx)
    finally:
        server.stop()


def run_the_rest(server: LiveServer, nomad: FakeNomad, alpha: HostFiles, etc: Path, var: Path,
                 tmp_path: Path, small_onnx: Path) -> None:
    # On a cluster, the API container's own cores are no target.
    assert json.loads(server.cli("targets", "--json").stdout) == []
    # 4. alpha registers with the administrator's token the API left in its data volume;
    #    then the other hosts join Nomad and register.
    admin = (alpha.volumes["vlab-data"] / "local-admin.token").read_text().strip()
    hosts = {"alpha": alpha}
    for name, role in (("beta", "targets"), ("gamma", "targets")):
        hosts[name] = init_host(DEPLOY / "examples" / f"host-{name}-targets.json", etc / name,
                                name=name, role=role, data_root=var / name)
        nomad.nodes.update({n["Name"]: n for n in nodes_from_client_config({name: etc / name})})
    with server.client(admin) as client:
        for name, files in hosts.items():
            answer = register(client, files, etc / name, endpoint=f"{name}.lab:51820")
            assert answer["host_token"] == host_token(etc / name)
    # 5. The VPN: each host reads the mesh with its own credential and writes its config.
    with httpx.Client(base_url=nomad.url) as api:
        assert api.put("/v1/jobs", json=job("vlab-vpn")).status_code == 200
    for name in hosts:
        with server.client(host_token(etc / name)) as own:
            peers = own.get("/api/hosts").json()
            assert own.get("/api/targets/overview").status_code == 401  # nothing else
        result = sync(peers, name, etc / name / "wireguard" / "private.key",
                      tmp_path / f"{name}.conf")
        assert result.peers == sorted(set(hosts) - {name})
        private = (etc / name / "wireguard" / "private.key").read_text().strip()
        assert public_key_of(private) == hosts[name].public_key
    # 6. The registered boards, with their host; a benchmark on the rpi5 runs on alpha.
    listed = {i["target_uid"]: i for t in json.loads(server.cli("targets", "--json").stdout)
              for i in t["instances"]}
    assert {uid: (i["host"], i["state"]) for uid, i in listed.items()} == {
        "rpi5-0001": ("alpha", "free"), "jetson-orin-0001": ("beta", "free"),
        "host-cpu-gamma-0": ("gamma", "free")}
    # The widgets show them too: the target board lists each board with its host.
    with VlabClient(Connection(server.url, admin)) as lab_client:
        board = TargetBoard(Lab(lab_client), live=False)
        for uid, host in (("rpi5-0001", "alpha"), ("jetson-orin-0001", "beta")):
            assert f"<td>{uid}</td><td>{host}</td>" in board.table.value
    nomad.execute = True
    with server.client(admin) as client:
        answer = submit(client, small_onnx, device="rpi5", nb_inference="5")
        assert answer.status_code in (200, 201), answer.text
        bench_id = answer.json()["id"]
        final = wait_terminal(client, bench_id)
        assert final["status"] == "success", final
        assert [a["NodeName"] for a in nomad.job_allocs(f"vlab-bench-{bench_id}")] == ["alpha"]
        # Draining alpha's node: the server follows Nomad's node list, lists its board as
        # draining and schedules nothing there.
        nomad.drain_node("alpha")
        server.wait_for_log("host alpha is now draining")
        assert instance_states(server)["rpi5-0001"] == "draining"
        refused = submit(client, small_onnx, device="rpi5", nb_inference="5")
        assert refused.status_code == 404 and "rpi5" in refused.json()["error"]
    # Undrained, it is scheduled again.
    nomad.drain_node("alpha", drain=False)
    server.wait_for_log("host alpha is now ready")
    assert instance_states(server)["rpi5-0001"] == "free"


def instance_states(server: LiveServer) -> dict[str, str]:
    """Each instance's state as `vlab targets` lists it."""
    return {i["target_uid"]: i["state"]
            for t in json.loads(server.cli("targets", "--json").stdout) for i in t["instances"]}
