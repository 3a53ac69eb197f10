"""The WireGuard mesh for real: three hosts, each in its own network namespace, on a "LAN"
(veth pairs to a bridge), with the real API reachable from them.

`vlab host init` runs inside each namespace (`ip netns exec`): it registers the host and
brings `wg-vlab` up (kernel WireGuard where there is some, else wireguard-go); `vlab vpn sync`
then adds the peers registered after it. The hosts reach each other on their mesh addresses,
and only through wg-vlab: an nftables rule on each host's LAN interface drops everything but
WireGuard's UDP and the API, and the peers' WireGuard byte counters grow. A deregistered
host's peer is removed from the live interfaces; a failed apply (an endpoint whose name does
not resolve yet) exits 1 and is applied by the next sync.

Needs root and `ip netns` (skipped otherwise, with the reason), and wireguard-tools plus
kernel WireGuard or wireguard-go (`.ci/run` installs `wireguard-tools wireguard-go
nftables`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.server import LiveServer
from vlab_backend.hosts.mesh import generate_keypair
from vlab_backend.hosts.wireguard import parse_dump

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
LAN = "192.168.213"  # the hosts' LAN: .1 is the API (this namespace), .11-.13 the hosts
HOSTS = {"alpha": 11, "beta": 12, "gamma": 13}
ENDPOINTS = {"alpha": f"{LAN}.11:51820", "beta": f"{LAN}.12:51820", "gamma": ""}  # gamma
# only dials out
DEADLINE = 60.0  # seconds for the mesh to carry a ping (handshakes, userspace start-up)
PR_SET_CHILD_SUBREAPER = 36


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout}")
    return done


def unavailable() -> str | None:
    """Why this test cannot run here (skip), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and WireGuard interfaces)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed, so `ip netns` is unavailable"
    probe = f"vlabprobe{os.getpid()}"
    added = sh("ip", "netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns` is unavailable: {added.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


def wireguard_missing() -> str | None:
    """What the test needs besides root and `ip netns` (a failure, not a skip)."""
    missing = [tool for tool in ("wg", "nft", "ping") if shutil.which(tool) is None]
    if missing:
        return (f"missing {', '.join(missing)}: install wireguard-tools, nftables and "
                "iputils-ping (see .ci/run)")
    probe = f"vlabwg{os.getpid()}"
    kernel = sh("ip", "link", "add", probe, "type", "wireguard", check=False).returncode == 0
    sh("ip", "link", "del", probe, check=False)
    if not kernel and (shutil.which("wireguard-go") is None
                       or not Path("/dev/net/tun").exists()):
        return "no kernel WireGuard, and no wireguard-go with /dev/net/tun"
    return None


@dataclass
class Lab:
    """The namespaces and links of one run, and what clean-up must undo."""

    tag: str
    namespaces: dict[str, str] = field(default_factory=dict)  # host -> netns
    root_link: str = ""
    etc: list[Path] = field(default_factory=list)  # /etc/netns/<ns> folders
    made: list[Path] = field(default_factory=list)  # other folders made (deepest last)

    @property
    def lan(self) -> str:
        return f"{self.tag}-lan"

    def ns(self, host: str) -> str:
        return self.namespaces[host]

    def sockets(self, host: str) -> Path:
        """The host's own /run/wireguard: userspace WireGuard's control sockets live there,
        and every namespace sees the same /run."""
        return Path("/run/wireguard") / self.ns(host)

    def argv(self, host: str, *argv: str) -> list[str]:
        """`argv` inside the host's namespace, with its /run/wireguard."""
        return ["ip", "netns", "exec", self.ns(host), "unshare", "--mount",
                "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /run/wireguard && exec "$@"', str(self.sockets(host)),
                *argv]

    def run(self, host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(host, *argv), check=check)

    def reboot_interface(self, host: str) -> None:
        """Delete the host's wg-vlab, as a reboot does, and wait for a userspace WireGuard's
        process to end."""
        pids = [int(pid) for pid in sh("ip", "netns", "pids", self.ns(host)).stdout.split()]
        self.run(host, "ip", "link", "del", "wg-vlab")
        deadline = time.monotonic() + 20
        for pid in pids:
            while not gone(pid):
                assert time.monotonic() < deadline, f"process {pid} outlived wg-vlab"
                time.sleep(0.02)

    def hosts_file(self, host: str, extra: str = "") -> None:
        """What `ip netns exec` binds over /etc/hosts (and nsswitch.conf: files only, so a
        name that is not there fails at once instead of waiting for a DNS server)."""
        folder = Path("/etc/netns") / self.ns(host)
        (folder / "hosts").write_text(f"127.0.0.1 localhost\n{extra}")


def set_subreaper(on: bool) -> None:
    """wireguard-go daemonizes: while on, its processes are re-parented to this one (not to a
    PID 1 that may not reap), so that clean-up can wait for them."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def gone(pid: int) -> bool:
    """Whether the process has ended (and is reaped, when it is this process's child, as a
    re-parented wireguard-go is)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not ours to reap
        return not Path(f"/proc/{pid}").exists()


def teardown(lab: Lab) -> None:
    """Delete the interfaces (a userspace WireGuard's process then exits), wait for every
    process left in the namespaces, then delete the namespaces, links and /etc/netns files."""
    # The processes first (an exited one is no longer listed, but must still be reaped).
    pids = [int(pid) for ns in [*lab.namespaces.values(), lab.lan]
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split()]
    for ns in lab.namespaces.values():
        sh("ip", "-n", ns, "link", "del", "wg-vlab", check=False)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in pids:
        while not gone(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                break
            time.sleep(0.02)
    for ns in [*lab.namespaces.values(), lab.lan]:
        sh("ip", "netns", "del", ns, check=False)
    if lab.root_link:
        sh("ip", "link", "del", lab.root_link, check=False)
    for folder in lab.etc:
        shutil.rmtree(folder, ignore_errors=True)
    for ns in lab.namespaces.values():
        shutil.rmtree(Path("/run/wireguard") / ns, ignore_errors=True)
    for folder in reversed(lab.made):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: another user's sockets stay


def build(lab: Lab) -> None:
    """The LAN: a bridge in its own namespace, one veth pair per host and one to this
    namespace (the API's side). Each host drops on its LAN interface whatever is not
    WireGuard or the API."""
    for folder in (Path("/etc/netns"), Path("/run/wireguard")):
        if not folder.is_dir():
            folder.mkdir(parents=True)
            lab.made.append(folder)
    sh("ip", "netns", "add", lab.lan)
    sh("ip", "-n", lab.lan, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", lab.lan, "link", "set", "br0", "up")
    sh("ip", "link", "add", lab.root_link, "type", "veth", "peer", "name", "api", "netns",
       lab.lan)
    sh("ip", "-n", lab.lan, "link", "set", "api", "master", "br0", "up")
    sh("ip", "address", "add", f"{LAN}.1/24", "dev", lab.root_link)
    sh("ip", "link", "set", lab.root_link, "up")
    for host, last in HOSTS.items():
        ns = lab.namespaces[host] = f"{lab.tag}-{host}"
        folder = Path("/etc/netns") / ns
        folder.mkdir(parents=True, exist_ok=True)
        lab.etc.append(folder)
        (folder / "nsswitch.conf").write_text("passwd: files\ngroup: files\nshadow: files\n"
                                              "hosts: files\n")
        lab.hosts_file(host)
        lab.sockets(host).mkdir(mode=0o700)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", lab.lan, "link", "add", host, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", lab.lan, "link", "set", host, "master", "br0", "up")
        sh("ip", "-n", ns, "address", "add", f"{LAN}.{last}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        rules = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"], text=True, capture_output=True,
            timeout=60, input=f"""
table inet vlabtest {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname "eth0" ip saddr {LAN}.1 accept
    iifname "eth0" udp dport 51820 accept
    iifname "eth0" ct state established,related accept
    iifname "eth0" drop
  }}
}}
""")
        assert rules.returncode == 0, rules.stderr


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, LiveServer]]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    missing = wireguard_missing()
    if missing:
        pytest.fail(missing)
    tag = f"vg{uuid.uuid4().hex[:6]}"
    the_lab = Lab(tag=tag, root_link=f"{tag}api")
    server = LiveServer(tmp_path / "data", extra_args=["--host", f"{LAN}.1"])
    server.url = f"http://{LAN}.1:{server.port}"
    set_subreaper(True)
    try:
        build(the_lab)
        server.start()
        yield the_lab, server
    finally:
        try:
            teardown(the_lab)  # first: the namespaces' processes talk to the server
        finally:
            server.stop()
            set_subreaper(False)
        leftovers = sh("ip", "netns", "list").stdout
        assert tag not in leftovers, leftovers
        assert sh("ip", "link", "show", the_lab.root_link, check=False).returncode != 0


