"""`vlab host init` and `vlab vpn sync` on the example files: a three-host mesh, then a
removed host."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from tests.nomad_feasibility import node_from_client_config
from tests.server import LiveServer
from vlab_backend.hosts.mesh import public_key_of
from vlab_backend.hosts.sdk import init_host
from vlab_backend.targets import TargetConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
HOSTS = {"alpha": "alpha.lab:51820", "beta": "beta.lab:51820", "gamma": ""}


def balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_init_writes_the_nomad_client_config_and_keys(tmp_path: Path) -> None:
    files = init_host(EXAMPLES / "host-gamma-targets.json", tmp_path, minimal=True,
                      name="gamma")
    hcl = (tmp_path / "nomad-client.hcl").read_text()
    assert 'node_pool = "vlab-targets"' in hcl and balanced(hcl)
    assert 'vlab_targets = "host-cpu-gamma-0"' in hcl and 'vlab_role    = "targets"' in hcl
    assert 'vlab_host    = "gamma"' in hcl
    # The Nomad node takes the registered name, whatever the machine's hostname: the lab maps
    # Nomad's node list (status, drains) to hosts by it.
    assert node_from_client_config(hcl, "some-hostname")["Name"] == "gamma"
    # Every host: its own directory as the VPN task's read-only volume, NET_ADMIN allowed.
    assert f'host_volume "vlab-host" {{\n    path      = "{tmp_path.resolve()}"\n    ' \
        'read_only = true' in hcl
    assert '"net_admin"' in hcl and '"vlab-db"' not in hcl
    assert files.role == "targets" and files.target_config["host-cpu"][0]["target_uid"] \
        == "host-cpu-gamma-0"
    private = tmp_path / "wireguard" / "private.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_key_of(private.read_text().strip()) == files.public_key
    # Running it again keeps the identity.
    assert init_host(EXAMPLES / "host-gamma-targets.json", tmp_path, name="gamma"
                     ).public_key == files.public_key


def test_a_services_host_gets_the_services_pool_and_volumes(tmp_path: Path) -> None:
    """`--role services` without targets: node pool vlab-services, the host volumes the
    service jobs mount, their directories created."""
    files = init_host(None, tmp_path / "etc", name="alpha", role="services",
                      data_root=tmp_path / "var")
    hcl = (tmp_path / "etc" / "nomad-client.hcl").read_text()
    assert 'node_pool = "vlab-services"' in hcl and 'vlab_role    = "services"' in hcl
    assert balanced(hcl) and 'vlab_targets = ""' in hcl
    for volume, folder in (("vlab-data", "data"), ("vlab-db", "db"), ("vlab-caddy", "caddy")):
        path = (tmp_path / "var" / folder).resolve()
        assert f'host_volume "{volume}" {{\n    path      = "{path}"\n    read_only = false' \
            in hcl
        assert path.is_dir()
    assert files.targets == [] and files.target_config == {}
    assert not (tmp_path / "etc" / "targets.json").exists()
    # With boards too, it stays in the targets' pool (benchmark jobs run there).
    init_host(EXAMPLES / "host-alpha-targets.json", tmp_path / "etc", name="alpha",
              role="services", data_root=tmp_path / "var")
    hcl = (tmp_path / "etc" / "nomad-client.hcl").read_text()
    assert 'node_pool = "vlab-targets"' in hcl and 'vlab_role    = "services"' in hcl
    assert '"vlab-db"' in hcl and 'vlab_targets = "rpi5-0001"' in hcl
    # A targets host needs its targets; an unknown role is refused.
    with pytest.raises(TargetConfigError, match="needs its target configuration"):
        init_host(None, tmp_path / "t", name="beta", role="targets")
    with pytest.raises(TargetConfigError, match="role must be one of"):
        init_host(None, tmp_path / "t", name="beta", role="full")


@pytest.mark.parametrize(("config", "message"), [
    ({"rpi5": [{"engines": {"tflite": {"image": "x"}}}]}, "missing 'target_uid'"),
    ({"rpi5": [{"target_uid": "rpi5-1"}]}, "missing 'engines'"),
    ({"rpi5": [{"target_uid": "rpi5-1", "engines": {"tflite": {"repository": "/r"}}}]},
     "has no 'image'"),
])
def test_init_refuses_invalid_target_files(tmp_path: Path, config: object,
                                           message: str) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps(config))
    with pytest.raises(TargetConfigError, match=message):
        init_host(path, tmp_path / "out")


PLANNED_PEER = re.compile(r"wg set wg-vlab peer (\S+) (?:endpoint (\S+) )?"
                          r"persistent-keepalive 25 allowed-ips ([\d.]+)/32")


def planned_peers(output: str) -> dict[str, tuple[str, str]]:
    """Public key -> (endpoint, mesh address) of the peers a `--plan` output adds."""
    return {key: (endpoint or "", address)
            for key, endpoint, address in PLANNED_PEER.findall(output)}


def test_three_host_mesh_and_a_removed_host(server: LiveServer, tmp_path: Path) -> None:
    """The mesh as planned (no root here: `--mesh plan`, `vpn sync --plan` print the
    commands; test_mesh_netns.py brings it up for real): each host's interface gets its mesh
    address and one peer per other host, Nomad advertises on the mesh address, and a removed
    host leaves every peer list."""
    addresses, keys = {}, {}
    for name, endpoint in HOSTS.items():
        done = server.cli("host", "init", "--targets", str(EXAMPLES / f"host-{name}-targets.json"),
                          "--out", str(tmp_path / name), "--name", name,
                          "--endpoint", endpoint, *(["--minimal"] if name == "gamma" else []),
                          *(["--role", "services"] if name == "alpha" else []),
                          "--mesh", "plan", VLAB_HOST_DATA_ROOT=str(tmp_path / "volumes"))
        assert done.returncode == 0, done.stderr
        addresses[name] = (tmp_path / name / "wireguard" / "address").read_text().strip()
        keys[name] = (tmp_path / name / "wireguard" / "public.key").read_text().strip()
        assert f"ip address add {addresses[name]}/16 dev wg-vlab" in done.stdout
        assert "ip link set wg-vlab up" in done.stdout
        hcl = (tmp_path / name / "nomad-client.hcl").read_text()
        assert f'bind_addr = "{addresses[name]}"' in hcl and balanced(hcl)
        for kind in ("http", "rpc ", "serf"):
            assert f'{kind} = "{addresses[name]}"' in hcl
        assert 'network_interface = "wg-vlab"' in hcl and f'vlab_host    = "{name}"' in hcl
        # The Nomad servers: the services host (alpha, the first registered) on the mesh.
        assert f'servers           = ["{addresses["alpha"]}:4647"]' in hcl
    assert len(set(addresses.values())) == 3  # no collisions
    assert all(a.startswith("10.77.") for a in addresses.values())
    for name in HOSTS:
        # No --name: the one `host init` registered (not the machine's host name).
        done = server.cli("vpn", "sync", "--host-dir", str(tmp_path / name), "--plan")
        assert done.returncode == 0, done.stderr
        assert "wg-vlab plan:" in done.stdout and "2 peer(s)" in done.stdout
        assert planned_peers(done.stdout) == {
            keys[n]: (HOSTS[n], addresses[n]) for n in HOSTS if n != name}
        assert "private-key " + str(tmp_path / name / "wireguard" / "private.key") \
            in done.stdout
    # Remove beta: it disappears from every peer's plan.
    with server.client() as client:
        assert client.delete("/api/hosts/beta").json()["deleted"] is True
    for name in ("alpha", "gamma"):
        done = server.cli("vpn", "sync", "--host-dir", str(tmp_path / name), "--plan")
        assert "1 peer(s)" in done.stdout and keys["beta"] not in done.stdout
    # Registering again keeps the address.
    done = server.cli("host", "init", "--targets", str(EXAMPLES / "host-alpha-targets.json"),
                      "--out", str(tmp_path / "alpha"), "--name", "alpha", "--mesh", "off",
                      "--role", "services",
                      VLAB_HOST_DATA_ROOT=str(tmp_path / "volumes"))
    assert addresses["alpha"] in done.stdout and "mesh not brought up" in done.stdout


def test_without_registration_nomad_keeps_its_addresses(tmp_path: Path) -> None:
    """A services host bootstrapping (`--no-register`) has no mesh address yet: no
    bind/advertise on the mesh; once a registration left one, they are there."""
    init_host(None, tmp_path, name="alpha", role="services", data_root=tmp_path / "v")
    hcl = (tmp_path / "nomad-client.hcl").read_text()
    assert "bind_addr" not in hcl and "network_interface" not in hcl and balanced(hcl)
    assert (tmp_path / "wireguard" / "name").read_text().strip() == "alpha"
    assert (tmp_path / "wireguard" / "listen-port").read_text().strip() == "51820"
    (tmp_path / "wireguard" / "address").write_text("10.77.0.1\n")
    files = init_host(None, tmp_path, name="alpha", role="services", data_root=tmp_path / "v",
                      listen_port=51999)
    hcl = (tmp_path / "nomad-client.hcl").read_text()
    assert files.mesh_address == "10.77.0.1" and 'bind_addr = "10.77.0.1"' in hcl
    assert (tmp_path / "wireguard" / "listen-port").read_text().strip() == "51999"


def test_sync_errors_are_one_line(server: LiveServer, tmp_path: Path) -> None:
    done = server.cli("vpn", "sync", "--host-dir", str(tmp_path), "--name", "nobody")
    assert done.returncode == 1
    assert "host nobody is not registered" in done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"rpi5": [{"target_uid": "x", "engines": {"t": {"repository": "/r"}}}]}')
    done = server.cli("host", "init", "--targets", str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode == 1 and "has no 'image'" in done.stderr


def test_sync_without_the_api_plans_from_the_last_known_peers(server: LiveServer,
                                                              tmp_path: Path) -> None:
    """At boot the API may be down: the mesh comes up from the peer list of the last sync,
    and the sync exits 1 (it is run again) with a clear line."""
    done = server.cli("host", "init", "--role", "services", "--out", str(tmp_path / "g"),
                      "--name", "boot-host", "--mesh", "off",
                      VLAB_HOST_DATA_ROOT=str(tmp_path / "volumes"))
    assert done.returncode == 0, done.stderr
    with server.client() as client:
        hosts = client.get("/api/hosts").json()
    (tmp_path / "g" / "wireguard" / "peers.json").write_text(json.dumps(hosts))
    down = server.cli("vpn", "sync", "--host-dir", str(tmp_path / "g"), "--plan",
                      VLAB_URL="http://127.0.0.1:1")
    assert down.returncode == 1
    assert "cannot reach the VLab API" in down.stderr
    assert "reconciled with the last known peers" in down.stderr
    assert "wg-vlab plan:" in down.stdout
    assert f"{len(hosts) - 1} peer(s)" in down.stdout
    # Without a last known list, it is the plain connection error.
    (tmp_path / "g" / "wireguard" / "peers.json").unlink()
    down = server.cli("vpn", "sync", "--host-dir", str(tmp_path / "g"), "--plan",
                      VLAB_URL="http://127.0.0.1:1")
    assert down.returncode == 1 and "cannot reach the VLab API" in down.stderr
    assert "last known" not in down.stderr


def test_the_first_host_bootstraps_on_the_first_mesh_address(fresh_server: LiveServer,
                                                             tmp_path: Path) -> None:
    """`--no-register --mesh-address 10.77.0.1`: the mesh and Nomad's addresses before the
    API exists; the registration then confirms the address, or says it differs."""
    alpha = tmp_path / "alpha"
    volumes = str(tmp_path / "volumes")
    done = fresh_server.cli("host", "init", "--role", "services", "--out", str(alpha),
                            "--name", "alpha", "--no-register", "--mesh-address", "10.77.0.1",
                            "--mesh", "plan", VLAB_HOST_DATA_ROOT=volumes)
    assert done.returncode == 0, done.stderr
    assert "ip address add 10.77.0.1/16 dev wg-vlab" in done.stdout
    assert "wg-vlab plan:" in done.stdout and "0 peer(s)" in done.stdout
    assert 'bind_addr = "10.77.0.1"' in (alpha / "nomad-client.hcl").read_text()
    done = fresh_server.cli("host", "init", "--role", "services", "--out", str(alpha),
                            "--name", "alpha", "--mesh-address", "10.77.0.1", "--mesh", "plan",
                            VLAB_HOST_DATA_ROOT=volumes)
    assert done.returncode == 0 and "mesh address 10.77.0.1" in done.stdout, done.stderr
    # Another host cannot have it; a bad address is a usage error.
    done = fresh_server.cli("host", "init", "--role", "services", "--out",
                            str(tmp_path / "beta"), "--name", "beta", "--mesh-address",
                            "10.77.0.1", "--mesh", "plan", VLAB_HOST_DATA_ROOT=volumes)
    assert done.returncode == 1
    assert "gave beta the mesh address 10.77.0.2, not --mesh-address 10.77.0.1" in done.stderr
    for bad in ("10.78.0.1", "10.77.255.255", "alpha"):
        done = fresh_server.cli("host", "init", "--role", "services", "--out",
                                str(tmp_path / "x"), "--no-register", "--mesh-address", bad,
                                VLAB_HOST_DATA_ROOT=volumes)
        assert done.returncode == 1 and "--mesh-address" in done.stderr
