"""The server's `vlab` commands (`vlab_backend.cli`), reached through the one `vlab` entry
point: `serve` builds its settings once from the environment and its flags; `user add`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import vlab_backend.api
from tests.kernel.test_cli import one_error_line
from tests.server import LiveServer
from vlab_backend.config import Settings
from vlab_backend.runners import runner_names
from vlab_kernel.cli import SERVER_COMMANDS, build_parser, main
from vlab_kernel.defaults import DEFAULT_HOST, DEFAULT_PORT


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """What `vlab serve` would run: its settings and uvicorn's arguments (nothing listens)."""
    seen: dict[str, Any] = {}
    for name in ("VLAB_HOST", "VLAB_PORT", "VLAB_RUNNER", "VLAB_WARM_WORKERS",
                 "VLAB_TARGETS_FILE", "VLAB_FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLAB_DATA_DIR", str(tmp_path / "data"))

    def create_app(settings: Settings) -> str:
        seen["settings"] = settings
        return "app"

    def run(server: uvicorn.Server, sockets: Any = None) -> None:
        config = server.config
        seen.update(app=config.app, host=config.host, port=config.port,
                    proxy_headers=config.proxy_headers,
                    forwarded_allow_ips=config.forwarded_allow_ips)

    monkeypatch.setattr(vlab_backend.api, "create_app", create_app)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    def lock_data_dir(self: Settings) -> int:  # the directories, without the lock
        self.ensure_dirs()
        return 0

    monkeypatch.setattr(Settings, "lock_data_dir", lock_data_dir)
    return seen


def test_serve_without_flags_takes_the_settings_defaults(served: dict[str, Any],
                                                         tmp_path: Path) -> None:
    assert main(["serve"]) == 0
    settings = served["settings"]
    assert (settings.host, settings.port, settings.runner) == (DEFAULT_HOST, DEFAULT_PORT,
                                                               "local")
    assert settings.warm_workers is True  # fast by default
    assert settings.data_dir == tmp_path / "data"
    assert (served["host"], served["port"]) == (DEFAULT_HOST, DEFAULT_PORT)


def test_serve_flags_override_the_environment(served: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_WARM_WORKERS", "0")
    monkeypatch.setenv("VLAB_PORT", "9100")
    assert main(["serve"]) == 0
    assert served["settings"].warm_workers is False and served["port"] == 9100
    assert main(["serve", "--warm-workers", "--port", "9200", "--host", "0.0.0.0",
                 "--data-dir", str(tmp_path / "other")]) == 0
    settings = served["settings"]
    assert settings.warm_workers is True and (served["host"], served["port"]) == ("0.0.0.0",
                                                                                  9200)
    assert settings.data_dir == tmp_path / "other"
    monkeypatch.delenv("VLAB_WARM_WORKERS")
    assert main(["serve", "--no-warm-workers"]) == 0
    assert served["settings"].warm_workers is False


def test_serve_trusts_no_proxy_headers_unless_told(served: dict[str, Any]) -> None:
    assert main(["serve"]) == 0
    assert served["proxy_headers"] is False
    assert main(["serve", "--forwarded-allow-ips", "10.0.0.0/8"]) == 0
    assert served["proxy_headers"] is True and served["forwarded_allow_ips"] == "10.0.0.0/8"


def test_serve_refuses_a_bad_target_file_in_one_line(
        served: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--targets", str(tmp_path / "none.json")]) == 1
    assert "none.json" in one_error_line(capsys.readouterr().err)
    assert "settings" not in served


def test_a_bad_setting_is_one_line(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VLAB_PORT", "eighty")
    assert main(["serve"]) == 1
    assert "invalid setting: port" in one_error_line(capsys.readouterr().err)


def test_runner_choices_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for name in runner_names():
        assert parser.parse_args(["serve", "--runner", name]).runner == name
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--runner", "bogus"])
    refused = capsys.readouterr().err
    assert all(repr(name) in refused for name in runner_names())


def test_the_server_commands_are_the_ones_the_client_knows() -> None:
    """Without the server the client answers for exactly these (`SERVER_COMMANDS`)."""
    parser = build_parser()
    arguments = {"serve": [], "user": ["add", "a@b.org"], "host": ["init", "--targets", "t",
                                                                   "--out", "o"],
                 "vpn": ["sync"]}
    assert set(arguments) == set(SERVER_COMMANDS)
    for command, rest in arguments.items():
        assert parser.parse_args([command, *rest]).func.__module__ == "vlab_backend.cli"


def test_user_add_reads_the_password_from_stdin(server: LiveServer) -> None:
    done = server.cli("user", "add", "Ada@Example.org", stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    assert "user ada@example.org added" in done.stdout
    again = server.cli("user", "add", "ada@example.org", stdin="correct horse battery\n")
    assert again.returncode == 1 and "already exists" in one_error_line(again.stderr)
    short = server.cli("user", "add", "bob@example.org", stdin="short\n")
    assert "at least 8 characters" in one_error_line(short.stderr)
    login = httpx.post(server.url + "/api/users/login",
                       json={"email": "ada@example.org", "password": "correct horse battery"})
    assert login.status_code == 200
    token = login.json()["access_token"]
    mine = httpx.get(server.url + "/api/benchmarks",
                     headers={"Authorization": f"Bearer {token}"}).json()
    assert mine["count"] == 0  # the admin's benchmarks are not hers
    refreshed = httpx.post(server.url + "/api/users/token/refresh",
                           json={"refresh": login.json()["refresh_token"]})
    assert refreshed.status_code == 200 and refreshed.json()["access"]
    wrong = httpx.post(server.url + "/api/users/login",
                       json={"email": "ada@example.org", "password": "nope nope"})
    assert wrong.status_code == 401


def test_a_second_server_on_the_same_data_dir_is_refused(server: LiveServer) -> None:
    done = server.cli("serve", "--port", "9", "--data-dir", str(server.data_dir))
    assert done.returncode == 1
    assert one_error_line(done.stderr) == (
        f"vlab: error: a VLab server is already running for this data dir at {server.url}; "
        "use it, or stop it first")


def _server_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every server command and sub-command's parser, by its command line."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    if prefix or name in SERVER_COMMANDS:
                        found[f"{prefix} {name}".strip()] = child
                        walk(child, f"{prefix} {name}".strip())

    walk(build_parser(), "")
    return found


def test_every_server_command_explains_itself_and_its_defaults() -> None:
    """`vlab serve|user add|host init|vpn sync --help`: a description, help for every
    option, and the default of every option that has one."""
    parsers = _server_parsers()
    assert {"serve", "user", "user add", "host", "host init", "vpn", "vpn sync"} <= set(parsers)
    for command, parser in parsers.items():
        text = parser.format_help()
        description = " ".join(text.split("\n\n")[1].split())
        assert len(description) > 60 and not description.startswith(
            ("positional", "options")), f"vlab {command} --help has no description:\n{text}"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"vlab {command}: {action.dest} has no help"
            if action.option_strings and not action.required:
                assert "default:" in (action.help or "") or action.default not in (
                    None, False), f"vlab {command}: {action.dest} does not say its default"
        # The formatter shows the defaults that options have of their own.
        if command == "serve":
            assert "(default: info)" in text and "(default: $VLAB_PORT, else 8765)" in text
        if command == "vpn sync":
            assert "(default: wg-vlab)" in text and "(default: .)" in text


def test_server_help_runs_as_a_user_runs_it() -> None:
    done = subprocess.run([sys.executable, "-m", "vlab_kernel.cli", "host", "init", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "WireGuard key pair" in done.stdout and "(default: this machine's)" in done.stdout
