"""`vlab host init`: from a dAIEdge target configuration, the files a host needs to join the
cluster (the Nomad client configuration, the target configuration, a WireGuard key pair), and
its registration with the API (the whole target configuration, which becomes its target
instances; the answer's host-scoped credential is kept in `<out>/host.token`).

Roles: a `targets` host runs benchmark jobs on its boards (node pool `vlab-targets`); a
`services` host also runs the service jobs (API, web, DB, gateway), which select it by its
`vlab_role` meta, and gets the host volumes they need. A services host without targets is in
node pool `vlab-services`. Every host gets the `vlab-host` volume (this directory, read-only)
that the VPN task reads its key and credential from, and Docker's `net_admin` capability that
the VPN task needs.

The mesh: once registered, `vlab host init` brings the host's WireGuard interface `wg-vlab`
up (`vlab_backend.hosts.vpn`, `vlab_backend.hosts.wireguard`) before Nomad starts, and the
Nomad configuration it writes binds and advertises HTTP, RPC and Serf on the host's mesh
address, with `wg-vlab` as the client's network interface: allocations' addresses, and so the
services' addresses in Nomad's service discovery, are mesh addresses, and all cluster traffic
goes through the mesh.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlab_backend.hosts.mesh import LISTEN_PORT, generate_keypair
from vlab_backend.hosts.registry import NODE_HOST_META, ROLES, check_for_cluster
from vlab_backend.hosts.wireguard import INTERFACE
from vlab_backend.nomad.jobs import NODE_POOL, TARGETS_META
from vlab_backend.targets import InstanceConfig, TargetConfigError, load_target_config

__all__ = ["HostFiles", "check_for_cluster", "host_token", "init_host", "mesh_address",
           "nomad_client_config", "register", "registration_body", "save_registration",
           "write_client_config"]

SERVICES_POOL = "vlab-services"
# The LAN side of a services host, for the gateway's port: users (and hosts not registered
# yet, which have no mesh) reach the lab through it, while Nomad, the services and the
# benchmark jobs talk over the mesh.
PUBLIC_NETWORK = "public"
DATA_ROOT = Path("/var/lib/vlab")  # default root of the service volumes ($VLAB_HOST_DATA_ROOT)
HOST_VOLUME = "vlab-host"  # this directory, read-only: the VPN task's key and credential
# The service jobs' host volumes under the data root (deploy/nomad/vlab-{api,db,gateway}.json).
SERVICE_VOLUMES = {"vlab-data": "data", "vlab-db": "db", "vlab-caddy": "caddy"}
HOST_TOKEN_FILE = "host.token"
ADDRESS_FILE = "address"  # under wireguard/: the mesh address the API gave
LISTEN_PORT_FILE = "listen-port"  # under wireguard/: the port wg-vlab listens on
NAME_FILE = "name"  # under wireguard/: the registered name (`vlab vpn sync`'s default)
# Nomad's Docker driver allows these capabilities by default (drivers/docker/config.go); the
# VPN task adds NET_ADMIN to manage the WireGuard interface.
DOCKER_DEFAULT_CAPS = ("audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
                       "mknod", "net_bind_service", "setfcap", "setgid", "setpcap", "setuid",
                       "sys_chroot")
DOCKER_CAPS = (*DOCKER_DEFAULT_CAPS, "net_admin")


@dataclass
class HostFiles:
    name: str
    public_key: str
    targets: list[str]
    written: list[Path]
    role: str = "targets"
    target_config: dict[str, Any] = field(default_factory=dict)
    volumes: dict[str, Path] = field(default_factory=dict)
    listen_port: int = LISTEN_PORT
    mesh_address: str | None = None  # known once registered
    servers: list[str] = field(default_factory=list)  # Nomad servers' mesh addresses


def resolve_role(role: str | None, minimal: bool) -> str:
    """The host's role: the one given, else (older command lines) `targets` for a minimal
    host and `services` for a full one."""
    if role is None:
        return "targets" if minimal else "services"
    if role not in ROLES:
        raise TargetConfigError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def host_volumes(role: str, out_dir: Path, data_root: Path) -> dict[str, Path]:
    """The Nomad host volumes of a host of this role: name -> path."""
    volumes = {HOST_VOLUME: out_dir.resolve()}
    if role == "services":
        volumes.update({name: (data_root / sub).resolve()
                        for name, sub in SERVICE_VOLUMES.items()})
    return volumes


def _hcl_string(value: str) -> str:
    return json.dumps(value)  # an HCL string literal is a JSON one for what we write


def mesh_agent_config(mesh_address: str | None) -> str:
    """The agent's addresses: on the mesh once the host has a mesh address (bind and
    advertise HTTP, RPC and Serf there, so servers and clients talk through wg-vlab); before
    that (a services host bootstrapping without registration), Nomad's defaults and a note."""
    if not mesh_address:
        return ("# Not registered yet: no mesh address, so Nomad uses its default addresses.\n"
                "# Run `vlab host init` again once the API runs; it adds them here.\n")
    address = _hcl_string(mesh_address)
    return f"""# Nomad talks over the WireGuard mesh ({INTERFACE}, brought up by `vlab host init`):
# it listens and advertises on this host's mesh address only. Start Nomad after {INTERFACE}
# is up; the local CLI then needs NOMAD_ADDR=http://{mesh_address}:4646.
bind_addr = {address}

advertise {{
  http = {address}
  rpc  = {address}
  serf = {address}
}}
"""


