"""`vlab host init`: from a dAIEdge target configuration, the files a host needs to join the
cluster: the Nomad client configuration, the target configuration and a WireGuard key pair."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from vlab_backend.hosts.mesh import generate_keypair
from vlab_backend.nomad.jobs import NODE_POOL, TARGETS_META
from vlab_backend.targets import InstanceConfig, TargetConfigError, load_target_config


@dataclass
class HostFiles:
    name: str
    public_key: str
    targets: list[str]
    written: list[Path]


def check_for_cluster(instances: list[InstanceConfig]) -> None:
    """On a cluster every engine runs from its image."""
    for instance in instances:
        for name, offer in instance.engines.items():
            if not offer.image:
                raise TargetConfigError(f"{instance.uid}: engine {name!r} has no 'image' (the "
                                        "Docker image Nomad runs the target's scripts in)")


def nomad_client_config(name: str, targets: list[str], minimal: bool) -> str:
    """HCL for the Nomad client: node pool, meta advertising the target instances, Docker."""
    role = "minimal" if minimal else "full"
    return f"""# Nomad client configuration written by `vlab host init` for {name}.
client {{
  enabled   = true
  node_pool = "{NODE_POOL}"

  meta {{
    {TARGETS_META} = "{','.join(targets)}"
    vlab_host    = "{name}"
    vlab_role    = "{role}"
  }}
}}

plugin "docker" {{
  config {{
    allow_privileged = false
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


def init_host(targets_file: Path, out_dir: Path, minimal: bool = False,
              name: str | None = None) -> HostFiles:
    """Validate the target configuration and write the host's files into `out_dir`. An
    existing key pair is kept, so that running it again does not change the host's identity."""
    instances = load_target_config(targets_file)
    check_for_cluster(instances)
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
    client_config = out_dir / "nomad-client.hcl"
    client_config.write_text(nomad_client_config(name, uids, minimal))
    targets_copy = out_dir / "targets.json"
    targets_copy.write_text(json.dumps(json.loads(targets_file.read_text()), indent=2) + "\n")
    return HostFiles(name=name, public_key=public_key, targets=uids,
                     written=[client_config, targets_copy, private_path, public_path])
