"""The WireGuard module without root: parsing what `wg`/`ip` report, planning only the
differences, applying through a stand-in host that interprets the commands, and `vpn.sync`
retrying what failed (the real interface is in test_mesh_netns.py)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from vlab_backend.hosts.mesh import generate_keypair, public_key_of
from vlab_backend.hosts.vpn import sync
from vlab_backend.hosts.wireguard import (
    InterfaceSpec,
    LiveInterface,
    LivePeer,
    PeerSpec,
    WireGuard,
    WireGuardError,
    parse_addresses,
    parse_dump,
    plan,
)

PRIVATE, PUBLIC = generate_keypair()
_, BETA = generate_keypair()
_, GAMMA = generate_keypair()

DUMP = (f"{PRIVATE}\t{PUBLIC}\t51820\toff\n"
        f"{BETA}\t(none)\t192.168.1.11:51820\t10.77.0.2/32\t1700000000\t1200\t3400\t25\n"
        f"{GAMMA}\t(none)\t(none)\t10.77.0.3/32,10.99.0.0/24\t0\t0\t0\toff\n")
ADDRESSES = json.dumps([{"ifname": "wg-vlab", "flags": ["POINTOPOINT", "NOARP", "UP"],
                         "addr_info": [{"family": "inet", "local": "10.77.0.1",
                                        "prefixlen": 16, "scope": "global"},
                                       {"family": "inet6", "local": "fe80::1",
                                        "prefixlen": 64, "scope": "link"}]}])


def test_parse_what_wg_and_ip_report() -> None:
    live = parse_dump(DUMP)
    assert live.public_key == PUBLIC and live.listen_port == 51820
    assert live.peers[BETA] == LivePeer(BETA, "192.168.1.11:51820", ("10.77.0.2/32",), 25,
                                        1700000000, 1200, 3400)
    assert live.peers[GAMMA].endpoint == "" and live.peers[GAMMA].keepalive == 0
    assert live.peers[GAMMA].allowed_ips == ("10.77.0.3/32", "10.99.0.0/24")
    assert parse_addresses(ADDRESSES) == (("10.77.0.1/16",), True)
    assert parse_addresses("[]") == ((), False)
    assert parse_dump("") == LiveInterface()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "private.key"
    path.write_text(PRIVATE + "\n")
    path.chmod(0o600)
    return path


def spec_of(key_file: Path, *peers: PeerSpec, port: int = 51820) -> InterfaceSpec:
    return InterfaceSpec(private_key_file=key_file, address="10.77.0.1/16", listen_port=port,
                         peers=peers)


def test_a_missing_interface_is_created_configured_and_brought_up(key_file: Path) -> None:
    beta = PeerSpec(BETA, ("10.77.0.2/32",), "beta.lab:51820", name="beta")
    steps = [str(step) for step in plan(spec_of(key_file, beta), None)]
    assert steps == [
        "ip link add wg-vlab type wireguard || wireguard-go wg-vlab",
        f"wg set wg-vlab private-key {key_file}",  # the file, never the key itself
        "wg set wg-vlab listen-port 51820",
        "ip address add 10.77.0.1/16 dev wg-vlab",
        "ip link set wg-vlab up",
        f"wg set wg-vlab peer {BETA} endpoint beta.lab:51820 persistent-keepalive 25 "
        "allowed-ips 10.77.0.2/32"]
    assert PRIVATE not in " ".join(steps)


def test_only_differences_are_planned(key_file: Path) -> None:
    live = parse_dump(DUMP)
    live.addresses, live.up = ("10.77.0.1/16",), True
    # The same peers (an endpoint given by name that resolves to the live one; a peer without
    # endpoint keeps the one it roams from): nothing to do.
    same = spec_of(key_file,
                   PeerSpec(BETA, ("10.77.0.2/32",), "192.168.1.11:51820", name="beta"),
                   PeerSpec(GAMMA, ("10.99.0.0/24", "10.77.0.3/32"), "", keepalive=0))
    assert plan(same, live) == []
    live.peers[BETA] = LivePeer(BETA, "127.0.0.1:51820", ("10.77.0.2/32",), 25)
    assert plan(spec_of(key_file, PeerSpec(BETA, ("10.77.0.2/32",), "localhost:51820"),
                        same.peers[1]), live) == []
    # A removed host, a changed endpoint and allowed IPs, another port and address.
    _, delta = generate_keypair()
    changed = InterfaceSpec(
        private_key_file=key_file, address="10.77.0.9/16", listen_port=51821,
        peers=(PeerSpec(BETA, ("10.77.0.2/32",), "192.168.1.12:51820", name="beta"),
               PeerSpec(delta, ("10.77.0.4/32",), name="delta")))
    steps = plan(changed, live)
    assert [step.why for step in steps] == [
        "listen on port 51821", "remove the address 10.77.0.1/16",
        "mesh address 10.77.0.9/16", "remove a peer no longer registered",
        "update peer beta (endpoint)", "add peer delta"]
    assert steps[3].argv == ("wg", "set", "wg-vlab", "peer", GAMMA, "remove")
    # Another private key and a link that is down.
    live.public_key, live.up = BETA, False
    assert {step.why for step in plan(same, live)} >= {"set the private key",
                                                        "bring wg-vlab up"}


class StandIn:
    """A host's `ip` and `wg` for one interface, interpreting the commands a plan holds;
    `fail` holds argv prefixes that fail (as a command that fails on a real host)."""

    def __init__(self, kernel: bool = True) -> None:
        self.live: LiveInterface | None = None
        self.kernel = kernel
        self.ran: list[tuple[str, ...]] = []
        self.fail: list[tuple[str, ...]] = []

    def _done(self, argv: tuple[str, ...], code: int = 0, out: str = "",
              err: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), code, out, err)

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = tuple(command)
        self.ran.append(argv)
        if any(argv[:len(prefix)] == prefix for prefix in self.fail):
            return self._done(argv, 1, err="Temporary failure in name resolution")
        if argv[:2] == ("ip", "-j") or argv[:3] == ("ip", "link", "show"):
            if self.live is None:
                return self._done(argv, 1, err='Device "wg-vlab" does not exist.')
            return self._done(argv, out=json.dumps([{
                "flags": ["UP"] if self.live.up else [],
                "addr_info": [{"local": a.split("/")[0], "prefixlen": int(a.split("/")[1])}
                              for a in self.live.addresses]}]))
        if argv[:3] == ("ip", "link", "add"):
            if not self.kernel:
                return self._done(argv, 2, err="Error: Unknown device type.")
            self.live = LiveInterface()
        elif argv[0] == "wireguard-go":
            self.live = LiveInterface()
        elif self.live is None:
            return self._done(argv, 1, err="Unable to access interface: No such device")
        elif argv[:3] == ("wg", "show", "wg-vlab"):
            peers = "".join(f"{p.public_key}\t(none)\t{p.endpoint or '(none)'}\t"
                            f"{','.join(p.allowed_ips)}\t0\t0\t0\t{p.keepalive or 'off'}\n"
                            for p in self.live.peers.values())
            return self._done(argv, out=f"(hidden)\t{self.live.public_key or '(none)'}\t"
                                        f"{self.live.listen_port}\toff\n{peers}")
        elif argv[3] == "private-key":
            self.live.public_key = public_key_of(Path(argv[4]).read_text().strip())
        elif argv[3] == "listen-port":
            self.live.listen_port = int(argv[4])
        elif argv[:3] == ("ip", "address", "add"):
            self.live.addresses = (*self.live.addresses, argv[3])
        elif argv[:3] == ("ip", "address", "del"):
            self.live.addresses = tuple(a for a in self.live.addresses if a != argv[3])
        elif argv[:3] == ("ip", "link", "set"):
            self.live.up = True
        elif argv[-1] == "remove":
            self.live.peers.pop(argv[4], None)
        else:  # wg set IF peer KEY [endpoint E] persistent-keepalive N allowed-ips A
            options = dict(zip(argv[5::2], argv[6::2], strict=True))
            keepalive = options["persistent-keepalive"]
            self.live.peers[argv[4]] = LivePeer(
                argv[4], options.get("endpoint", ""),
                tuple(sorted(options["allowed-ips"].split(","))),
                0 if keepalive == "off" else int(keepalive))
        return self._done(argv)


def test_userspace_when_the_kernel_has_no_wireguard(key_file: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    host = StandIn(kernel=False)
    monkeypatch.setattr("vlab_backend.hosts.wireguard.shutil.which", lambda name: name)
    done = WireGuard(run=host).reconcile(spec_of(key_file))
    assert done.ok and ("wireguard-go", "wg-vlab") in host.ran
    assert host.live is not None and host.live.up
    assert host.live.addresses == ("10.77.0.1/16",)
    # Neither: one clear failure, nothing else is tried.
    monkeypatch.setattr("vlab_backend.hosts.wireguard.shutil.which", lambda name: None)
    other = StandIn(kernel=False)
    done = WireGuard(run=other).reconcile(spec_of(key_file))
    assert len(done.failures) == 1 and "wireguard-go is not installed" in str(done.failures[0])
    assert other.ran[-1][:3] == ("ip", "link", "add")


def test_a_dry_run_changes_nothing(key_file: Path) -> None:
    host = StandIn()
    done = WireGuard(run=host, dry_run=True).reconcile(spec_of(key_file))
    assert done.dry_run and len(done.steps) == 5 and host.live is None
    assert all(argv[:2] == ("ip", "-j") for argv in host.ran)  # it only read

    def not_root(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 1, "", "Operation not permitted")

    done = WireGuard(run=not_root, dry_run=True).reconcile(spec_of(key_file))
    assert "Operation not permitted" in done.notes[0] and len(done.steps) == 5
    with pytest.raises(WireGuardError, match="cannot read wg-vlab"):
        WireGuard(run=not_root).reconcile(spec_of(key_file))


def hosts_of(key_file: Path) -> list[dict[str, object]]:
    return [{"name": "alpha", "public_key": PUBLIC, "endpoint": "", "mesh_address": "10.77.0.1"},
            {"name": "beta", "public_key": BETA, "endpoint": "192.168.1.11:51820",
             "mesh_address": "10.77.0.2"},
            {"name": "gamma", "public_key": GAMMA, "endpoint": "",
             "mesh_address": "10.77.0.3"}]


def test_sync_compares_with_the_live_interface_and_retries_what_failed(
        key_file: Path, tmp_path: Path) -> None:
    host = StandIn()
    wireguard = WireGuard(run=host)
    config = tmp_path / "wg-vlab.conf"
    hosts = hosts_of(key_file)
    # beta's endpoint does not resolve yet: its peer fails, the rest is applied.
    host.fail = [("wg", "set", "wg-vlab", "peer", BETA)]
    first = sync(hosts, "alpha", key_file, config, wireguard=wireguard)
    assert first.changed and not first.applied and len(first.failures) == 1
    assert "add peer beta" in str(first.failures[0]) and "name resolution" in str(
        first.failures[0])
    assert host.live is not None and set(host.live.peers) == {GAMMA}
    assert config.is_file()  # the record is written, but it decides nothing:
    # the next sync reads the interface, finds beta missing and applies it.
    host.fail = []
    second = sync(hosts, "alpha", key_file, config, wireguard=wireguard)
    assert second.applied and [s.why for s in second.steps] == ["add peer beta"]
    assert set(host.live.peers) == {BETA, GAMMA}
    third = sync(hosts, "alpha", key_file, config, wireguard=wireguard)
    assert not third.changed and third.applied
    # Someone removes a peer by hand: the live interface differs, so it is put back, even
    # though the recorded configuration did not change.
    host.live.peers.pop(GAMMA)
    assert [s.why for s in sync(hosts, "alpha", key_file, config,
                                wireguard=wireguard).steps] == ["add peer gamma"]
    # A deregistered host is removed by its public key.
    fourth = sync([h for h in hosts if h["name"] != "beta"], "alpha", key_file, config,
                  wireguard=wireguard)
    assert fourth.peers == ["gamma"] and set(host.live.peers) == {GAMMA}
    assert ipaddress.ip_interface(host.live.addresses[0]).ip == ipaddress.ip_address(
        "10.77.0.1")


def test_sync_refuses_an_unknown_host_or_another_key(key_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host delta is not registered"):
        sync(hosts_of(key_file), "delta", key_file, tmp_path / "c", wireguard=WireGuard(
            run=StandIn()))
    other = tmp_path / "other.key"
    other.write_text(generate_keypair()[0])
    with pytest.raises(ValueError, match="does not match the public key"):
        sync(hosts_of(key_file), "alpha", other, tmp_path / "c")
