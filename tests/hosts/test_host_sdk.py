"""`vlab host init` and `vlab vpn sync` on the example files: a three-host mesh, then a
removed host."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from tests.server import LiveServer
from vlab_backend.hosts.mesh import public_key_of
from vlab_backend.hosts.sdk import init_host
from vlab_backend.targets import TargetConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
HOSTS = {"alpha": "alpha.lab:51820", "beta": "beta.lab:51820", "gamma": ""}


def test_init_writes_the_nomad_client_config_and_keys(tmp_path: Path) -> None:
    files = init_host(EXAMPLES / "host-gamma-targets.json", tmp_path, minimal=True,
                      name="gamma")
    hcl = (tmp_path / "nomad-client.hcl").read_text()
    assert 'node_pool = "vlab-targets"' in hcl
    assert 'vlab_targets = "host-cpu-gamma-0"' in hcl and 'vlab_role    = "minimal"' in hcl
    private = tmp_path / "wireguard" / "private.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public_key_of(private.read_text().strip()) == files.public_key
    # Running it again keeps the identity.
    assert init_host(EXAMPLES / "host-gamma-targets.json", tmp_path, name="gamma"
                     ).public_key == files.public_key


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


def peers_of(config: str) -> dict[str, str]:
    """Peer name -> AllowedIPs address, from a rendered WireGuard config."""
    return dict(re.findall(r"# (\S+)\n\[Peer\]\nPublicKey = \S+\n(?:Endpoint = \S+\n)?"
                           r"AllowedIPs = ([\d.]+)/32", config))


def test_three_host_mesh_and_a_removed_host(server: LiveServer, tmp_path: Path) -> None:
    addresses = {}
    for name, endpoint in HOSTS.items():
        done = server.cli("host", "init", "--targets", str(EXAMPLES / f"host-{name}-targets.json"),
                          "--out", str(tmp_path / name), "--name", name,
                          "--endpoint", endpoint, *(["--minimal"] if name == "gamma" else []))
        assert done.returncode == 0, done.stderr
        addresses[name] = (tmp_path / name / "wireguard" / "address").read_text().strip()
    assert len(set(addresses.values())) == 3  # no collisions
    assert all(a.startswith("10.77.") for a in addresses.values())
    for name in HOSTS:
        done = server.cli("vpn", "sync", "--host-dir", str(tmp_path / name), "--name", name)
        assert done.returncode == 0, done.stderr
        assert "updated: 2 peer(s)" in done.stdout
        config = (tmp_path / name / "wireguard" / "wg-vlab.conf").read_text()
        assert f"Address = {addresses[name]}/16" in config
        assert peers_of(config) == {n: a for n, a in addresses.items() if n != name}
        assert "Endpoint = alpha.lab:51820" in config or name == "alpha"
    # Idempotent: nothing changed, nothing rewritten.
    again = server.cli("vpn", "sync", "--host-dir", str(tmp_path / "alpha"), "--name", "alpha")
    assert "unchanged: 2 peer(s)" in again.stdout
    # Remove beta: it disappears from every peer's config at the next sync.
    with server.client() as client:
        assert client.delete("/api/hosts/beta").json()["deleted"] is True
    for name in ("alpha", "gamma"):
        done = server.cli("vpn", "sync", "--host-dir", str(tmp_path / name), "--name", name)
        assert "updated: 1 peer(s)" in done.stdout
        assert "beta" not in peers_of((tmp_path / name / "wireguard" / "wg-vlab.conf"
                                       ).read_text())
    # Registering again keeps the address.
    done = server.cli("host", "init", "--targets", str(EXAMPLES / "host-alpha-targets.json"),
                      "--out", str(tmp_path / "alpha"), "--name", "alpha")
    assert addresses["alpha"] in done.stdout


def test_sync_errors_are_one_line(server: LiveServer, tmp_path: Path) -> None:
    done = server.cli("vpn", "sync", "--host-dir", str(tmp_path), "--name", "nobody")
    assert done.returncode == 1
    assert "host nobody is not registered" in done.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"rpi5": [{"target_uid": "x", "engines": {"t": {"repository": "/r"}}}]}')
    done = server.cli("host", "init", "--targets", str(bad), "--out", str(tmp_path / "o"))
    assert done.returncode == 1 and "has no 'image'" in done.stderr
