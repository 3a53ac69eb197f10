"""`vlab vpn sync`: one reconciliation of this host's WireGuard configuration with the hosts
registered in the shared database."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlab_backend.hosts.mesh import Peer, public_key_of, render_config


@dataclass
class SyncResult:
    changed: bool
    peers: list[str]
    applied: bool
    config_path: Path


def sync(hosts: list[dict[str, Any]], name: str, private_key_file: Path, config_path: Path,
         interface: str = "wg-vlab") -> SyncResult:
    """Write this host's configuration if it changed, and apply it with `wg syncconf` when
    `wg` is installed."""
    me = next((h for h in hosts if h["name"] == name), None)
    if me is None:
        raise ValueError(f"host {name} is not registered; run `vlab host init` on it")
    private_key = private_key_file.read_text().strip()
    if public_key_of(private_key) != me["public_key"]:
        raise ValueError(f"{private_key_file} does not match the public key registered for "
                         f"{name}; run `vlab host init` again")
    peers = [Peer(h["name"], h["public_key"], h["endpoint"], h["mesh_address"])
             for h in hosts if h["name"] != name]
    text = render_config(private_key, me["mesh_address"], peers)
    changed = not config_path.is_file() or config_path.read_text() != text
    if changed:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    applied = False
    if changed and shutil.which("wg"):
        plain = config_path.with_suffix(".syncconf")
        plain.write_text(render_config(private_key, me["mesh_address"], peers, quick=False))
        plain.chmod(0o600)
        subprocess.run(["wg", "syncconf", interface, str(plain)], check=True)
        applied = True
    return SyncResult(changed, sorted(p.name for p in peers), applied, config_path)
