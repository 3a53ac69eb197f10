"""The Nomad runner: each benchmark is a batch job on the host of its target instance.

The job runs the same pipeline (`python -m vlab_backend.pipeline.remote`) in the engine's
image. Its inputs come from the API and its outputs go back to it with a single-job credential
that Nomad hands to the task from a Variable; the job spec itself holds no secret.

How a benchmark ends, whatever Nomad does meanwhile:
- its pipeline posts its result to the API (the job directory's `pipeline.json`): the
  benchmark ends from it at once, even while Nomad is unreachable, and its target is free;
- else one `AllocationWatcher` (one blocking query for all jobs) reports the job's end: a
  failed task (exit code, driver failure), a lost host, or no placement within
  `nomad_placement_deadline_s` (the reason from the evaluation's `FailedTGAllocs`).
Every Nomad call is retried with backoff through outages (`NomadClient`); `wait` never raises.
Whatever way it ended, the job is then deregistered and purged and its Variable deleted; if
Nomad is away, that clean-up goes on in the background until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from vlab_backend.auth import issue_job_credential, revoke_job_credentials
from vlab_backend.config import Settings
from vlab_backend.hosts.registry import sync_node_states
from vlab_backend.jobdir import JobDir, JobSpec, PipelineResult
from vlab_backend.nomad.client import NomadClient, NomadError
from vlab_backend.nomad.jobs import benchmark_job, job_id, variable_path
from vlab_backend.nomad.watcher import AllocationWatcher, JobOutcome
from vlab_backend.store.database import Database
from vlab_backend.store.schema import Host

if TYPE_CHECKING:
    from vlab_backend.targets import InstanceConfig

log = logging.getLogger("vlab.runners.nomad")

TASK = "pipeline"
RESULT_POLL_S = 0.25  # how often `wait` looks for the result the pipeline posts to the API
CLEANUP_INLINE_S = 2.0  # the clean-up waits this long before going on in the background
LOG_RETRY_S = 10.0  # a lost host's logs are not worth a long wait
PURGE_FOR_S = 3600.0  # how long an ended job's clean-up keeps trying through an outage


def describe_failure(alloc: dict[str, Any]) -> tuple[int, str]:
    """Exit code and reason of a failed or lost allocation, from its task events."""
    if alloc.get("ClientStatus") == "lost":
        return 1, "the target's host was lost while the benchmark ran (allocation lost)"
    state = (alloc.get("TaskStates") or {}).get(TASK) or {}
    events = state.get("Events") or []
    for event in reversed(events):
        details = event.get("Details") or {}
        if event.get("Type") == "Terminated":
            code = int(details.get("exit_code") or 0)
            if code == 0:
                return 1, f"the pipeline ended on {alloc.get('NodeName', '?')} without " \
                          "posting its result"
            return code, f"the pipeline exited with code {code} on {alloc.get('NodeName', '?')}"
        if event.get("Type") in ("Driver Failure", "Failed Validation", "Setup Failure",
                                 "Failed Artifact Download"):
            message = event.get("DisplayMessage") or details.get("driver_error") or ""
            return 1, f"{event['Type']}: {message}".strip()
        if event.get("Type") == "Killing" and "Template" in str(event.get("DisplayMessage")):
            return 1, str(event.get("DisplayMessage"))
    return 1, f"the allocation ended {alloc.get('ClientStatus')}: " \
              f"{alloc.get('ClientDescription') or 'no reason given'}"


class NomadRunner:
    def __init__(self, settings: Settings, db: Database,
                 client: NomadClient | None = None) -> None:
        self.settings = settings
        self.db = db
        self.client = client or NomadClient(settings.nomad_addr, settings.nomad_token,
                                            settings.nomad_namespace)
        self._watcher: AllocationWatcher | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._node_follower: asyncio.Task[None] | None = None
        self.cleanup_wait_s = CLEANUP_INLINE_S

    @property
    def watcher(self) -> AllocationWatcher:
        """Created on first use, inside the event loop that drives the runner."""
        if self._watcher is None:
            self._watcher = AllocationWatcher(
                self.client, prefix=job_id(""),
                placement_deadline_s=self.settings.nomad_placement_deadline_s)
        return self._watcher

    def prewarm(self, instances: Sequence[InstanceConfig]) -> None:
        """Start following the cluster's nodes (the images are Nomad's to pull, on each
        instance's host)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a command that only builds the runner)
            return
        self._node_follower = asyncio.create_task(self._follow_nodes())

    async def _follow_nodes(self) -> None:
        """Keep each registered host's state that of its Nomad node: down, disconnected,
        draining or ineligible hosts' targets are not scheduled, ready ones again."""
        while True:
            try:
                nodes = await self.client.nodes()
                changed = await asyncio.to_thread(self._apply_node_states, nodes)
            except Exception as exc:  # a bad round must not end the follower
                log.warning("cannot follow Nomad's nodes: %s", exc)
            else:
                for name, state in changed.items():  # worth an operator's attention
                    log.warning("host %s is now %s: its targets are %s", name, state,
                                "scheduled" if state == "ready" else "not scheduled")
            await asyncio.sleep(self.settings.nomad_node_poll_s)

    def _apply_node_states(self, nodes: list[dict[str, Any]]) -> dict[str, str]:
        """The hosts whose state changed with this node listing, and their new state."""
        with self.db.session() as session:
            before = {host.name: host.state for host in session.scalars(select(Host))}
            after = sync_node_states(session, nodes)
            session.commit()
        return {name: state for name, state in after.items() if before.get(name) != state}

    async def aclose(self) -> None:
        """Let pending clean-ups finish briefly, then stop following Nomad."""
        if self._node_follower is not None:
            self._node_follower.cancel()
            await asyncio.gather(self._node_follower, return_exceptions=True)
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.cleanup_wait_s)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._watcher is not None:
            await self._watcher.close()
        await self.client.close()

    @property
    def api_url(self) -> str:
        return self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """A background task whose failure is logged, never left unretrieved."""
        task = asyncio.create_task(coro)
        self._background.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("%s failed: %s", what, finished.exception())

        task.add_done_callback(done)
        return task

    # -- start -------------------------------------------------------------------------------
    async def start(self, job_dir: JobDir, spec: JobSpec) -> str:
        job = benchmark_job(benchmark_id=spec.benchmark_id, target_type=spec.target,
                            target_uid=spec.target_uid, engine=spec.engine,
                            offer={"image": spec.image, "env": spec.env,
                                   "devices": spec.devices, "volumes": spec.volumes},
                            memory=spec.memory, api_url=self.api_url,
                            default_memory_mb=self.settings.nomad_job_memory_mb,
                            stop_on_client_after_s=self.settings.nomad_placement_deadline_s)
        problems = await self.client.validate(job)
        if problems:
            raise NomadError("Nomad refused the job: " + "; ".join(problems))
        ref = job.Job.ID
        with self.db.session() as session:
            token = issue_job_credential(session, spec.benchmark_id)
        try:
            await self.client.put_variable(variable_path(spec.benchmark_id), {"token": token})
            job_dir.record_reference(ref)
            self.watcher.watch(ref, job.to_json())  # the placement deadline starts here
            await self.client.register(job)
        except BaseException:
            self.watcher.forget(ref)
            await self._cleanup(spec.benchmark_id, ref)  # a register that did go through
            raise
        return ref

    # -- wait --------------------------------------------------------------------------------
    async def wait(self, job_dir: JobDir, ref: str) -> None:
        """Until the pipeline has posted its result or Nomad says the job ended; then a
        result is in the job dir. Never raises but when canceled (a server stopping leaves
        its jobs running, to re-adopt them): the scheduler must always finalise."""
        try:
            outcome = await self._until_end(job_dir, ref)
            if not job_dir.has_result():
                await self._record_failure(job_dir, outcome)
        except asyncio.CancelledError:
            self.watcher.forget(ref)
            raise
        except Exception as exc:
            log.exception("following %s failed", ref)
            if not job_dir.has_result():
                self._write_failure(job_dir, 1, f"the runner lost track of the job: {exc}")
        self.watcher.forget(ref)
        await self._cleanup(job_dir.benchmark_id, ref)

    async def _until_end(self, job_dir: JobDir, ref: str) -> JobOutcome | None:
        """The watcher's outcome, or None when the pipeline's result came first."""
        ended = self.watcher.watch(ref)
        while not ended.done():
            if job_dir.has_result():
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ended), RESULT_POLL_S)
        return ended.result()

    def _write_failure(self, job_dir: JobDir, code: int, message: str) -> None:
        job_dir.log_error(message)
        result = PipelineResult()
        result.fail(code, message)
        job_dir.write_result(result)

    async def _record_failure(self, job_dir: JobDir, outcome: JobOutcome | None) -> None:
        """The pipeline never reported: keep what Nomad knows as the job's result and logs."""
        if outcome is None:
            return
        alloc = outcome.allocation
        if outcome.kind == "ended" and alloc is not None:
            code, message = describe_failure(alloc)
        elif outcome.kind == "ended":
            code, message = 1, f"the Nomad job was {outcome.message or 'stopped'}"
        else:
            code, message = 1, outcome.message
        if alloc is not None and outcome.kind == "ended":
            tail = await self._stderr_tail(alloc["ID"])
            job_dir.out.mkdir(parents=True, exist_ok=True)
            if tail:
                with job_dir.output("error_log").open("a") as log_file:
                    log_file.write("\n".join(tail) + "\n")
        self._write_failure(job_dir, code, message)

    async def _stderr_tail(self, alloc_id: str) -> list[str]:
        try:
            text = await asyncio.wait_for(self.client.task_log(alloc_id, TASK), LOG_RETRY_S)
        except (NomadError, TimeoutError) as exc:
            log.info("no stderr for %s: %s", alloc_id, exc)
            return []
        return text.splitlines()[-50:]

    # -- clean-up ----------------------------------------------------------------------------
    async def _cleanup(self, benchmark_id: str, ref: str) -> None:
        """Revoke the credential now; deregister and purge the job and delete its Variable,
        waiting a little, then on in the background while Nomad is away."""
        with self.db.session() as session:
            revoke_job_credentials(session, benchmark_id)
        task = self._spawn(self._purge(benchmark_id, ref), f"cleaning up {ref}")
        with contextlib.suppress(TimeoutError, NomadError):
            await asyncio.wait_for(asyncio.shield(task), self.cleanup_wait_s)

    async def _purge(self, benchmark_id: str, ref: str) -> None:
        """Each call retries for minutes; this keeps at it for up to an hour of outage (a
        stopped server gives up: the job is then only garbage-collected by Nomad, and its
        Variable holds a revoked credential)."""
        async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(NomadError), reraise=True,
                stop=stop_after_delay(PURGE_FOR_S),
                wait=wait_random_exponential(multiplier=1.0, max=60.0)):
            with attempt:
                await self.client.deregister(ref, purge=True)
                await self.client.delete_variable(variable_path(benchmark_id))

    # -- cancel, re-adoption -----------------------------------------------------------------
    async def cancel(self, ref: str) -> None:
        """Stop the job; `wait` then ends once nothing of it runs (its clean-up purges it)."""
        self.watcher.cancel(ref)
        self._spawn(self.client.deregister(ref), f"stopping {ref}")

    async def alive(self, ref: str) -> bool:
        """Whether to follow the job again after a restart. When Nomad cannot tell, yes:
        the watcher or the pipeline's posted result will end it."""
        try:
            job = await self.client.job(ref)
        except NomadError as exc:
            log.warning("cannot tell whether %s still runs (%s); following it", ref, exc)
            return True
        if job is None or job.get("Status") == "dead":
            bench_id = ref.removeprefix(job_id(""))
            if job is not None:
                self._spawn(self._purge(bench_id, ref), f"cleaning up {ref}")
            return False
        return True

    def reference(self, job_dir: JobDir) -> str | None:
        return job_dir.recorded_reference()
