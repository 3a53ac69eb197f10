"""Warm workers: one process per target instance that has already imported the engines and
forks a fresh child for every run.

The local runner asks the worker of the job's instance for the pipeline directly over its Unix
socket; the pipeline's manager step asks again for the harness through `warm_client`. Both then
skip interpreter start-up and imports (0.3-0.5 s for ONNX Runtime or OpenVINO) yet cannot
inherit another job's state: the warm process never runs a job itself, and every run is a new
fork of it. A request says whether the run is tied to the requesting connection: a harness run
is killed when its client goes away (cancel, time limit); a pipeline run is detached, so that
it survives a crash of the server and is re-adopted like any other pipeline.

Protocol, one connection per run: the client sends a marshal-encoded request
`{"module", "args", "cwd", "env", "detached"}` (and optionally `"pid_file"`, written by the run
as `<pid>:<start time>` before the worker answers) with its stdin, stdout and stderr attached
(SCM_RIGHTS); the worker answers `pid <pid> <start time>` once the child leads its own process
group and `exit <code>` when it has ended.

    python -m vlab_backend.runners.warm [--] SOCKET CORES
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import runpy
import signal
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from vlab_backend.pipeline import isolation

# What every warm worker imports before it forks, whatever the engines: the pipeline, the
# harness and their dependencies. The engines add theirs (`engine_preloads`).
BASE_PRELOADED = ("numpy", "numpy.random", "psutil", "vlab_backend.pipeline.job",
                  "vlab_backend.harness.__main__")


def engine_preloads() -> list[str]:
    """The modules of the registered engines that run on a CPU host: each adapter module
    and, where the spec allows preloading and the runtime is installed, its runtime modules.
    Imports the adapter modules (and scans the entry points) to find them."""
    from vlab_backend.engines import engine_modules, engine_specs

    modules = engine_modules()
    preloads = []
    for name, spec in engine_specs().items():
        if not spec.host_cpu:
            continue
        preloads.append(modules[name])
        if spec.preload and spec.missing_runtime() is None:
            preloads.extend(spec.runtime_modules)
    return preloads


def preload() -> None:
    import importlib

    for name in BASE_PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from vlab_backend.harness.__main__ import argument_parser

    # An engine whose runtime fails to import is not preloaded; its runs fail, or load it
    # themselves, as they would without a warm worker. The worker itself never fails on it.
    for name in engine_preloads():
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(f"warm worker: {name} not preloaded ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
    argument_parser().format_help()  # compiles argparse's regular expressions into re's cache
    # Everything loaded so far is never collected: children then do not touch (and copy) the
    # parent's pages when their garbage collector runs.
    gc.collect()
    gc.freeze()


# Descriptors the worker holds for others: its listening socket, the connections of runs in
# flight, streams in transit and handshake pipes. A fork inherits them all; each run closes
# those that are not its own, so that no run keeps another's connection (which would delay the
# end of that run) or the listening socket (which would keep a dead worker's socket answering).
_HELD: set[int] = set()


def _hold(*fds: int) -> None:
    _HELD.update(fds)


def _release(*fds: int) -> None:
    for fd in fds:
        _HELD.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def _run_child(request: dict[str, Any], connection: socket.socket, fds: list[int],
               ready: int, client: int) -> None:
    """In the forked child: become the requested module's process, then exit."""
    code = 1
    try:
        for fd in _HELD - {connection.fileno(), *fds, ready}:
            with contextlib.suppress(OSError):
                os.close(fd)
        connection.close()
        os.setsid()
        if request.get("pid_file"):
            # Before the answer: a server that dies meanwhile finds the run by this file.
            # The pid on this machine: in its own PID namespace, the run may be 1 (fork_for).
            pid = int(os.readlink("/proc/self"))
            Path(request["pid_file"]).write_text(f"{pid}:{_start_time(pid)}\n")
        os.write(ready, b"1")  # the process group exists: the run can be killed as a whole
        os.close(ready)
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
        for fd in set(fds) - {0, 1, 2}:
            os.close(fd)
        # A run a job asks for (the harness) runs where the job runs, with no more rights
        # and no more view of the machine than the job has.
        isolation.join(client)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["VLAB_WARM_WORKER"] = "1"
        sys.argv = [request["module"], *request["args"]]
        # Preloading imported the module's dependencies; the module itself runs afresh as
        # __main__ (runpy warns when it finds it already imported).
        for name in (request["module"], f"{request['module']}.__main__"):
            if not hasattr(sys.modules.get(name), "__path__"):
                sys.modules.pop(name, None)
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve_connection(connection: socket.socket) -> None:
    with connection:
        _hold(connection.fileno())
        try:
            _serve_request(connection)
        finally:
            _HELD.discard(connection.fileno())


