"""`vlab vpn sync` (and the mesh part of `vlab host init`): reconcile this host's LIVE
WireGuard interface with the hosts registered in the shared database.

The peer list comes from the API (`GET /api/hosts`). The interface is read as it is
(`wg show wg-vlab dump`, `ip address`), compared, and only the differences are applied
(`vlab_backend.hosts.wireguard`); a failed command is reported and, since the next sync reads
the interface again, retried then. Peers are identified by their public key; this host is
the entry registered under its `--name` (the `vlab_host` meta of its Nomad node).

The wg-quick configuration and the peer list are also written into the host's directory, as
a record (for `wg-quick`, for a person, and for bringing the mesh up from the last known peers
when the API cannot be reached, e.g. at boot), never as what decides whether to apply.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlab_backend.hosts.mesh import LISTEN_PORT, MESH_NETWORK, Peer, public_key_of, render_config
from vlab_backend.hosts.wireguard import (
    INTERFACE,
    KEEPALIVE,
    Failure,
    InterfaceSpec,
    PeerSpec,
    Step,
    WireGuard,
)

PEERS_FILE = "peers.json"  # the last peer list the API gave, next to the configuration
LISTEN_PORT_FILE = "listen-port"  # written by `vlab host init --listen-port`


@dataclass
class SyncResult:
    """`changed`: the live interface differed from the registered mesh (with no interface
    given: the configuration file changed); `applied`: every difference was applied;
    `failures`: the commands that failed (retried at the next sync); `steps`: the commands
    planned."""

    changed: bool
    peers: list[str]
    applied: bool
    config_path: Path
    steps: list[Step] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def mesh_peers(hosts: list[dict[str, Any]], name: str) -> tuple[dict[str, Any], list[Peer]]:
    """This host's entry (by its registered name) and its peers: every other host."""
    me = next((h for h in hosts if h["name"] == name), None)
    if me is None:
        raise ValueError(f"host {name} is not registered; run `vlab host init` on it")
    return me, [Peer(h["name"], h["public_key"], h.get("endpoint") or "", h["mesh_address"])
                for h in hosts if h["name"] != name]


def interface_spec(me: dict[str, Any], peers: list[Peer], private_key_file: Path,
                   listen_port: int = LISTEN_PORT,
                   interface: str = INTERFACE) -> InterfaceSpec:
    """What the interface should be: this host's key, mesh address and port, and one peer per
    other host (its mesh address as its only allowed IP)."""
    address = ipaddress.ip_interface(f"{me['mesh_address']}/{MESH_NETWORK.prefixlen}")
    return InterfaceSpec(
        private_key_file=private_key_file, address=str(address), listen_port=listen_port,
        interface=interface,
        peers=tuple(PeerSpec(public_key=p.public_key, allowed_ips=(f"{p.mesh_address}/32",),
                             endpoint=p.endpoint, keepalive=KEEPALIVE, name=p.name)
                    for p in peers))


def saved_listen_port(host_dir: Path) -> int:
    """The port `vlab host init` brought the interface up on, else the default."""
    path = host_dir / "wireguard" / LISTEN_PORT_FILE
    text = path.read_text().strip() if path.is_file() else ""
    return int(text) if text.isdigit() else LISTEN_PORT


def last_known_hosts(config_path: Path) -> list[dict[str, Any]] | None:
    """The peer list of the last successful sync, when there is one."""
    path = config_path.parent / PEERS_FILE
    if not path.is_file():
        return None
    hosts: list[dict[str, Any]] = json.loads(path.read_text())
    return hosts


def sync(hosts: list[dict[str, Any]], name: str, private_key_file: Path, config_path: Path,
         interface: str = INTERFACE, *, wireguard: WireGuard | None = None,
         listen_port: int = LISTEN_PORT) -> SyncResult:
    """Reconcile this host's interface with the registered hosts. `wireguard`: the live
    interface to compare and apply to (a dry-run one only plans); None: no interface, only
    the configuration file (then `changed` says whether the file changed)."""
    me, peers = mesh_peers(hosts, name)
    private_key = private_key_file.read_text().strip()
    if public_key_of(private_key) != me["public_key"]:
        raise ValueError(f"{private_key_file} does not match the public key registered for "
                         f"{name}; run `vlab host init` again")
    names = sorted(p.name for p in peers)
    text = render_config(private_key, me["mesh_address"], peers, listen_port=listen_port)
    file_changed = not config_path.is_file() or config_path.read_text() != text
    if wireguard is None:
        if file_changed:
            _write_private(config_path, text)
        return SyncResult(file_changed, names, False, config_path)
    spec = interface_spec(me, peers, private_key_file, listen_port, interface)
    done = wireguard.reconcile(spec)
    if not done.dry_run:
        # A record of what was applied (even partly: the live interface decides next time).
        _write_private(config_path, text)
        _write_private(config_path.parent / PEERS_FILE, json.dumps(hosts, indent=1) + "\n")
    return SyncResult(changed=done.changed, peers=names, applied=not done.dry_run and done.ok,
                      config_path=config_path, steps=done.steps, failures=done.failures,
                      dry_run=done.dry_run, notes=done.notes)
