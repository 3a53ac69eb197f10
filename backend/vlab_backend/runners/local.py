"""The local runner: the pipeline as a subprocess in its own session, pinned to the cpuset.

The pipeline runs in a new session so that it survives a crash of the server; the scheduler
re-adopts it on restart from its reference (`<pid>:<process start time>`), kept in the
database and in the job directory. With warm workers, the instance's worker forks the pipeline
instead (same session rules, same reference); if no worker answers, the pipeline starts cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from vlab_backend.jobdir import JobDir, JobSpec
from vlab_backend.pipeline.job import job_environment
from vlab_backend.runners import warm_client
from vlab_backend.runners.warm import WarmPool, parse_reply, send_request

if TYPE_CHECKING:
    from vlab_backend.config import Settings
    from vlab_backend.store.database import Database
    from vlab_backend.targets import InstanceConfig


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    started_at: float  # psutil create_time, to tell a reused pid apart

    def __str__(self) -> str:
        return f"{self.pid}:{self.started_at}"

    @classmethod
    def parse(cls, ref: str) -> ProcessRef:
        pid, started = ref.split(":", 1)
        return cls(int(pid), float(started))

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return (abs(proc.create_time() - self.started_at) < 0.01
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False


class LocalRunner:
    def __init__(self, warm_workers: bool = False) -> None:
        self._children: dict[int, asyncio.subprocess.Process] = {}
        # Pipelines forked by a warm worker: the connection that reports their exit.
        self._warm_runs: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.warm: WarmPool | None = WarmPool() if warm_workers else None

    @classmethod
    def from_settings(cls, settings: Settings, _db: Database) -> LocalRunner:
        return cls(warm_workers=settings.warm_workers)

    def prewarm(self, instances: Sequence[InstanceConfig]) -> None:
        """Start the warm workers now rather than at each instance's first job."""
        if self.warm is not None:
            for instance in instances:
                self.warm.socket_for(instance.cpuset)

    async def aclose(self) -> None:
        if self.warm is not None:
            await asyncio.to_thread(self.warm.close)

    async def start(self, job: JobDir, spec: JobSpec) -> str:
        if self.warm is not None:
            socket_path = self.warm.socket_for(spec.cpuset)
            # The manager step asks the same worker for the harness (see warm_client).
            spec.env["VLAB_HARNESS_SOCKET"] = str(socket_path)
            spec.env["VLAB_WARM_CLIENT"] = str(Path(warm_client.__file__).resolve())
            job.write_spec(spec)
            ref = await self._start_warm(socket_path, job)
            if ref is not None:
                job.record_reference(str(ref))
                return str(ref)
        command = [sys.executable, "-m", "vlab_backend.pipeline", "--", str(job.root)]
        with job.pipeline_output.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *command, env=job_environment(), cwd=job.root,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        if spec.cpuset:
            # The pipeline pins itself from its spec too; this closes the start-up window.
            os.sched_setaffinity(proc.pid, set(spec.cpuset))
        ref = ProcessRef(proc.pid, psutil.Process(proc.pid).create_time())
        job.record_reference(str(ref))
        self._children[proc.pid] = proc
        return str(ref)

    async def _start_warm(self, socket_path: Path, job: JobDir) -> ProcessRef | None:
        """Have the instance's warm worker fork the pipeline; None when no worker takes the
        request (still importing, or gone), so that the pipeline can start cold instead."""
        log = os.open(job.pipeline_output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.setblocking(False)
            await asyncio.get_running_loop().sock_connect(connection, str(socket_path))
            connection.setblocking(True)  # a few kilobytes: sent at once
            send_request(connection, {
                "module": "vlab_backend.pipeline", "args": ["--", str(job.root)],
                "cwd": str(job.root), "env": job_environment(), "detached": True,
                "pid_file": str(job.reference_file)}, [null, log, log])
        except OSError:
            connection.close()
            return None
        finally:
            os.close(log)
            os.close(null)
        # From here on the worker may have forked the pipeline: never start a second one.
        try:
            reader, writer = await asyncio.open_unix_connection(sock=connection)
            word, values = parse_reply(await asyncio.wait_for(reader.readline(), timeout=30))
            if word != "pid":
                raise ValueError(f"unexpected reply {word!r}")
            ref = ProcessRef(int(values[0]), float(values[1]))
        except (OSError, ValueError, IndexError, TimeoutError) as exc:
            connection.close()
            # The run writes its reference before the worker answers: a run that started
            # all the same must not go on unseen beside the instance's next job.
            recorded = self.reference(job)
            if recorded is not None:
                await self.cancel(recorded)
            raise RuntimeError(f"the warm worker of cores {socket_path.stem} did not start "
                               f"the pipeline ({exc or type(exc).__name__})") from exc
        self._warm_runs[ref.pid] = (reader, writer)
        return ref

    async def wait(self, job: JobDir, ref: str) -> None:
        """Until the job's process has ended (own child or adopted after a restart)."""
        process = ProcessRef.parse(ref)
        proc = self._children.pop(process.pid, None)
        if proc is not None:
            await proc.wait()
            return
        warm_run = self._warm_runs.pop(process.pid, None)
        if warm_run is not None:
            reader, writer = warm_run
            with contextlib.suppress(OSError):
                while process.alive():  # a worker gone or stuck: polling takes over
                    try:
                        line = await asyncio.wait_for(reader.readline(), timeout=1.0)
                    except TimeoutError:
                        continue
                    if not line or parse_reply(line)[0] == "exit":
                        break
            writer.close()
        while process.alive():
            await asyncio.sleep(0.2)

    async def cancel(self, ref: str, grace_s: float = 3.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after the grace period."""
        process = ProcessRef.parse(ref)
        if not process.alive():
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while process.alive() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    async def alive(self, ref: str) -> bool:
        return ProcessRef.parse(ref).alive()

    def reference(self, job: JobDir) -> str | None:
        text = job.recorded_reference()
        try:
            return str(ProcessRef.parse(text)) if text else None
        except ValueError:
            return None
