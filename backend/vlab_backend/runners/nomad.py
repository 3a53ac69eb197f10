"""The Nomad runner: each benchmark is a batch job on the host of its target instance.

The job runs the same pipeline (`python -m vlab_backend.pipeline.remote`) in the engine's
image. Its inputs come from the API and its outputs go back to it with a single-job credential
that Nomad hands to the task from a Variable; the job spec itself holds no secret.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vlab_backend.auth import issue_job_credential, revoke_job_credentials
from vlab_backend.config import Settings
from vlab_backend.jobdir import JobDir, JobSpec, PipelineResult
from vlab_backend.nomad.client import NomadClient, NomadError
from vlab_backend.nomad.jobs import benchmark_job, variable_path
from vlab_backend.store.database import Database

if TYPE_CHECKING:
    from vlab_backend.targets import InstanceConfig

TERMINAL = ("complete", "failed", "lost")
TASK = "pipeline"


def describe_failure(alloc: dict[str, Any]) -> tuple[int, str]:
    """Exit code and reason of a failed or lost allocation, from its task events."""
    if alloc.get("ClientStatus") == "lost":
        return 1, "the target's host was lost while the benchmark ran (allocation lost)"
    state = (alloc.get("TaskStates") or {}).get(TASK) or {}
    events = state.get("Events") or []
    for event in reversed(events):
        details = event.get("Details") or {}
        if event.get("Type") == "Terminated":
            code = int(details.get("exit_code", "1") or 1)
            return code, f"the pipeline exited with code {code} on {alloc.get('NodeName', '?')}"
        if event.get("Type") in ("Driver Failure", "Failed Validation", "Setup Failure",
                                 "Failed Artifact Download"):
            message = event.get("DisplayMessage") or details.get("driver_error") or ""
            return 1, f"{event['Type']}: {message}".strip()
    return 1, f"the allocation ended {alloc.get('ClientStatus')}: " \
              f"{alloc.get('ClientDescription') or 'no reason given'}"


class NomadRunner:
    def __init__(self, settings: Settings, db: Database,
                 client: NomadClient | None = None) -> None:
        self.settings = settings
        self.db = db
        self.client = client or NomadClient(settings.nomad_addr, settings.nomad_token,
                                            settings.nomad_namespace)

    def prewarm(self, instances: Sequence[InstanceConfig]) -> None:
        """Nothing to prepare: Nomad pulls each engine's image on the instance's host."""

    async def aclose(self) -> None:
        await self.client.close()

    @property
    def api_url(self) -> str:
        return self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"

    async def start(self, job_dir: JobDir, spec: JobSpec) -> str:
        job = benchmark_job(benchmark_id=spec.benchmark_id, target_type=spec.target,
                            target_uid=spec.target_uid, engine=spec.engine,
                            offer={"image": spec.image, "env": spec.env,
                                   "devices": spec.devices, "volumes": spec.volumes},
                            memory=spec.memory, api_url=self.api_url)
        problems = await self.client.validate(job)
        if problems:
            raise NomadError("Nomad refused the job: " + "; ".join(problems))
        with self.db.session() as session:
            token = issue_job_credential(session, spec.benchmark_id)
        await self.client.put_variable(variable_path(spec.benchmark_id), {"token": token})
        job_dir.record_reference(job.Job.ID)
        await self.client.register(job)
        return job.Job.ID

    async def wait(self, job_dir: JobDir, ref: str) -> None:
        index = 0
        allocations: list[dict[str, Any]] = []
        while True:
            allocations, index = await self.client.allocations(ref, index)
            if allocations and all(a.get("ClientStatus") in TERMINAL for a in allocations):
                break
            if not allocations and await self.client.job_status(ref) in (None, "dead"):
                break
        try:
            if not job_dir.has_result():
                await self._record_failure(job_dir, allocations)
        finally:
            await self._cleanup(job_dir.benchmark_id)

    async def _record_failure(self, job_dir: JobDir, allocations: list[dict[str, Any]]) -> None:
        """The pipeline never reported: keep what Nomad knows as the job's result and logs."""
        latest = max(allocations, key=lambda a: a.get("ModifyIndex", 0)) if allocations else {}
        code, message = describe_failure(latest) if latest else (1, "Nomad placed no "
                                                                   "allocation for the job")
        job_dir.log_error(message)
        if latest and latest.get("ClientStatus") != "lost":
            with contextlib.suppress(NomadError):
                tail = (await self.client.task_log(latest["ID"], TASK)).splitlines()[-50:]
                with job_dir.output("error_log").open("a") as log:
                    log.write("\n".join(tail) + ("\n" if tail else ""))
        result = PipelineResult()
        result.fail(code, message)
        job_dir.write_result(result)

    async def _cleanup(self, benchmark_id: str) -> None:
        with self.db.session() as session:
            revoke_job_credentials(session, benchmark_id)
        with contextlib.suppress(NomadError):
            await self.client.delete_variable(variable_path(benchmark_id))

    async def cancel(self, ref: str) -> None:
        await self.client.stop(ref)

    async def alive(self, ref: str) -> bool:
        status = await self.client.job_status(ref)
        if status is None or status == "dead":
            return False
        allocations, _ = await self.client.allocations(ref)
        return not allocations or any(a.get("ClientStatus") not in TERMINAL
                                      for a in allocations)

    def reference(self, job_dir: JobDir) -> str | None:
        return job_dir.recorded_reference()