def vlab(lab: Lab, server: LiveServer, host: str, *args: str,
         **env: str) -> subprocess.CompletedProcess[str]:
    """`vlab ARGS` inside the host's namespace, with the server's environment."""
    return subprocess.run(lab.argv(host, sys.executable, "-m", "vlab_kernel.cli", *args),
                          env={**server.env, **env}, capture_output=True, text=True,
                          timeout=300)


def live_peers(lab: Lab, host: str) -> dict[str, tuple[int, int]]:
    """Public key -> (bytes received, bytes sent) of the host's live wg-vlab."""
    live = parse_dump(lab.run(host, "wg", "show", "wg-vlab", "dump").stdout)
    return {key: (peer.rx_bytes, peer.tx_bytes) for key, peer in live.peers.items()}


def ping(lab: Lab, host: str, address: str) -> bool:
    return lab.run(host, "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def ping_until(lab: Lab, host: str, address: str, deadline: float = DEADLINE) -> None:
    """Ping until one answer comes (the first handshake may take a few tries)."""
    end = time.monotonic() + deadline
    while not ping(lab, host, address):
        if time.monotonic() > end:
            raise AssertionError(f"{host} never reached {address} over the mesh:\n"
                                 + lab.run(host, "wg", "show", check=False).stdout)


def test_the_mesh_comes_up_carries_traffic_and_follows_the_registry(
        lab: tuple[Lab, LiveServer], tmp_path: Path) -> None:
    the_lab, server = lab
    out = {host: tmp_path / host for host in HOSTS}
    addresses, keys = {}, {}
    # 0. alpha, the first host, bootstraps before the API is there: wg-vlab comes up on the
    #    first mesh address, so that Nomad is on the mesh from the start.
    volumes = str(tmp_path / "volumes")
    done = vlab(the_lab, server, "alpha", "host", "init", "--role", "services", "--targets",
                str(EXAMPLES / "host-alpha-targets.json"), "--out", str(out["alpha"]),
                "--name", "alpha", "--endpoint", ENDPOINTS["alpha"], "--no-register",
                "--mesh-address", "10.77.0.1", VLAB_HOST_DATA_ROOT=volumes)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wg-vlab updated: 0 peer(s)" in done.stdout
    assert 'bind_addr = "10.77.0.1"' in (out["alpha"] / "nomad-client.hcl").read_text()
    # 1. host init in each namespace: register, then bring wg-vlab up with the peers known
    #    (alpha gets the address it bootstrapped on: nothing to change).
    for host in HOSTS:
        role = ["--role", "services", "--mesh-address", "10.77.0.1"] if host == "alpha" \
            else []
        done = vlab(the_lab, server, host, "host", "init", "--targets",
                    str(EXAMPLES / f"host-{host}-targets.json"), "--out", str(out[host]),
                    "--name", host, "--endpoint", ENDPOINTS[host], *role,
                    VLAB_TOKEN=server.token, VLAB_HOST_DATA_ROOT=volumes)
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("wg-vlab unchanged" if host == "alpha" else "wg-vlab updated") in done.stdout
        addresses[host] = (out[host] / "wireguard" / "address").read_text().strip()
        keys[host] = (out[host] / "wireguard" / "public.key").read_text().strip()
        hcl = (out[host] / "nomad-client.hcl").read_text()
        assert f'bind_addr = "{addresses[host]}"' in hcl
        assert 'network_interface = "wg-vlab"' in hcl
        shown = the_lab.run(host, "ip", "-j", "address", "show", "dev", "wg-vlab").stdout
        assert f'"local":"{addresses[host]}"' in shown.replace(" ", "")
    # Each knows the hosts registered before it.
    assert set(live_peers(the_lab, "alpha")) == set()
    assert set(live_peers(the_lab, "gamma")) == {keys["alpha"], keys["beta"]}
    # 2. vpn sync (vlab-vpn's loop) adds the later ones; its name is the registered one.
    for host, added in (("alpha", 2), ("beta", 1), ("gamma", 0)):
        done = vlab(the_lab, server, host, "vpn", "sync", "--host-dir", str(out[host]))
        assert done.returncode == 0, done.stderr
        state = "updated" if added else "unchanged"
        assert f"wg-vlab {state}: 2 peer(s)" in done.stdout, done.stdout
        assert set(live_peers(the_lab, host)) == {keys[h] for h in HOSTS if h != host}
    # 3. Every host reaches every other on its mesh address, through wg-vlab only.
    assert not ping(the_lab, "alpha", f"{LAN}.{HOSTS['beta']}")  # the LAN path is closed
    for host in reversed(HOSTS):  # gamma first: it dials out, so the others learn where
        for other in HOSTS:         # it is
            if other == host:
                continue
            before = live_peers(the_lab, host)[keys[other]]
            ping_until(the_lab, host, addresses[other])
            after = live_peers(the_lab, host)[keys[other]]
            assert after[0] > before[0] and after[1] > before[1], (host, other)
            route = the_lab.run(host, "ip", "route", "get", addresses[other]).stdout
            assert "dev wg-vlab" in route
    # Nothing to do when the live interface matches.
    again = vlab(the_lab, server, "beta", "vpn", "sync", "--host-dir", str(out["beta"]))
    assert again.returncode == 0 and "wg-vlab unchanged: 2 peer(s)" in again.stdout
    # 4. beta is deregistered: the others remove its peer from their live interfaces.
    with server.client() as client:
        assert client.delete("/api/hosts/beta").json()["deleted"] is True
    for host in ("alpha", "gamma"):
        done = vlab(the_lab, server, host, "vpn", "sync", "--host-dir", str(out[host]))
        assert done.returncode == 0 and "wg-vlab updated: 1 peer(s) (" in done.stdout
        assert set(live_peers(the_lab, host)) == {keys[h] for h in ("alpha", "gamma")
                                                  if h != host}
    assert not ping(the_lab, "alpha", addresses["beta"])
    ping_until(the_lab, "alpha", addresses["gamma"])
    # 5. A failed apply is retried: delta registers with an endpoint name alpha cannot
    #    resolve yet. alpha's sync applies the rest, says what failed and exits 1; the live
    #    interface has no delta, so the next sync applies it once the name resolves.
    _, delta = generate_keypair()
    with server.client() as client:
        client.post("/api/hosts", json={
            "name": "delta", "public_key": delta, "endpoint": "delta.mesh.test:51820",
            "role": "targets", "target_config": {}}).raise_for_status()
    failed = vlab(the_lab, server, "alpha", "vpn", "sync", "--host-dir", str(out["alpha"]))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "add peer delta" in failed.stderr and "delta.mesh.test:51820" in failed.stderr
    assert "partly updated" in failed.stdout and "unchanged" not in failed.stdout
    assert delta not in live_peers(the_lab, "alpha")
    the_lab.hosts_file("alpha", f"{LAN}.14 delta.mesh.test\n")
    retried = vlab(the_lab, server, "alpha", "vpn", "sync", "--host-dir", str(out["alpha"]))
    assert retried.returncode == 0, retried.stderr
    assert "wg-vlab updated: 2 peer(s) (delta, gamma)" in retried.stdout
    endpoint = parse_dump(the_lab.run("alpha", "wg", "show", "wg-vlab", "dump").stdout
                          ).peers[delta].endpoint
    assert endpoint == f"{LAN}.14:51820"
    final = vlab(the_lab, server, "alpha", "vpn", "sync", "--host-dir", str(out["alpha"]))
    assert final.returncode == 0 and "wg-vlab unchanged" in final.stdout
    # 6. A reboot while the API is down: wg-vlab is gone and the API cannot be reached. The
    #    sync brings the interface up with the last known peers (and exits 1, to run again).
    the_lab.reboot_interface("alpha")
    down = vlab(the_lab, server, "alpha", "vpn", "sync", "--host-dir", str(out["alpha"]),
                VLAB_URL=f"http://{LAN}.1:1")
    assert down.returncode == 1 and "reconciled with the last known peers" in down.stderr
    assert "wg-vlab updated: 2 peer(s) (delta, gamma)" in down.stdout
    assert set(live_peers(the_lab, "alpha")) == {keys["gamma"], delta}
    ping_until(the_lab, "gamma", addresses["alpha"])
