"""What the scheduler needs from a runner. A reference (`ref`) is a string the runner can use
to find its job again, even from another server process after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from vlab_backend.pipeline.job import JobSpec


class Runner(Protocol):
    name: str

    async def start(self, job_dir: Path, spec: JobSpec) -> str:
        """Launch the job described in `job_dir`; returns its reference."""

    async def wait(self, job_dir: Path, ref: str) -> None:
        """Until the job has ended and its outputs are in `job_dir` (as the local pipeline
        leaves them)."""

    async def cancel(self, ref: str) -> None: ...

    async def alive(self, ref: str) -> bool:
        """Whether the job still runs (for re-adoption after a restart)."""

    def reference_in(self, job_dir: Path) -> str | None:
        """The reference recorded in the job dir before the launch, if any: it covers a crash
        between the launch and the database update."""
