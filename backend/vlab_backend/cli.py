"""The server's `vlab` commands: `serve`, `user add`, `host init` and `vpn sync`.

The one `vlab` entry point (`vlab_kernel.cli`) registers them with `add_commands`. This module
imports only the standard library and the runner registry at load, so that every `vlab`
command stays quick; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlab_backend.runners import runner_names
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import forget_server, record_server, running_server
from vlab_kernel.defaults import DEFAULT_HOST, DEFAULT_PORT
from vlab_kernel.errors import UsageError

if TYPE_CHECKING:
    import socket

    import uvicorn

    from vlab_backend.config import Settings


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


def cmd_host_init(args: argparse.Namespace) -> int:
    """Write a host's Nomad client config, target config and WireGuard keys; register it."""
    from vlab_backend.hosts.sdk import init_host
    from vlab_backend.targets import TargetConfigError

    try:
        files = init_host(Path(args.targets), Path(args.out), minimal=args.minimal,
                          name=args.name)
    except TargetConfigError as exc:
        raise UsageError(str(exc)) from None
    for path in files.written:
        print(f"wrote {path}")
    if args.no_register:
        return 0
    with VlabClient() as client:
        host = client.request("POST", "/api/hosts", json={
            "name": files.name, "public_key": files.public_key, "endpoint": args.endpoint,
            "minimal": args.minimal, "targets": files.targets}).json()
    (Path(args.out) / "wireguard" / "address").write_text(host["mesh_address"] + "\n")
    print(f"registered {files.name}: mesh address {host['mesh_address']}, targets "
          f"{', '.join(files.targets)}")
    return 0


def cmd_vpn_sync(args: argparse.Namespace) -> int:
    """One reconciliation of this host's WireGuard configuration with the shared database."""
    import socket

    from vlab_backend.hosts.vpn import sync

    host_dir = Path(args.host_dir)
    with VlabClient() as client:
        hosts = client.get_json("/api/hosts")
    try:
        result = sync(hosts, args.name or socket.gethostname(),
                      host_dir / "wireguard" / "private.key",
                      Path(args.config) if args.config else host_dir / "wireguard" / "wg-vlab.conf",
                      interface=args.interface)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    state = "updated" if result.changed else "unchanged"
    applied = " and applied" if result.applied else ""
    print(f"{result.config_path} {state}{applied}: {len(result.peers)} peer(s)"
          + (f" ({', '.join(result.peers)})" if result.peers else ""))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the server's commands to the `vlab` parser's sub-commands."""
    # Flags left out keep the settings' own value (environment, else default): None here.
    serve = sub.add_parser("serve", help="run the API and the scheduler")
    serve.add_argument("--host", help=f"address to listen on (default: $VLAB_HOST, else "
                                      f"{DEFAULT_HOST})")
    serve.add_argument("--port", type=int, help=f"port to listen on (default: $VLAB_PORT, "
                                                f"else {DEFAULT_PORT})")
    serve.add_argument("--data-dir", help="database, models, jobs and artifacts (default: "
                                          "$VLAB_DATA_DIR, else ~/.local/share/vlab)")
    serve.add_argument("--runner", choices=runner_names(),
                       help="where jobs run (default: $VLAB_RUNNER, else local)")
    serve.add_argument("--targets", help="dAIEdge target configuration file (JSON)")
    serve.add_argument("--warm-workers", action=argparse.BooleanOptionalAction,
                       help="keep an engine process per instance to fork harness runs from "
                            "(default: on; $VLAB_WARM_WORKERS=0 turns it off)")
    serve.add_argument("--forwarded-allow-ips", metavar="ADDRESSES",
                       help="proxies whose X-Forwarded-For/-Proto headers are trusted: "
                            "comma-separated addresses or networks, or '*' (default: "
                            "$VLAB_FORWARDED_ALLOW_IPS, else none)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="add a user (password read from stdin)")
    add.add_argument("email")
    add.add_argument("--admin", action="store_true")
    add.set_defaults(func=cmd_user_add)

    host = sub.add_parser("host", help="host SDK")
    host_sub = host.add_subparsers(dest="host_command", required=True)
    init = host_sub.add_parser("init", help="prepare this host to join the cluster")
    init.add_argument("--targets", required=True, help="dAIEdge target configuration file")
    init.add_argument("--out", required=True, help="directory for the generated files")
    init.add_argument("--minimal", action="store_true",
                      help="a host that runs only the VPN service and benchmark jobs")
    init.add_argument("--name", help="host name (default: this machine's)")
    init.add_argument("--endpoint", default="", help="public HOST:PORT of its WireGuard")
    init.add_argument("--no-register", action="store_true",
                      help="write the files without registering the host")
    init.set_defaults(func=cmd_host_init)

    vpn = sub.add_parser("vpn", help="WireGuard mesh")
    vpn_sub = vpn.add_subparsers(dest="vpn_command", required=True)
    vpn_sync = vpn_sub.add_parser("sync", help="reconcile this host's WireGuard config once")
    vpn_sync.add_argument("--host-dir", default=".", help="the `vlab host init --out` dir")
    vpn_sync.add_argument("--name", help="host name (default: this machine's)")
    vpn_sync.add_argument("--config", help="config file (default: HOST_DIR/wireguard/"
                          "wg-vlab.conf)")
    vpn_sync.add_argument("--interface", default="wg-vlab")
    vpn_sync.set_defaults(func=cmd_vpn_sync)