def public_interface() -> str:
    """The interface of this host's default route (`VLAB_PUBLIC_INTERFACE` wins), else
    `eth0`: where the gateway listens for users."""
    explicit = os.environ.get("VLAB_PUBLIC_INTERFACE")
    if explicit:
        return explicit
    try:
        routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "default"],
                                           capture_output=True, text=True, timeout=5,
                                           check=True).stdout or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        routes = []
    return next((str(r["dev"]) for r in routes if isinstance(r, dict) and r.get("dev")),
                "eth0")


def nomad_client_config(name: str, targets: list[str], minimal: bool = False,
                        role: str | None = None,
                        volumes: dict[str, Path] | None = None,
                        mesh_address: str | None = None,
                        servers: list[str] | None = None) -> str:
    """HCL for the Nomad agent of this host: its addresses on the mesh (once it has a mesh
    address) and the client: node pool, network interface (wg-vlab), meta (the target
    instances, the host's registered name, read by vlab-vpn as `${meta.vlab_host}`, and its
    role), host volumes, and the Docker plugin's settings. `servers`: the Nomad servers to
    join, on the mesh (`nomad_servers`)."""
    role = resolve_role(role, minimal)
    pool = SERVICES_POOL if role == "services" and not targets else NODE_POOL
    read_only = {HOST_VOLUME}
    volume_blocks = "".join(
        f"""
  host_volume {_hcl_string(volume)} {{
    path      = {_hcl_string(str(path))}
    read_only = {"true" if volume in read_only else "false"}
  }}
""" for volume, path in sorted((volumes or {}).items()))
    caps = ", ".join(_hcl_string(cap) for cap in DOCKER_CAPS)
    # Allocations' addresses (and the services' addresses in service discovery) on the mesh.
    network = (f"  network_interface = {_hcl_string(INTERFACE)}\n" if mesh_address else "")
    if servers:
        network += f"  servers           = [{', '.join(map(_hcl_string, servers))}]\n"
    if role == "services":
        network += (f"  host_network {_hcl_string(PUBLIC_NETWORK)} {{\n"
                    f"    interface = {_hcl_string(public_interface())}\n  }}\n")
    return f"""# Nomad client configuration written by `vlab host init` for {name} (role {role}).
# Include it in the client's configuration (e.g. copy it into /etc/nomad.d/).
# The node is named as the host registered, so that the lab maps Nomad's node list (node
# status, drains) to this host whatever its hostname.
name = {_hcl_string(name)}
{mesh_agent_config(mesh_address)}
client {{
  enabled   = true
  node_pool = "{pool}"
{network}
  meta {{
    {TARGETS_META} = {_hcl_string(','.join(targets))}
    {NODE_HOST_META}    = {_hcl_string(name)}
    vlab_role    = "{role}"
  }}
{volume_blocks}}}

plugin "docker" {{
  config {{
    allow_privileged = false
    # Nomad's default capabilities, plus net_admin for the VPN task (vlab-vpn).
    allow_caps = [{caps}]
    volumes {{
      enabled = true
    }}
  }}
}}
"""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # an existing file keeps its mode in os.open


def registered_name(out_dir: Path) -> str | None:
    """The name `vlab host init` wrote into `out_dir` (the node meta `vlab_host`)."""
    path = out_dir / "wireguard" / NAME_FILE
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def nomad_servers(hosts: list[dict[str, Any]]) -> list[str]:
    """The Nomad servers' addresses on the mesh: the services hosts' (`minimal` false in the
    API's peer list), RPC port 4647."""
    return sorted(f"{h['mesh_address']}:4647" for h in hosts if not h.get("minimal", True))


def mesh_address(out_dir: Path) -> str | None:
    """The mesh address a registration left in `out_dir`, if any."""
    path = out_dir / "wireguard" / ADDRESS_FILE
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def write_client_config(files: HostFiles, out_dir: Path) -> Path:
    """(Re)write `nomad-client.hcl` for these files (on the mesh once `files.mesh_address`
    is known)."""
    path = out_dir / "nomad-client.hcl"
    path.write_text(nomad_client_config(files.name, files.targets, role=files.role,
                                        volumes=files.volumes,
                                        mesh_address=files.mesh_address,
                                        servers=files.servers))
    return path


