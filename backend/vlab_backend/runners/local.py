"""The local runner: the pipeline as a subprocess in its own session, pinned to the cpuset.

The pipeline runs in a new session so that it survives a crash of the server; the scheduler
re-adopts it on restart from its reference (`<pid>:<process start time>`), kept in the
database and in the job directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from vlab_backend.pipeline.job import JobSpec
from vlab_backend.runners.warm import WarmPool

PID_FILE = "pid"


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
    name = "local"

    def __init__(self, warm_workers: bool = False) -> None:
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self.warm: WarmPool | None = WarmPool() if warm_workers else None

    def prewarm(self, core_sets: list[list[int]]) -> None:
        """Start the warm workers now rather than at each instance's first job."""
        if self.warm is not None:
            for cores in core_sets:
                self.warm.socket_for(cores)

    def close(self) -> None:
        if self.warm is not None:
            self.warm.close()

    async def start(self, job_dir: Path, spec: JobSpec) -> str:
        command = [sys.executable, "-m", "vlab_backend.pipeline", str(job_dir)]
        if self.warm is not None:
            # The pipeline and its harness are forked from the instance's warm worker; the
            # small client process stands for them (pid, process group, exit code).
            socket_path = str(self.warm.socket_for(spec.cpuset))
            spec.env["VLAB_HARNESS_SOCKET"] = socket_path
            spec.write(job_dir)
            command = [sys.executable, "-m", "vlab_backend.runners.warm_client", socket_path,
                       "vlab_backend.pipeline", str(job_dir)]
        with (job_dir / "pipeline.out").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        if spec.cpuset:
            # The pipeline pins itself from its spec too; this closes the start-up window.
            os.sched_setaffinity(proc.pid, set(spec.cpuset))
        ref = ProcessRef(proc.pid, psutil.Process(proc.pid).create_time())
        (job_dir / PID_FILE).write_text(f"{ref}\n")
        self._children[proc.pid] = proc
        return str(ref)

    async def wait(self, job_dir: Path, ref: str) -> None:
        """Until the job's process has ended (own child or adopted after a restart)."""
        process = ProcessRef.parse(ref)
        proc = self._children.pop(process.pid, None)
        if proc is not None:
            await proc.wait()
            return
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

    def reference_in(self, job_dir: Path) -> str | None:
        try:
            text = (job_dir / PID_FILE).read_text().strip()
            ProcessRef.parse(text)
            return text
        except (OSError, ValueError):
            return None
