"""WireGuard mesh: keys, address allocation and the configuration of one host."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

MESH_NETWORK = ipaddress.ip_network("10.77.0.0/16")
LISTEN_PORT = 51820


def generate_keypair() -> tuple[str, str]:
    """A WireGuard key pair (base64 private key, base64 public key), as `wg genkey|pubkey`."""
    private = X25519PrivateKey.generate()
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode()


def public_key_of(private_key: str) -> str:
    private = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(private.public_key().public_bytes(Encoding.Raw,
                                                              PublicFormat.Raw)).decode()


def valid_public_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except ValueError:
        return False


def next_address(used: Iterable[str]) -> str:
    """The lowest free address of the mesh network (the network's first address excluded)."""
    taken = {ipaddress.ip_address(a) for a in used}
    for candidate in MESH_NETWORK.hosts():
        if candidate not in taken:
            return str(candidate)
    raise RuntimeError(f"the mesh network {MESH_NETWORK} is full")


@dataclass(frozen=True)
class Peer:
    name: str
    public_key: str
    endpoint: str
    mesh_address: str


def render_config(private_key: str, address: str, peers: list[Peer],
                  listen_port: int = LISTEN_PORT, quick: bool = True) -> str:
    """This host's WireGuard configuration: wg-quick format (`quick`) or the plain format
    `wg syncconf` takes (no Address)."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {listen_port}"]
    if quick:
        lines.insert(2, f"Address = {address}/{MESH_NETWORK.prefixlen}")
    for peer in sorted(peers, key=lambda p: p.name):
        lines += ["", f"# {peer.name}", "[Peer]", f"PublicKey = {peer.public_key}",
                  f"AllowedIPs = {peer.mesh_address}/32", "PersistentKeepalive = 25"]
        if peer.endpoint:
            lines.insert(len(lines) - 2, f"Endpoint = {peer.endpoint}")
    return "\n".join(lines) + "\n"
