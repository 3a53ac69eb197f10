"""The local runner: the pipeline as a subprocess in its own session, pinned to the cpuset.

The pipeline runs in a new session so that it survives a crash of the server; the scheduler
re-adopts it on restart from the pid recorded in the database and in the job directory.
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

PID_FILE = "pid"


@dataclass
class ProcessRef:
    pid: int
    started_at: float  # psutil create_time, to tell a reused pid apart

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return (abs(proc.create_time() - self.started_at) < 0.01
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False


class LocalRunner:
    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, asyncio.subprocess.Process] = {}

    async def start(self, job_dir: Path, cpuset: list[int]) -> ProcessRef:
        with (job_dir / "pipeline.out").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vlab_backend.pipeline", str(job_dir),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)
        if cpuset:
            # The pipeline pins itself from its spec too; this closes the start-up window.
            os.sched_setaffinity(proc.pid, set(cpuset))
        ref = ProcessRef(proc.pid, psutil.Process(proc.pid).create_time())
        (job_dir / PID_FILE).write_text(f"{ref.pid} {ref.started_at}\n")
        self._children[proc.pid] = proc
        return ref

    async def wait(self, ref: ProcessRef) -> None:
        """Until the job's process has ended (own child or adopted after a restart)."""
        proc = self._children.pop(ref.pid, None)
        if proc is not None:
            await proc.wait()
            return
        while ref.alive():
            await asyncio.sleep(0.2)

    async def cancel(self, ref: ProcessRef, grace_s: float = 3.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after the grace period."""
        if not ref.alive():
            return
        try:
            os.killpg(ref.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = asyncio.get_running_loop().time() + grace_s
        while ref.alive() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ref.pid, signal.SIGKILL)


def read_pid_file(job_dir: Path) -> ProcessRef | None:
    try:
        pid, started = (job_dir / PID_FILE).read_text().split()
        return ProcessRef(int(pid), float(started))
    except (OSError, ValueError):
        return None
