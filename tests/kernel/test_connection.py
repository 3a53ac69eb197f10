"""One lab, many doors: a server records where it listens in its data dir, and the CLI, the
kernel and the dashboard find it there when VLAB_URL is not set."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server import LiveServer
from vlab_kernel import cli as vlab_cli
from vlab_kernel import connect
from vlab_kernel.connection import forget_server, record_server, resolve, running_server
from vlab_kernel.defaults import DEFAULT_URL


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This user's data dir, with no VLAB_URL or VLAB_TOKEN set."""
    for name in ("VLAB_URL", "VLAB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLAB_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def ended_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_recorded_server_is_found(store: Path) -> None:
    record_server(store / "server.json", "http://127.0.0.1:41234/")
    assert resolve().url == "http://127.0.0.1:41234"
    assert connect().client.connection.url == "http://127.0.0.1:41234"  # the kernel's door


def test_vlab_url_wins(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record_server(store / "server.json", "http://127.0.0.1:41234")
    monkeypatch.setenv("VLAB_URL", "http://lab.example:8765")
    assert resolve().url == "http://lab.example:8765"
    assert resolve(url="http://given:1").url == "http://given:1"


def test_a_stale_or_broken_record_is_ignored(store: Path) -> None:
    record = store / "server.json"
    record.write_text(json.dumps({"url": "http://127.0.0.1:41234", "pid": ended_pid(),
                                  "started_at": "2026-01-01T00:00:00+00:00"}))
    assert running_server(store) is None
    assert resolve().url == DEFAULT_URL
    for broken in ("", "{", "[]", '{"url": "http://x"}', '{"url": "u", "pid": "x", '
                   '"started_at": ""}'):
        record.write_text(broken)
        assert running_server(store) is None, broken


def test_the_record_is_private_whole_and_removed_only_by_its_writer(store: Path) -> None:
    path = store / "server.json"
    written = record_server(path, "http://127.0.0.1:41234")
    assert written.pid == os.getpid()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in store.iterdir()] == ["server.json"]  # no temporary file left
    assert running_server(store) == written

    other = {"url": "http://127.0.0.1:1", "pid": os.getppid(), "started_at": ""}
    path.write_text(json.dumps(other))
    forget_server(path)  # another process's record stays
    assert json.loads(path.read_text()) == other
    record_server(path, "http://127.0.0.1:41234")
    forget_server(path)
    assert not path.exists()


def test_a_wildcard_address_is_recorded_as_the_loopback() -> None:
    from vlab_backend.cli import local_url

    assert local_url("0.0.0.0", 8765) == "http://127.0.0.1:8765"
    assert local_url("::", 8765) == "http://[::1]:8765"
    assert local_url("10.1.2.3", 8765) == "http://10.1.2.3:8765"


def cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`vlab ...` with no VLAB_URL or VLAB_TOKEN: only the data dir to go by."""
    env = {k: v for k, v in os.environ.items() if k not in ("VLAB_URL", "VLAB_TOKEN")}
    env["VLAB_DATA_DIR"] = str(store)
    return subprocess.run([sys.executable, "-m", "vlab_kernel.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_vlab_serve_records_itself_and_other_doors_find_it(tmp_path: Path,
                                                           stop: signal.Signals) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        record = json.loads((server.data_dir / "server.json").read_text())
        assert server.proc is not None
        assert (record["url"], record["pid"]) == (server.url, server.proc.pid)
        assert stat.S_IMODE((server.data_dir / "server.json").stat().st_mode) == 0o600

        targets = cli(server.data_dir, "targets")
        assert targets.returncode == 0, targets.stderr
        assert "host-cpu" in targets.stdout

        second = cli(server.data_dir, "serve", "--port", "1")
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"vlab: error: a VLab server is already running for this data dir at "
            f"{server.url}; use it, or stop it first")
    finally:
        if server.proc is not None:
            server.proc.send_signal(stop)
            server.proc.wait(timeout=30)
    assert not (server.data_dir / "server.json").exists()


@pytest.mark.slow
def test_the_dashboard_uses_the_running_server(server: LiveServer, store: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VLAB_DATA_DIR", str(server.data_dir))

    def no_second_server(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"started a server: {args}")

    monkeypatch.setattr(vlab_cli.subprocess, "Popen", no_second_server)
    with vlab_cli.backend_running():  # what `vlab dashboard` and `vlab sweep` run within
        assert resolve().url == server.url
    assert "VLab backend running" not in capsys.readouterr().err