def init_host(targets_file: Path | None, out_dir: Path, minimal: bool = False,
              name: str | None = None, role: str | None = None,
              data_root: Path | None = None, listen_port: int = LISTEN_PORT) -> HostFiles:
    """Validate the target configuration and write the host's files into `out_dir`, and
    create the directories of its host volumes. An existing key pair is kept, so that
    running it again does not change the host's identity (only the public key is ever
    sent; the private key stays in `wireguard/private.key`, mode 0600). A services host may
    have no target configuration; a targets host needs one. `data_root`: where the service
    volumes live (default $VLAB_HOST_DATA_ROOT, else /var/lib/vlab). `listen_port`: the
    port wg-vlab listens on (kept in `wireguard/listen-port` for `vlab vpn sync`). The Nomad
    configuration is on the mesh when a previous registration left the mesh address."""
    role = resolve_role(role, minimal)
    data_root = data_root or Path(os.environ.get("VLAB_HOST_DATA_ROOT") or DATA_ROOT)
    instances: list[InstanceConfig] = []
    config: dict[str, Any] = {}
    if targets_file is not None:
        instances = load_target_config(targets_file)
        check_for_cluster(instances)
        config = json.loads(targets_file.read_text())
    elif role != "services":
        raise TargetConfigError("a targets host needs its target configuration (--targets "
                                "FILE); only a services host may have none")
    name = name or socket.gethostname()
    uids = [i.uid for i in instances]
    out_dir.mkdir(parents=True, exist_ok=True)
    wireguard = out_dir / "wireguard"
    wireguard.mkdir(exist_ok=True, mode=0o700)
    private_path, public_path = wireguard / "private.key", wireguard / "public.key"
    if private_path.is_file() and public_path.is_file():
        public_key = public_path.read_text().strip()
    else:
        private_key, public_key = generate_keypair()
        _write_private(private_path, private_key + "\n")
        public_path.write_text(public_key + "\n")
    port_path = wireguard / LISTEN_PORT_FILE
    port_path.write_text(f"{listen_port}\n")
    (wireguard / NAME_FILE).write_text(name + "\n")
    volumes = host_volumes(role, out_dir, data_root)
    for path in volumes.values():  # a Nomad client does not start with a volume missing
        with contextlib.suppress(OSError):  # not root: the walkthrough says to create them
            path.mkdir(parents=True, exist_ok=True)
    files = HostFiles(name=name, public_key=public_key, targets=uids, written=[],
                      role=role, target_config=config, volumes=volumes,
                      listen_port=listen_port, mesh_address=mesh_address(out_dir))
    files.written = [write_client_config(files, out_dir), private_path, public_path, port_path]
    if targets_file is not None:
        targets_copy = out_dir / "targets.json"
        targets_copy.write_text(json.dumps(config, indent=2) + "\n")
        files.written.insert(1, targets_copy)
    return files


def registration_body(files: HostFiles, endpoint: str = "") -> dict[str, Any]:
    """What `POST /api/hosts` takes: the host's key, endpoint, role and whole target
    configuration."""
    return {"name": files.name, "public_key": files.public_key, "endpoint": endpoint,
            "role": files.role, "minimal": files.role != "services", "targets": files.targets,
            "target_config": files.target_config}


def host_token(out_dir: Path) -> str | None:
    """The host-scoped credential a registration left in `out_dir`, if any."""
    path = out_dir / HOST_TOKEN_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def save_registration(out_dir: Path, answer: dict[str, Any]) -> list[Path]:
    """Keep what the API answered: the mesh address, and the host-scoped credential when one
    was issued (mode 0600; the VPN task reads it through the `vlab-host` volume)."""
    address = out_dir / "wireguard" / "address"
    address.write_text(answer["mesh_address"] + "\n")
    written = [address]
    if answer.get("host_token"):
        token = out_dir / HOST_TOKEN_FILE
        _write_private(token, answer["host_token"] + "\n")
        written.append(token)
    return written


def register(client: Any, files: HostFiles, out_dir: Path,
             endpoint: str = "") -> dict[str, Any]:
    """Register the host through the API (`client`: an httpx.Client or a VlabClient, with an
    administrator's token or this host's credential) and save the answer."""
    response = client.request("POST", "/api/hosts", json=registration_body(files, endpoint))
    if hasattr(response, "raise_for_status"):
        response.raise_for_status()
    answer: dict[str, Any] = response.json()
    save_registration(out_dir, answer)
    return answer
