"""The warm worker and its stdlib-only client, on a real worker process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vlab_backend.runners import warm_client
from vlab_backend.runners.warm import parse_reply, send_request

CLIENT = str(Path(warm_client.__file__).resolve())


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "worker.sock"
    # Started from tmp_path, which is then on its module path: the tests' modules live there.
    proc = subprocess.Popen([sys.executable, "-m", "vlab_backend.runners.warm", str(path), ""],
                            cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), "the warm worker did not start"
    yield path
    proc.terminate()
    proc.wait(timeout=10)


def write_module(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.py").write_text(body)


def test_client_without_site_packages_runs_a_module_in_a_fork(worker: Path,
                                                              tmp_path: Path) -> None:
    write_module(tmp_path, "probe", "import os, sys\n"
                 "print('parent', os.getppid(), 'warm', os.environ['VLAB_WARM_WORKER'])\n"
                 "print('args', *sys.argv[1:])\n"
                 "print('to stderr', file=sys.stderr)\n"
                 "sys.exit(3)\n")
    done = subprocess.run([sys.executable, "-I", "-S", CLIENT, str(worker), "probe", "a", "b"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    workers = [p.pid for p in psutil.process_iter(["cmdline"])
               if str(worker) in (p.info["cmdline"] or [])]
    assert f"parent {workers[0]} warm 1" in done.stdout
    assert "args a b" in done.stdout
    assert done.stderr == "to stderr\n"


def test_a_preloaded_module_runs_afresh_without_warnings(worker: Path, tmp_path: Path) -> None:
    # The worker imported the harness already; its error output is the user's error.log.
    done = subprocess.run([sys.executable, "-I", "-S", CLIENT, str(worker),
                           "vlab_backend.harness", "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: python -m vlab_backend.harness" in done.stdout
    assert done.stderr == ""


def test_client_falls_back_to_a_plain_interpreter(tmp_path: Path) -> None:
    write_module(tmp_path, "probe", "import os\nprint('warm' in os.environ.get("
                 "'VLAB_WARM_WORKER', ''))\n")
    done = subprocess.run([sys.executable, CLIENT, str(tmp_path / "absent.sock"), "probe"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False"


def request_run(worker: Path, tmp_path: Path, detached: bool
                ) -> tuple[socket.socket, psutil.Process]:
    write_module(tmp_path, "sleeper", "import time\ntime.sleep(30)\n")
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(str(worker))
    log = os.open(tmp_path / "run.log", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        send_request(connection, {"module": "sleeper", "args": [], "cwd": str(tmp_path),
                                  "env": {}, "detached": detached,
                                  "pid_file": str(tmp_path / "pid")}, [log, log, log])
    finally:
        os.close(log)
    word, values = parse_reply(connection.makefile("rb").readline())
    assert word == "pid"
    run = psutil.Process(int(values[0]))
    assert run.create_time() == pytest.approx(float(values[1]))
    # Written by the run itself before the worker answered.
    assert (tmp_path / "pid").read_text() == f"{values[0]}:{values[1]}\n"
    return connection, run


def test_a_tied_run_dies_with_its_client(worker: Path, tmp_path: Path) -> None:
    connection, run = request_run(worker, tmp_path, detached=False)
    connection.close()
    _gone, alive = psutil.wait_procs([run], timeout=10)
    assert not alive


def test_a_detached_run_outlives_its_connection(worker: Path, tmp_path: Path) -> None:
    connection, run = request_run(worker, tmp_path, detached=True)
    connection.close()
    time.sleep(0.5)
    assert run.is_running() and run.status() != psutil.STATUS_ZOMBIE
    os.killpg(run.pid, 9)  # the run leads its own process group, as cancel expects
    _gone, alive = psutil.wait_procs([run], timeout=10)
    assert not alive


def worker_process(path: Path) -> psutil.Process:
    return next(p for p in psutil.process_iter(["cmdline"])
                if str(path) in (p.info["cmdline"] or []))


def test_runs_do_not_keep_a_dead_workers_socket_answering(worker: Path,
                                                          tmp_path: Path) -> None:
    connection, run = request_run(worker, tmp_path, detached=True)
    worker_process(worker).kill()
    time.sleep(0.2)
    # The run lives on, but holds neither the listening socket nor its connection: a client
    # is refused at once (and falls back to a cold start) instead of waiting forever.
    assert run.is_running()
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(worker))
    assert connection.recv(1) == b""
    os.killpg(run.pid, 9)


def test_the_client_stops_its_run_when_the_worker_dies(worker: Path, tmp_path: Path) -> None:
    write_module(tmp_path, "sleeper", "import time\ntime.sleep(30)\n")
    client = subprocess.Popen([sys.executable, "-I", "-S", CLIENT, str(worker), "sleeper"],
                              cwd=tmp_path)
    parent = worker_process(worker)
    deadline = time.monotonic() + 30
    while not parent.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (run,) = parent.children()
    parent.kill()
    assert client.wait(timeout=30) == 1
    _gone, alive = psutil.wait_procs([run], timeout=10)
    assert not alive
