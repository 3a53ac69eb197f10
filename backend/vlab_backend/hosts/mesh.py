"""WireGuard mesh: keys, address allocation and the configuration of one host."""

from __future__ import annotations

import base64
import ipaddress
import re
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
# A WireGuard public key: 32 bytes in base64, 44 characters with its one '=' of padding.
PUBLIC_KEY = re.compile(r"^[A-Za-z0-9+/]{43}=$")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAX_ENDPOINT = 300


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
    if not PUBLIC_KEY.fullmatch(key):
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 32
    except ValueError:
        return False


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        if "%" in host:  # a zone id is no public address
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return True
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # An all-numeric last label is a malformed IPv4 address, not a host name.
    return not labels[-1].isdigit() and all(_DNS_LABEL.fullmatch(label) for label in labels)


def valid_endpoint(endpoint: str) -> bool:
    """A WireGuard endpoint `HOST:PORT`: a DNS host name, an IPv4 address or `[IPv6]`, and a
    port 1-65535; nothing else (no whitespace, no control character)."""
    if not endpoint or len(endpoint) > MAX_ENDPOINT or not endpoint.isascii() \
            or _unsafe(endpoint):
        return False
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        return False
    return _valid_host(host)


def _unsafe(value: str) -> bool:
    """Whether the text holds whitespace or a control character (which would let a value
    break out of its line of a configuration file)."""
    return any(c.isspace() or not c.isprintable() for c in value)


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


def _check_values(values: dict[str, str], peer: str | None = None) -> None:
    for field, value in values.items():
        if _unsafe(value):
            where = f" of peer {peer!r}" if peer is not None else ""
            raise ValueError(f"refusing to write the WireGuard configuration: the {field}"
                             f"{where} holds whitespace or a control character: {value!r}")


def render_config(private_key: str, address: str, peers: list[Peer],
                  listen_port: int = LISTEN_PORT, quick: bool = True) -> str:
    """This host's WireGuard configuration: wg-quick format (`quick`) or the plain format
    `wg syncconf` takes (no Address). ValueError when any value holds whitespace or a
    control character (it could add lines, e.g. a `PostUp` command, to the configuration)."""
    _check_values({"private_key": private_key, "address": address})
    for peer in peers:
        _check_values({"peer name": peer.name, "public_key": peer.public_key,
                       "endpoint": peer.endpoint, "mesh_address": peer.mesh_address},
                      peer.name)
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {listen_port}"]
    if quick:
        lines.insert(2, f"Address = {address}/{MESH_NETWORK.prefixlen}")
    for peer in sorted(peers, key=lambda p: p.name):
        lines += ["", f"# {peer.name}", "[Peer]", f"PublicKey = {peer.public_key}",
                  f"AllowedIPs = {peer.mesh_address}/32", "PersistentKeepalive = 25"]
        if peer.endpoint:
            lines.insert(len(lines) - 2, f"Endpoint = {peer.endpoint}")
    return "\n".join(lines) + "\n"
