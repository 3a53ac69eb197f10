"""The server's `vlab` commands: `serve`, `user add`, `host init` and `vpn sync`.

The one `vlab` entry point (`vlab_kernel.cli`) registers them with `add_commands`. This module
imports only the standard library and the runner registry at load, so that every `vlab`
command stays quick; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlab_backend.runners import runner_names
from vlab_kernel.client import VlabClient, error_message
from vlab_kernel.connection import forget_server, record_server, running_server
from vlab_kernel.defaults import DEFAULT_HOST, DEFAULT_PORT
from vlab_kernel.errors import UsageError

if TYPE_CHECKING:
    import socket

    import uvicorn

    from vlab_backend.config import Settings
    from vlab_backend.hosts.vpn import SyncResult


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the flags given (None: not given); a bad value,
    from either, is a usage error."""
    from pydantic import ValidationError

    from vlab_backend.config import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors())
        raise UsageError(f"invalid setting: {problems}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """The API and the scheduler, with settings from the environment and these flags."""
    import uvicorn

    from vlab_backend.api import create_app
    from vlab_backend.store.database import Database, StoreUnusable
    from vlab_backend.targets import TargetConfigError, load_target_config

    settings = load_settings(host=args.host, port=args.port, runner=args.runner,
                             data_dir=args.data_dir, targets_file=args.targets,
                             warm_workers=args.warm_workers,
                             simulated_boards=args.simulated_boards,
                             forwarded_allow_ips=args.forwarded_allow_ips)
    if settings.targets_file is not None:
        try:
            load_target_config(settings.targets_file)
        except TargetConfigError as exc:
            raise UsageError(str(exc)) from exc
    try:
        settings.lock_data_dir()
    except RuntimeError as exc:
        running = running_server(settings.data_dir)
        if running is not None:
            raise UsageError(f"a VLab server is already running for this data dir at "
                             f"{running.url}; use it, or stop it first") from None
        raise UsageError(str(exc)) from None
    store = Database(settings.db_url)
    try:  # before uvicorn, which would print the start-up failure as a long traceback
        store.check()
    except StoreUnusable as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.dispose()
    # Proxy headers only from the proxies named: uvicorn would otherwise believe 127.0.0.1
    # (or $FORWARDED_ALLOW_IPS), and any local client could pose as any address.
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=args.log_level, timeout_graceful_shutdown=5,
                            proxy_headers=bool(settings.forwarded_allow_ips),
                            forwarded_allow_ips=settings.forwarded_allow_ips or [])
    recorded_server(config, settings.server_file).run()
    return 0


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine uses: a wildcard address means the loopback one."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def recorded_server(config: uvicorn.Config, record: Path) -> uvicorn.Server:
    """A uvicorn server that records its URL in `record` once it accepts requests and removes
    the record when it stops accepting them (before it re-raises a SIGTERM, which would end
    the process before any `finally` of ours)."""
    import uvicorn

    class RecordedServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                record_server(record, local_url(self.config.host, self.config.port))

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            forget_server(record)
            await super().shutdown(sockets)

    return RecordedServer(config)


def cmd_user_add(args: argparse.Namespace) -> int:
    """Add an account straight to the store: an administrator's command on the server."""
    from vlab_backend.auth import create_user
    from vlab_backend.store.database import Database

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    settings = load_settings()
    settings.ensure_dirs()
    db = Database(settings.db_url)
    db.migrate()
    try:
        with db.session() as session:
            create_user(session, args.email, password, is_admin=args.admin)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        db.dispose()
    print(f"user {args.email.strip().lower()} added" + (" (admin)" if args.admin else ""))
    return 0


def print_mesh(result: SyncResult, interface: str) -> None:
    """What a reconciliation of the mesh did, one line (plus the commands of a plan, and each
    failure on stderr)."""
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    peers = f"{len(result.peers)} peer(s)" + (f" ({', '.join(result.peers)})"
                                              if result.peers else "")
    if result.dry_run:
        print(f"{interface} plan: {len(result.steps)} change(s), {peers}")
        for step in result.steps:
            print(f"  {step}")
        return
    for failure in result.failures:
        print(f"vlab: {interface}: {failure}", file=sys.stderr)
    if result.failures and os.geteuid() != 0:
        print(f"vlab: hint: changing {interface} needs root (or CAP_NET_ADMIN); --plan / "
              "--mesh plan prints the commands instead", file=sys.stderr)
    if result.failures:
        print(f"{interface} partly updated ({len(result.failures)} of {len(result.steps)} "
              f"change(s) failed; retried at the next sync): {peers}")
    else:
        print(f"{interface} {'updated' if result.changed else 'unchanged'}: {peers}")


def bring_up_mesh(hosts: list[dict[str, Any]], name: str, host_dir: Path, config: Path,
                  interface: str, listen_port: int, plan: bool) -> SyncResult:
    """Reconcile the live interface with `hosts` (or plan it), a usage error for a host that
    is not in the list or a key that does not match."""
    from vlab_backend.hosts.vpn import sync
    from vlab_backend.hosts.wireguard import WireGuard, WireGuardError

    try:
        return sync(hosts, name, host_dir / "wireguard" / "private.key", config,
                    interface=interface, listen_port=listen_port,
                    wireguard=WireGuard(interface, dry_run=plan))
    except WireGuardError as exc:
        hint = "" if os.geteuid() == 0 else " (not root: use --plan / --mesh plan)"
        raise UsageError(f"{exc}{hint}") from None
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None


def check_mesh_address(address: str) -> None:
    """A usage error unless `address` is a host address of the mesh network."""
    import ipaddress

    from vlab_backend.hosts.mesh import MESH_NETWORK

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise UsageError(f"--mesh-address {address!r} is not an IP address") from None
    if ip not in MESH_NETWORK or ip in (MESH_NETWORK.network_address,
                                        MESH_NETWORK.broadcast_address):
        raise UsageError(f"--mesh-address {address} is not a host address of {MESH_NETWORK}")


def cmd_host_init(args: argparse.Namespace) -> int:
    """Write a host's Nomad client config, target config and WireGuard keys; register it with
    its whole target configuration and keep the host-scoped credential it gets; bring the
    mesh interface up with the registered peers and put Nomad on the mesh address."""
    import httpx

    from vlab_backend.hosts.sdk import (
        host_token,
        init_host,
        nomad_servers,
        register,
        save_registration,
        write_client_config,
    )
    from vlab_backend.targets import TargetConfigError
    from vlab_kernel.connection import resolve

    if args.targets is None and args.role != "services":
        raise UsageError("--targets FILE is required (only a --role services host may have no "
                         "targets)")
    if args.mesh_address is not None:
        check_mesh_address(args.mesh_address)
    out = Path(args.out)
    try:
        files = init_host(Path(args.targets) if args.targets else None, out,
                          minimal=args.minimal, name=args.name,
                          role="targets" if args.minimal else args.role,
                          data_root=Path(args.data_root) if args.data_root else None,
                          listen_port=args.listen_port)
    except TargetConfigError as exc:
        raise UsageError(str(exc)) from None
    for path in files.written:
        print(f"wrote {path}")
    for volume, path in sorted(files.volumes.items()):
        print(f"host volume {volume}: {path}" + ("" if path.is_dir() else " (create it)"))
    if args.no_register:
        if args.mesh_address is None:
            print("not registered: no mesh address yet, so the mesh is not brought up and "
                  "Nomad keeps its default addresses (run `vlab host init` again once the API "
                  "runs)")
            return 0
        # The first host of a new cluster: its mesh address is the first one (the one its
        # registration will get), so wg-vlab and Nomad are on the mesh from the start.
        files.mesh_address = args.mesh_address
        save_registration(out, {"mesh_address": args.mesh_address})
        print(f"wrote {write_client_config(files, out)} (Nomad on {files.mesh_address}, "
              f"network interface {args.interface}; not registered yet)")
        if args.mesh == "off":
            return 0
        alone = [{"name": files.name, "public_key": files.public_key,
                  "endpoint": args.endpoint or "", "mesh_address": args.mesh_address}]
        result = bring_up_mesh(alone, files.name, out, out / "wireguard" / "wg-vlab.conf",
                               args.interface, args.listen_port, plan=args.mesh == "plan")
        print_mesh(result, args.interface)
        return 1 if result.failures else 0
    # An administrator's token ($VLAB_TOKEN, else the local credential) issues the host's own
    # credential; once the host has one, it re-registers with it.
    connection = resolve(token=os.environ.get("VLAB_TOKEN") or host_token(out))
    with VlabClient(connection) as client:
        try:
            answer = register(client, files, out, endpoint=args.endpoint or "")
        except httpx.HTTPStatusError as exc:
            raise UsageError(f"registration refused: {error_message(exc.response)}") from None
    print(f"registered {files.name} ({files.role}): mesh address {answer['mesh_address']}, "
          f"targets {', '.join(files.targets) or 'none'}")
    if answer.get("host_token"):
        print(f"wrote {out / 'host.token'} (this host's credential: it reads the mesh and "
              "updates this host, nothing else)")
    # The peer list, read as vlab-vpn reads it: with the host's own credential.
    with VlabClient(resolve(url=connection.url, token=host_token(out) or connection.token)
                    ) as client:
        hosts: list[dict[str, Any]] = client.get_json("/api/hosts")
    if args.mesh_address is not None and answer["mesh_address"] != args.mesh_address:
        raise UsageError(f"the API gave {files.name} the mesh address "
                         f"{answer['mesh_address']}, not --mesh-address {args.mesh_address}: "
                         "run `vlab host init` again without --mesh-address, then restart "
                         "Nomad")
    files.mesh_address = answer["mesh_address"]
    files.servers = nomad_servers(hosts)
    print(f"wrote {write_client_config(files, out)} (Nomad on {files.mesh_address}, "
          f"network interface {args.interface})")
    if args.mesh == "off":
        print(f"mesh not brought up (--mesh off): bring {args.interface} up before Nomad "
              "starts (`vlab vpn sync`)")
        return 0
    result = bring_up_mesh(hosts, files.name, out, out / "wireguard" / "wg-vlab.conf",
                           args.interface, args.listen_port, plan=args.mesh == "plan")
    print_mesh(result, args.interface)
    return 1 if result.failures else 0


def cmd_vpn_sync(args: argparse.Namespace) -> int:
    """One reconciliation of this host's live WireGuard interface with the shared database:
    only the differences are applied; what failed is retried at the next sync."""
    import socket

    from vlab_backend.hosts.sdk import host_token, registered_name
    from vlab_backend.hosts.vpn import last_known_hosts, saved_listen_port
    from vlab_kernel.connection import resolve
    from vlab_kernel.errors import ConnectionFailed

    host_dir = Path(args.host_dir)
    name = args.name or registered_name(host_dir) or socket.gethostname()
    config = Path(args.config) if args.config else host_dir / "wireguard" / "wg-vlab.conf"
    listen_port = args.listen_port or saved_listen_port(host_dir)
    # The host's own credential (host init keeps it in the host dir) unless $VLAB_TOKEN says.
    connection = resolve(token=os.environ.get("VLAB_TOKEN") or host_token(host_dir))
    unreachable = None
    try:
        with VlabClient(connection) as client:
            hosts: list[dict[str, Any]] = client.get_json("/api/hosts")
    except ConnectionFailed as exc:
        # At boot the API may not run yet: the mesh comes up with the last known peers, and
        # the sync still fails, so that it is run again.
        known = last_known_hosts(config)
        if known is None:
            raise
        hosts, unreachable = known, exc
    result = bring_up_mesh(hosts, name, host_dir, config, args.interface, listen_port,
                           plan=args.plan)
    print_mesh(result, args.interface)
    if unreachable is not None:
        print(f"vlab: error: {unreachable}; {args.interface} reconciled with the last known "
              f"peers ({config.parent / 'peers.json'})", file=sys.stderr)
        return 1
    return 1 if result.failures else 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the server's commands to the `vlab` parser's sub-commands. Each has a description
    and each option says its default: the `vlab` parser's formatter adds "(default: ...)"
    where an option has a value of its own; options left to the settings say so here."""
    # Flags left out keep the settings' own value (environment, else default): None here.
    serve = sub.add_parser(
        "serve", help="run the API and the scheduler",
        description="Run the VLab API and its scheduler: benchmarks queue per target type and "
        "run on free instances. Without --targets, this machine's cores are the targets "
        "(host-cpu, one instance per core). Each flag overrides its VLAB_* environment "
        "variable; the server records where it listens in <data dir>/server.json, which the "
        "CLI, notebooks and dashboard read.")
    serve.add_argument("--host", help=f"address to listen on (default: $VLAB_HOST, else "
                                      f"{DEFAULT_HOST})")
    serve.add_argument("--port", type=int, help=f"port to listen on (default: $VLAB_PORT, "
                                                f"else {DEFAULT_PORT})")
    serve.add_argument("--data-dir", help="database, models, jobs and artifacts (default: "
                                          "$VLAB_DATA_DIR, else ~/.local/share/vlab)")
    serve.add_argument("--runner", choices=runner_names(),
                       help="where jobs run (default: $VLAB_RUNNER, else local)")
    serve.add_argument("--targets", metavar="FILE",
                       help="dAIEdge target configuration file (JSON) describing the targets "
                            "(default: $VLAB_TARGETS_FILE, else this machine's cores)")
    serve.add_argument("--warm-workers", action=argparse.BooleanOptionalAction,
                       help="keep an engine process per instance to fork harness runs from "
                            "(default: on; $VLAB_WARM_WORKERS=0 turns it off)")
    serve.add_argument("--simulated-boards", action=argparse.BooleanOptionalAction,
                       help="offer the simulated microcontroller boards (TFLite Micro on a "
                            "Cortex-M4 and a Cortex-M7 budget) beside this machine's cores "
                            "when no --targets file is given (default: on; "
                            "$VLAB_SIMULATED_BOARDS=0 turns it off)")
    serve.add_argument("--forwarded-allow-ips", metavar="ADDRESSES",
                       help="proxies whose X-Forwarded-For/-Proto headers are trusted: "
                            "comma-separated addresses or networks, or '*' (default: "
                            "$VLAB_FORWARDED_ALLOW_IPS, else none)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug", "trace"],
                       help="how much the server logs")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="accounts",
                          description="Manage accounts straight in the server's store (an "
                          "administrator's commands, run on the server with its data dir: "
                          "$VLAB_DATA_DIR, else ~/.local/share/vlab).")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    add = user_sub.add_parser(
        "add", help="add a user (password read from stdin)",
        description="Add an account. The password is asked twice on a terminal, else read "
        "as the first line of stdin (e.g. from a secrets manager). Users log in with "
        "`POST /api/users/login` and create API tokens with `vlab token`.")
    add.add_argument("email", help="the account's e-mail address (stored in lower case)")
    add.add_argument("--admin", action="store_true",
                     help="an administrator: sees every benchmark and manages targets "
                          "(default: a plain user)")
    add.set_defaults(func=cmd_user_add)

    host = sub.add_parser("host", help="host SDK",
                          description="Prepare a machine with boards (or cores) to join the "
                          "cluster as a Nomad client in the WireGuard mesh.")
    host_sub = host.add_subparsers(dest="host_command", required=True, metavar="COMMAND")
    init = host_sub.add_parser(
        "init", help="prepare this host to join the cluster",
        description="Write this host's Nomad client configuration, its target configuration "
        "and a WireGuard key pair to --out, then register the host and its targets with the "
        "server (VLAB_URL, VLAB_TOKEN) to get its mesh address, bring the WireGuard mesh "
        "interface up with the registered peers, and put Nomad on the mesh address (start "
        "Nomad after it).")
    init.add_argument("--targets", metavar="FILE",
                      help="dAIEdge target configuration file of this host's targets "
                           "(required, except for a --role services host without boards; "
                           "default: none)")
    init.add_argument("--role", choices=["services", "targets"], default="targets",
                      help="services: this host also runs the API, web, database and gateway "
                           "(node pool vlab-services without boards, and their host volumes); "
                           "targets: benchmark jobs on its boards only")
    init.add_argument("--data-root", metavar="DIR",
                      help="where a services host keeps the service volumes (default: "
                           "$VLAB_HOST_DATA_ROOT, else /var/lib/vlab)")
    init.add_argument("--out", required=True, metavar="DIR",
                      help="directory for the generated files")
    init.add_argument("--minimal", action="store_true",
                      help="the same as --role targets (kept for older scripts; default: off)")
    init.add_argument("--name", help="host name (default: this machine's)")
    init.add_argument("--endpoint", metavar="HOST:PORT",
                      help="public HOST:PORT of its WireGuard, for peers to reach it "
                           "(default: none: the host only dials out)")
    init.add_argument("--no-register", action="store_true",
                      help="write the files without registering the host (default: register)")
    init.add_argument("--mesh-address", metavar="ADDRESS",
                      help="with --no-register, on the first host of a new cluster: bring the "
                           "mesh up on this address (10.77.0.1, the one its registration will "
                           "get), so that Nomad is on the mesh from the start (default: none)")
    init.add_argument("--listen-port", type=int, default=51820, metavar="PORT",
                      help="UDP port of this host's WireGuard interface")
    init.add_argument("--interface", default="wg-vlab",
                      help="the WireGuard interface of the mesh")
    init.add_argument("--mesh", choices=["up", "plan", "off"], default="up",
                      help="once registered: bring the WireGuard interface up with the "
                           "registered peers (up, needs root: kernel WireGuard, else "
                           "wireguard-go), only print the commands (plan), or leave it (off)")
    init.set_defaults(func=cmd_host_init)

    vpn = sub.add_parser("vpn", help="WireGuard mesh",
                         description="The cluster's WireGuard mesh, from the hosts the server "
                         "knows (`vlab host init` registers them).")
    vpn_sub = vpn.add_subparsers(dest="vpn_command", required=True, metavar="COMMAND")
    vpn_sync = vpn_sub.add_parser(
        "sync", help="reconcile this host's WireGuard interface once",
        description="Read the mesh's hosts from the server (VLAB_URL, VLAB_TOKEN, else the "
        "host's own credential), compare them with the live interface (`wg show`), and apply "
        "only the differences: create and bring it up if needed, add, update and remove "
        "peers (by public key). A failed change exits 1 and is retried at the next sync. "
        "When the server cannot be reached, the interface is brought up with the last known "
        "peers (and it exits 1). Run it from a timer (vlab-vpn) to keep the mesh current.")
    vpn_sync.add_argument("--host-dir", default=".", metavar="DIR",
                          help="the `vlab host init --out` directory")
    vpn_sync.add_argument("--name", help="the host's registered name (default: the one "
                                         "`vlab host init` wrote in DIR, else this machine's)")
    vpn_sync.add_argument("--config", metavar="FILE",
                          help="where to record the wg-quick configuration and the peer list "
                               "(default: DIR/wireguard/wg-vlab.conf)")
    vpn_sync.add_argument("--interface", default="wg-vlab",
                          help="the interface to reconcile")
    vpn_sync.add_argument("--listen-port", type=int, metavar="PORT",
                          help="UDP port of the interface (default: the one `vlab host init` "
                               "used, else 51820)")
    vpn_sync.add_argument("--plan", action="store_true",
                          help="print the commands that would reconcile the interface, run "
                               "none (default: apply them)")
    vpn_sync.set_defaults(func=cmd_vpn_sync)
