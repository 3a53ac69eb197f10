"""The host's WireGuard interface (`wg-vlab`): read it live, plan what differs from what it
should be, and apply only that, with `wg` (wireguard-tools) and `ip` (iproute2).

- `WireGuard.read()` reads the LIVE interface: `ip -j address show dev wg-vlab` and
  `wg show wg-vlab dump` (None: there is no such interface).
- `plan(spec, live)` lists the commands that take the live interface to `spec`: create it
  (kernel WireGuard, `ip link add wg-vlab type wireguard`, else userspace
  `wireguard-go wg-vlab`), set the private key (from its 0600 file, never on a command line),
  the listen port and the mesh address, bring it up, and add, update or remove peers
  (identified by their public key: endpoint, allowed IPs, keepalive).
- `WireGuard.apply(steps)` runs them and reports each failure; nothing is recorded as done, so
  the next reconciliation, which reads the interface again, retries whatever failed.
- `WireGuard(dry_run=True)` runs nothing that changes the host: `reconcile` returns the plan
  (against the live interface when it can be read, else against no interface), for tests and
  for `--plan` without root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlab_backend.hosts.mesh import public_key_of

INTERFACE = "wg-vlab"
KEEPALIVE = 25  # seconds: keeps NAT mappings open, so hosts that only dial out stay reachable
USERSPACE = "wireguard-go"
CREATE_TIMEOUT = 10.0  # seconds for a userspace interface to appear
COMMAND_TIMEOUT = 30.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output (a missing program: exit status 127)."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not installed")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "",
                                           f"{argv[0]}: no answer in {COMMAND_TIMEOUT:.0f} s")


class WireGuardError(RuntimeError):
    """The interface cannot be read (no permission, no wireguard-tools); the message says
    why."""


@dataclass(frozen=True)
class PeerSpec:
    """A peer as it should be: its public key identifies it."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str = ""  # HOST:PORT; "" = it dials us (its live endpoint is then left alone)
    keepalive: int = KEEPALIVE
    name: str = ""  # for messages only


@dataclass(frozen=True)
class InterfaceSpec:
    """The interface as it should be."""

    private_key_file: Path
    address: str  # the mesh address with the mesh's prefix, e.g. 10.77.0.2/16
    listen_port: int
    peers: tuple[PeerSpec, ...] = ()
    interface: str = INTERFACE

    @property
    def public_key(self) -> str:
        return public_key_of(self.private_key_file.read_text().strip())


@dataclass(frozen=True)
class LivePeer:
    """A peer as `wg show dump` reports it."""

    public_key: str
    endpoint: str  # "" when none
    allowed_ips: tuple[str, ...]
    keepalive: int  # 0 = off
    latest_handshake: int = 0  # Unix time, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class LiveInterface:
    """The interface as it is."""

    public_key: str = ""  # of its private key; "" when none is set
    listen_port: int = 0
    peers: dict[str, LivePeer] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()  # CIDR, link-local ones left out
    up: bool = False


@dataclass(frozen=True)
class Step:
    """One command of a plan. `fallback`: run instead when `argv` fails (creating the
    interface: userspace WireGuard where the kernel has none). `peer`: the peer concerned."""

    argv: tuple[str, ...]
    why: str
    fallback: tuple[str, ...] = ()
    peer: str = ""

    def __str__(self) -> str:
        text = shlex.join(self.argv)
        return f"{text} || {shlex.join(self.fallback)}" if self.fallback else text


@dataclass
class Failure:
    step: Step
    error: str

    def __str__(self) -> str:
        return f"{self.step.why}: `{self.step}` failed: {self.error}"


@dataclass
class Reconciled:
    """What a reconciliation did: the steps planned (all of them ran unless `dry_run`), and
    those that failed (none ran after a failed creation)."""

    steps: list[Step]
    failures: list[Failure]
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    @property
    def ok(self) -> bool:
        return not self.failures


# -- reading --------------------------------------------------------------------------------

def _none(value: str) -> str:
    return "" if value in ("(none)", "off") else value