def _serve_request(connection: socket.socket) -> None:
    request, fds = _receive_request(connection)
    _hold(*fds)
    ready_read, ready_write = os.pipe()
    _hold(ready_read, ready_write)
    client, _uid, _gid = struct.unpack("3i", connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if client != os.getppid():
        # A job's request (the harness, through warm_client): the socket is reachable from
        # inside jobs, so only the server that started this worker may have a file written
        # with the worker's rights or a run outlive its connection.
        request["pid_file"] = None
        request["detached"] = False
    try:
        # A pipeline (detached) becomes the first process of its job's PID namespace; a run
        # a job asks for, a process of that job's.
        pid = isolation.fork_for(client, fresh=bool(request.get("detached")))
        if pid == 0:
            _run_child(request, connection, fds, ready_write, client)
    except OSError:
        _release(ready_read)
        raise
    finally:
        _release(ready_write, *fds)
    try:
        # Answer only once the child leads its own process group, so that a cancel or a
        # client that goes away at once still reaches the whole run (an empty read: the
        # child failed before, and has exited).
        os.read(ready_read, 1)
    finally:
        _release(ready_read)
    tied = not request.get("detached")
    try:
        started = _start_time(pid)
    except Exception:  # no reference to hand out for a run nobody could then stop
        _kill_run(pid)
        _report_exit(connection, pid)
        return
    try:
        connection.sendall(f"pid {pid} {started}\n".encode())
    except OSError:  # the client is gone already; a detached run is found by its pid file
        if tied:
            _kill_run(pid)
        _report_exit(connection, pid)
        return
    if tied:
        def watch_client() -> None:
            # The client closes its end only when it dies: then the run must stop too.
            with contextlib.suppress(OSError):
                connection.recv(1)
            _kill_run(pid)

        threading.Thread(target=watch_client, daemon=True).start()
    _report_exit(connection, pid)


def _kill_run(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the child leads its own process group


MAX_REQUEST_BYTES = 8 << 20


def _well_formed(request: Any) -> bool:
    """Jobs can reach the socket: a request is checked field by field before it is used."""
    def strings(values: Any) -> bool:
        return isinstance(values, list) and all(isinstance(v, str) for v in values)

    return (isinstance(request, dict) and isinstance(request.get("module"), str)
            and strings(request.get("args")) and isinstance(request.get("cwd"), str)
            and isinstance(request.get("env"), dict)
            and strings(list(request["env"])) and strings(list(request["env"].values()))
            and isinstance(request.get("detached", False), bool)
            and isinstance(request.get("pid_file") or "", str))


def _receive_request(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(connection, 1 << 20, 3)
    try:
        while True:
            try:
                request = marshal.loads(data)
            except (EOFError, ValueError, TypeError):  # a large environment arrives in pieces
                more = connection.recv(1 << 20)
                if not more or len(data) + len(more) > MAX_REQUEST_BYTES:
                    raise ValueError("not a warm-worker request") from None
                data += more
                continue
            if not _well_formed(request) or len(fds) != 3:
                raise ValueError("a warm-worker request is a dict with three streams")
            return request, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def send_request(connection: socket.socket, request: dict[str, Any], streams: list[int]) -> None:
    """Send `request` on a blocking socket; the run gets `streams` as its stdin, stdout and
    stderr."""
    payload = marshal.dumps(request)
    sent = socket.send_fds(connection, [payload], streams)
    if sent < len(payload):
        connection.sendall(payload[sent:])


def parse_reply(line: bytes) -> tuple[str, list[str]]:
    word, *values = line.decode().split()
    return word, values


def _start_time(pid: int) -> float:
    """The process's start time as psutil reports it: with the pid, a reference that a reused
    pid cannot match (the child cannot be reaped before this worker waits for it)."""
    import psutil

    return float(psutil.Process(pid).create_time())


def _report_exit(connection: socket.socket, pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        connection.sendall(f"exit {code}\n".encode())


# Written to the worker's stderr (the server's log) once it takes requests.
READY_LINE = "vlab warm worker ready on cores"


def serve(socket_path: Path, cores: set[int], parent: int | None = None) -> None:
    """Take runs on `socket_path` until told to stop or until the server that started it
    (`parent`, its pid) is gone; a worker whose server died while it started never listens."""
    if cores:
        os.sched_setaffinity(0, cores)
    preload()
    if parent is None:
        parent = os.getppid()
    if os.getppid() != parent:  # the server died while the engines loaded
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _hold(server.fileno())
    runs: list[threading.Thread] = []
    try:
        # Bound and listening under another name, then renamed: once the socket's path
        # exists, it accepts connections.
        pending = socket_path.with_name(socket_path.name + ".new")
        pending.unlink(missing_ok=True)
        server.bind(str(pending))
        pending.chmod(0o600)
        server.listen(8)
        os.replace(pending, socket_path)
        server.settimeout(0.5)
        print(f"{READY_LINE} {','.join(map(str, sorted(cores))) or 'all'}", file=sys.stderr,
              flush=True)
        # Stop taking work when told to or when the server is gone; runs in flight finish
        # first, so that a server restart re-adopts them as it does without warm workers.
        while not stop.is_set() and os.getppid() == parent:
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            run = threading.Thread(target=_serve_connection, args=(connection,))
            run.start()
            runs = [r for r in runs if r.is_alive()] + [run]
    finally:
        _HELD.discard(server.fileno())
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
            from vlab_backend.pipeline.job import job_environment

            path = self._directory / f"{key}.sock"
            # The runs are forks of the worker: their /proc/<pid>/environ is the worker's
            # start-up environment, so the worker starts with a job's, not the server's.
            proc = self._subprocess.Popen(
                [sys.executable, "-m", "vlab_backend.runners.warm", "--", str(path),
                 ",".join(str(c) for c in cores), str(os.getpid())], env=job_environment(),
                stdin=self._subprocess.DEVNULL)
            worker = (proc, path)
            self._workers[key] = worker
        return worker[1]

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the workers: they take no more work and leave once their runs in flight have
        ended; those still running after `grace_s` (in all) go on and are re-adopted."""
        import time

        for proc, _path in self._workers.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc, _path in self._workers.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        self._workers.clear()
        import shutil

        shutil.rmtree(self._directory, ignore_errors=True)


def main(argv: list[str]) -> None:
    """`[--] SOCKET CORES [SERVER_PID]`: CORES comma-separated (empty for all)."""
    socket_path, cores, *parent = argv[1:] if argv[:1] == ["--"] else argv
    serve(Path(socket_path), {int(c) for c in cores.split(",") if c},
          int(parent[0]) if parent else None)


if __name__ == "__main__":
    main(sys.argv[1:])
