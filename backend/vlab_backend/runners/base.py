"""What the scheduler needs from a runner. A reference (`ref`) is a string the runner can use
to find its job again, even from another server process after a restart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from vlab_backend.jobdir import JobDir, JobSpec

if TYPE_CHECKING:
    from vlab_backend.targets import InstanceConfig


class Runner(Protocol):
    def prewarm(self, instances: Sequence[InstanceConfig]) -> None:
        """Get ready for these instances' first jobs (called once, before any job)."""

    async def start(self, job: JobDir, spec: JobSpec) -> str:
        """Launch the job described in `job`; returns its reference. The reference is
        recorded in the job directory before the job can start (see `reference`)."""

    async def wait(self, job: JobDir, ref: str) -> None:
        """Until the job has ended and its outputs are in `job` (as the local pipeline
        leaves them: the outputs under `job.out`, then the result)."""

    async def cancel(self, ref: str) -> None: ...

    async def alive(self, ref: str) -> bool:
        """Whether the job still runs (for re-adoption after a restart)."""

    def reference(self, job: JobDir) -> str | None:
        """The reference recorded in the job dir before the launch, if any: it covers a crash
        between the launch and the database update."""

    async def aclose(self) -> None:
        """Release what the runner holds (connections, workers); running jobs go on."""