def parse_dump(text: str) -> LiveInterface:
    """`wg show <interface> dump`: a line for the interface (private key, public key, listen
    port, fwmark), then one per peer (public key, preshared key, endpoint, allowed IPs, latest
    handshake, bytes received, bytes sent, persistent keepalive), tab-separated."""
    lines = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not lines:
        return LiveInterface()
    head = lines[0]
    live = LiveInterface(public_key=_none(head[1]) if len(head) > 1 else "",
                         listen_port=int(head[2]) if len(head) > 2 and head[2].isdigit() else 0)
    for row in lines[1:]:
        if len(row) < 8:
            continue
        allowed = tuple(sorted(a for a in _none(row[3]).split(",") if a))
        live.peers[row[0]] = LivePeer(
            public_key=row[0], endpoint=_none(row[2]), allowed_ips=allowed,
            keepalive=int(row[7]) if row[7].isdigit() else 0,
            latest_handshake=int(row[4]) if row[4].isdigit() else 0,
            rx_bytes=int(row[5]) if row[5].isdigit() else 0,
            tx_bytes=int(row[6]) if row[6].isdigit() else 0)
    return live


def parse_addresses(text: str) -> tuple[tuple[str, ...], bool]:
    """`ip -j address show dev <interface>`: its addresses (CIDR, link-local left out) and
    whether it is up (administratively)."""
    entries = json.loads(text or "[]")
    if not entries:
        return (), False
    entry = entries[0]
    addresses = tuple(sorted(f"{a['local']}/{a['prefixlen']}"
                             for a in entry.get("addr_info", [])
                             if a.get("scope") != "link" and "local" in a))
    return addresses, "UP" in entry.get("flags", [])


def _missing(result: subprocess.CompletedProcess[str]) -> bool:
    text = (result.stderr + result.stdout).lower()
    return "does not exist" in text or "no such device" in text


def _error(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stderr.strip() or result.stdout.strip()
            or f"exit status {result.returncode}").splitlines()[-1]


# -- planning -------------------------------------------------------------------------------

