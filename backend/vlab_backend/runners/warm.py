"""Warm workers: one process per target instance that has already imported the engines and
forks a fresh child for every harness run.

A job's harness then skips interpreter start-up and engine imports (0.3-0.5 s for ONNX Runtime
or OpenVINO) yet cannot inherit another job's state: the warm process never runs a job itself,
and every run is a new fork of it. The client (`warm_client`) passes its standard streams over
the Unix socket; if it goes away (cancel, time limit), the child is killed.

    python -m vlab_backend.runners.warm SOCKET CORES
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

PRELOADED = ("numpy", "psutil", "onnxruntime", "openvino", "ai_edge_litert.interpreter",
             "vlab_backend.pipeline.job",
             "vlab_backend.harness.__main__", "vlab_backend.engines.onnxruntime_engine",
             "vlab_backend.engines.openvino_engine", "vlab_backend.engines.tflite_engine")


def preload() -> None:
    import importlib

    for name in PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _run_child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the requested module's process, then exit."""
    os.setsid()
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["VLAB_WARM_WORKER"] = "1"
    sys.argv = [request["module"], *request["args"]]
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve_connection(connection: socket.socket) -> None:
    with connection:
        message, fds, _flags, _addr = socket.recv_fds(connection, 1 << 20, 3)
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            connection.close()
            _run_child(request, fds)
        for fd in fds:
            os.close(fd)
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")

        def watch_client() -> None:
            # The client closes its end only when it dies: then the run must stop too.
            with contextlib.suppress(OSError):
                connection.recv(1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the child leads its own process group

        threading.Thread(target=watch_client, daemon=True).start()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"exit": code}).encode() + b"\n")


def serve(socket_path: Path, cores: set[int]) -> None:
    if cores:
        os.sched_setaffinity(0, cores)
    preload()
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    socket_path.chmod(0o600)
    server.listen(8)
    server.settimeout(0.5)
    runs: list[threading.Thread] = []
    # Stop taking work when told to or when the server is gone; runs in flight finish first,
    # so that a server restart re-adopts them as it does without warm workers.
    while not stop.is_set() and os.getppid() == parent:
        try:
            connection, _ = server.accept()
        except TimeoutError:
            continue
        connection.settimeout(None)
        run = threading.Thread(target=_serve_connection, args=(connection,))
        run.start()
        runs = [r for r in runs if r.is_alive()] + [run]
    server.close()
    socket_path.unlink(missing_ok=True)
    for run in runs:
        run.join()



class WarmPool:
    """The warm workers of one server: one per core set, started on demand."""

    def __init__(self) -> None:
        import subprocess
        import tempfile

        self._subprocess = subprocess
        self._directory = Path(tempfile.mkdtemp(prefix="vlab-warm-", dir="/tmp"))
        self._workers: dict[str, tuple[Any, Path]] = {}

    def socket_for(self, cores: list[int]) -> Path:
        key = "-".join(str(c) for c in sorted(cores)) or "all"
        worker = self._workers.get(key)
        if worker is None or worker[0].poll() is not None:
            path = self._directory / f"{key}.sock"
            proc = self._subprocess.Popen(
                [sys.executable, "-m", "vlab_backend.runners.warm", str(path),
                 ",".join(str(c) for c in cores)], stdin=self._subprocess.DEVNULL)
            worker = (proc, path)
            self._workers[key] = worker
        return worker[1]

    def close(self) -> None:
        for proc, _path in self._workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _path in self._workers.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self._workers.clear()
        import shutil

        shutil.rmtree(self._directory, ignore_errors=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), {int(c) for c in sys.argv[2].split(",") if c})
