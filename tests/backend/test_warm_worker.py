"""The warm worker and its stdlib-only client, on a real worker process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.models import conv_model, engine_package
from vlab_backend import engines
from vlab_backend.engines.base import EngineSpec
from vlab_backend.runners import warm, warm_client
from vlab_backend.runners.warm import engine_preloads, parse_reply, send_request

CLIENT = str(Path(warm_client.__file__).resolve())


def start_worker(path: Path, cwd: Path, log: Path,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A warm worker for all cores, once it accepts connections (its socket's path exists only
    from then on). Started from `cwd`, which is then on its module path: the tests' modules
    live there.

    Without OpenVINO's telemetry: importing OpenVINO otherwise forks a process that tries to
    send it, for up to 3 s, which would count among the worker's children and hold its
    listening socket if forked after the socket exists."""
    env = {**(env or os.environ), "CI": "true"}
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "vlab_backend.runners.warm", str(path),
                                 ""], cwd=cwd, env=env, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, f"the warm worker exited: {log.read_text()}"
        assert time.monotonic() < deadline, "the warm worker did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "worker.sock"
    proc = start_worker(path, tmp_path, tmp_path / "worker.log")
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
    parent = worker_process(worker)
    parent.kill()
    psutil.wait_procs([parent], timeout=10)
    # The run lives on, but holds neither the listening socket nor its connection: a client
    # is refused at once (and falls back to a cold start) instead of waiting forever.
    assert run.is_running()
    with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(worker))
    assert connection.recv(1) == b""
    os.killpg(run.pid, 9)


def test_the_client_stops_its_run_when_the_worker_dies(worker: Path, tmp_path: Path) -> None:
    # The run says who it is (in pid order, it might not be the worker's first child).
    write_module(tmp_path, "sleeper", "import os, pathlib, time\n"
                 "pathlib.Path('run.tmp').write_text(str(os.getpid()))\n"
                 "os.replace('run.tmp', 'run.pid')\n"
                 "time.sleep(30)\n")
    client = subprocess.Popen([sys.executable, "-I", "-S", CLIENT, str(worker), "sleeper"],
                              cwd=tmp_path)
    parent = worker_process(worker)
    deadline = time.monotonic() + 30
    while not (tmp_path / "run.pid").exists():
        assert time.monotonic() < deadline and client.poll() is None, "the run did not start"
        time.sleep(0.05)
    run = psutil.Process(int((tmp_path / "run.pid").read_text()))
    assert run.ppid() == parent.pid
    parent.kill()
    assert client.wait(timeout=30) == 1
    _gone, alive = psutil.wait_procs([run], timeout=10)
    assert not alive


def test_a_worker_whose_server_died_while_it_started_leaves(tmp_path: Path) -> None:
    """The server's pid comes on the command line: a worker that finds another parent once
    its engines are loaded (its server killed meanwhile) never listens, and exits."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = tmp_path / "orphan.sock"
    with (tmp_path / "orphan.log").open("wb") as sink:
        orphan = subprocess.Popen([sys.executable, "-m", "vlab_backend.runners.warm", "--",
                                   str(path), "", str(gone.pid)], cwd=tmp_path,
                                  env={**os.environ, "CI": "true"}, stdout=sink, stderr=sink)
    assert orphan.wait(timeout=120) == 0
    assert not path.exists()


def test_engine_preloads_follow_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    preloads = engine_preloads()
    for module in ("vlab_backend.engines.onnxruntime_engine", "onnxruntime", "openvino",
                   "ai_edge_litert.interpreter", "vlab_backend.engines.synthetic_engine"):
        assert module in preloads
    specs = {
        "cpu": EngineSpec("cpu", "CPU", ("onnx",), runtime_modules=("numpy.fft",)),
        "npu": EngineSpec("npu", "NPU", ("onnx",), runtime_modules=("vlab_no_npu_driver",)),
        "gpu": EngineSpec("gpu", "GPU", ("onnx",), runtime_modules=("json",), preload=False),
        "tflm": EngineSpec("tflm", "TFLM", ("tflite",), runtime_modules=("array",),
                           host_cpu=False),
    }
    monkeypatch.setattr(engines, "engine_specs", lambda: specs)
    monkeypatch.setattr(engines, "engine_modules", lambda: {n: f"m_{n}" for n in specs})
    # Adapter modules always (they import their runtime lazily); runtimes where installed and
    # safe to import before a fork; nothing of an engine that never runs on a CPU host.
    assert engine_preloads() == ["m_cpu", "numpy.fft", "m_npu", "m_gpu"]
    assert warm.BASE_PRELOADED[:3] == ("numpy", "numpy.random", "psutil")


def test_a_worker_preloads_an_installed_engine_and_survives_broken_ones(
        tmp_path: Path) -> None:
    site = engine_package(tmp_path / "site")
    # An engine whose runtime is not installed, and one whose runtime fails on import.
    engine_package(site, engine="absent", runtime_modules=("vlab_absent_runtime",))
    engine_package(site, engine="failing", runtime_modules=("vlab_failing_runtime",))
    (site / "vlab_failing_runtime.py").write_text("raise RuntimeError('no device')\n")
    path, log = tmp_path / "worker.sock", tmp_path / "worker.log"
    proc = start_worker(path, tmp_path, log, env={**os.environ, "PYTHONPATH": str(site)})
    try:
        # Preloading ends before the socket exists; the ready line may follow.
        assert log.read_text().splitlines()[0] == ("warm worker: vlab_failing_runtime not "
                                                   "preloaded (RuntimeError: no device)")
        write_module(tmp_path, "probe", "import sys\n"
                     "print(*(m in sys.modules for m in sys.argv[1:]))\n")
        done = subprocess.run([sys.executable, "-I", "-S", CLIENT, str(path), "probe",
                               "vlab_onnxref", "onnx.reference", "vlab_absent"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.stdout.split() == ["True", "True", "True"]
        # The harness forked from the worker finds the engine through the preloaded registry.
        model = conv_model(tmp_path / "m.onnx")
        done = subprocess.run([sys.executable, "-I", "-S", CLIENT, str(path),
                               "vlab_backend.harness", "--engine", "onnxref", "--model",
                               str(model), "--runs", "3", "--out", "out"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["inference_engine"] == "onnxref"
        assert report["worker"]["warm"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_a_pool_starts_its_workers_without_the_servers_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs are forks of the worker: their /proc/<pid>/environ is the worker's start-up one.
    monkeypatch.setenv("VLAB_TOKEN", "vlab_server-token")
    monkeypatch.setenv("NOMAD_TOKEN", "nomad-acl-token")
    monkeypatch.setenv("CI", "true")  # no OpenVINO telemetry (see start_worker)
    pool = warm.WarmPool()
    try:
        path = pool.socket_for([])
        deadline = time.monotonic() + 60
        while not path.exists():
            assert time.monotonic() < deadline, "the warm worker did not start"
            time.sleep(0.05)
        environment = worker_process(path).environ()
    finally:
        pool.close()
    assert "PATH" in environment
    assert not {"VLAB_TOKEN", "NOMAD_TOKEN"} & set(environment)