def resolve_endpoint(endpoint: str) -> set[str]:
    """The HOST:PORT forms `wg show` can report for an endpoint (addresses resolved; IPv6 in
    brackets). Empty when it does not resolve."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return set()
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return set()
    found = set()
    for family, _, _, _, address in infos:
        ip = str(address[0]).split("%")[0]
        found.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return found


def _peer_differs(want: PeerSpec, have: LivePeer) -> list[str]:
    reasons = []
    if tuple(sorted(want.allowed_ips)) != have.allowed_ips:
        reasons.append("allowed IPs")
    if want.keepalive != have.keepalive:
        reasons.append("keepalive")
    if want.endpoint and have.endpoint not in resolve_endpoint(want.endpoint):
        reasons.append("endpoint")
    return reasons


def _set_peer(interface: str, peer: PeerSpec, why: str) -> Step:
    argv = ["wg", "set", interface, "peer", peer.public_key]
    if peer.endpoint:
        argv += ["endpoint", peer.endpoint]
    argv += ["persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off",
             "allowed-ips", ",".join(sorted(peer.allowed_ips))]
    return Step(tuple(argv), why, peer=peer.public_key)


def plan(spec: InterfaceSpec, live: LiveInterface | None) -> list[Step]:
    """The commands that take the live interface (None: it does not exist) to `spec`, and
    nothing more: an interface that matches gives an empty plan."""
    name = spec.interface
    steps: list[Step] = []
    if live is None:
        steps.append(Step(("ip", "link", "add", name, "type", "wireguard"),
                          f"create {name}", fallback=(USERSPACE, name)))
        live = LiveInterface()
    if live.public_key != spec.public_key:
        steps.append(Step(("wg", "set", name, "private-key", str(spec.private_key_file)),
                          "set the private key"))
    if live.listen_port != spec.listen_port:
        steps.append(Step(("wg", "set", name, "listen-port", str(spec.listen_port)),
                          f"listen on port {spec.listen_port}"))
    want_address = str(ipaddress.ip_interface(spec.address))
    steps += [Step(("ip", "address", "del", address, "dev", name),
                   f"remove the address {address}")
              for address in live.addresses if address != want_address]
    if want_address not in live.addresses:
        steps.append(Step(("ip", "address", "add", want_address, "dev", name),
                          f"mesh address {want_address}"))
    if not live.up:
        steps.append(Step(("ip", "link", "set", name, "up"), f"bring {name} up"))
    wanted = {peer.public_key: peer for peer in spec.peers}
    steps += [Step(("wg", "set", name, "peer", key, "remove"), "remove a peer no longer "
                   "registered", peer=key)
              for key in sorted(live.peers) if key not in wanted]
    for peer in sorted(spec.peers, key=lambda p: (p.name, p.public_key)):
        label = peer.name or peer.public_key
        have = live.peers.get(peer.public_key)
        if have is None:
            steps.append(_set_peer(name, peer, f"add peer {label}"))
        elif reasons := _peer_differs(peer, have):
            steps.append(_set_peer(name, peer, f"update peer {label} ({', '.join(reasons)})"))
    return steps


# -- the interface --------------------------------------------------------------------------

class WireGuard:
    """One WireGuard interface of this host (its network namespace), through `run`."""

    def __init__(self, interface: str = INTERFACE, run: Runner = run_command,
                 dry_run: bool = False, create_timeout: float = CREATE_TIMEOUT) -> None:
        self.interface = interface
        self.run = run
        self.dry_run = dry_run
        self.create_timeout = create_timeout

    def exists(self) -> bool:
        return self.run(["ip", "link", "show", "dev", self.interface]).returncode == 0

    def read(self) -> LiveInterface | None:
        """The live interface, or None when there is none. WireGuardError when it cannot be
        read (not root, wireguard-tools missing)."""
        shown = self.run(["ip", "-j", "address", "show", "dev", self.interface])
        if shown.returncode != 0:
            if _missing(shown):
                return None
            raise WireGuardError(f"cannot read {self.interface}: {_error(shown)}")
        addresses, up = parse_addresses(shown.stdout)
        dump = self.run(["wg", "show", self.interface, "dump"])
        if dump.returncode != 0:
            raise WireGuardError(f"cannot read {self.interface} with `wg show`: "
                                 f"{_error(dump)}")
        live = parse_dump(dump.stdout)
        live.addresses, live.up = addresses, up
        return live

    def _create(self, step: Step) -> str | None:
        """Create the interface: kernel WireGuard, else userspace. None, or why it failed."""
        kernel = self.run(step.argv)
        if kernel.returncode == 0:
            return None
        if not step.fallback or shutil.which(step.fallback[0]) is None:
            return (f"{_error(kernel)} (no kernel WireGuard, and {USERSPACE} is not "
                    "installed)")
        userspace = self.run(step.fallback)
        if userspace.returncode != 0:
            return f"kernel: {_error(kernel)}; {USERSPACE}: {_error(userspace)}"
        deadline = time.monotonic() + self.create_timeout
        while not self.exists():  # wireguard-go daemonizes; wait for its interface
            if time.monotonic() > deadline:
                return f"{USERSPACE} started but {self.interface} did not appear"
            time.sleep(0.05)
        return None

    def apply(self, steps: Sequence[Step]) -> list[Failure]:
        """Run the steps; every failure is reported (the others still run, except after a
        failed creation, when there is no interface to configure)."""
        failures = []
        for step in steps:
            if step.fallback:
                error = self._create(step)
                if error is not None:
                    return [Failure(step, error)]
                continue
            done = self.run(step.argv)
            if done.returncode != 0:
                failures.append(Failure(step, _error(done)))
        return failures

    def reconcile(self, spec: InterfaceSpec) -> Reconciled:
        """Compare the live interface with `spec` and apply the differences (dry run: only
        plan them; an interface it cannot read counts as absent, with a note)."""
        notes = []
        try:
            live = self.read()
        except WireGuardError as exc:
            if not self.dry_run:
                raise
            notes.append(f"{exc}; planned as if there were no {self.interface}")
            live = None
        steps = plan(spec, live)
        if self.dry_run:
            return Reconciled(steps, [], dry_run=True, notes=notes)
        return Reconciled(steps, self.apply(steps), notes=notes)

    def remove(self) -> None:
        """Delete the interface (a userspace one's process then exits)."""
        with contextlib.suppress(OSError):
            self.run(["ip", "link", "del", "dev", self.interface])
