"""The scheduler: a FIFO per target type, kept in the database, feeding free instances.

A benchmark is `pending` while it waits for an instance, `queued` once an instance is
reserved for it, `running` while its pipeline process lives, then `success`, `failed` or
`canceled`. One benchmark holds an instance at a time. After a crash, `recover()` adopts the
pipelines that still run, collects those that ended, and fails those that vanished, so every
benchmark reaches one terminal state and none runs twice.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from vlab_backend.artifacts import Outcome, collect
from vlab_backend.blobstore import BlobStore
from vlab_backend.config import Settings
from vlab_backend.events import EventHub
from vlab_backend.jobdir import JobDir, JobSpec
from vlab_backend.runners.base import Runner
from vlab_backend.store.database import Database
from vlab_backend.store.schema import (
    ACTIVE_STATUSES,
    Benchmark,
    Dataset,
    Status,
    StoredModel,
    TargetInstance,
)

log = logging.getLogger("vlab.scheduler")


def benchmark_event(bench: Benchmark) -> dict[str, Any]:
    return {"event": "status", "status": bench.status, "message": bench.message,
            "target_uid": bench.target_uid, "progress": {
                "phase": bench.progress_phase, "done": bench.progress_done,
                "total": bench.progress_total}}


class Scheduler:
    def __init__(self, settings: Settings, db: Database, hub: EventHub, runner: Runner) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.runner = runner
        self.models = BlobStore(settings.models_dir)
        self.datasets = BlobStore(settings.datasets_dir)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refs: dict[str, str] = {}
        self._canceling: set[str] = set()
        # Running benchmark -> its host, and the other benchmarks that ran on that host while
        # it ran (`concurrent_jobs_on_host`: jobs side by side share the host's cores, caches
        # and memory bandwidth, which makes latencies noisy).
        self._hosts: dict[str, str] = {}
        self._side_by_side: dict[str, set[str]] = {}
        self._main: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.recover()
        self._main = asyncio.create_task(self._dispatch_loop())

    async def stop(self) -> None:
        """Stop scheduling; running pipelines go on and are re-adopted at the next start."""
        if self._main:
            self._main.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def wake(self) -> None:
        """Thread-safe request for a dispatch round."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._wake.set)

    def job_dir(self, benchmark_id: str) -> JobDir:
        return JobDir(self.settings.jobs_dir / benchmark_id)

    def artifact_dir(self, benchmark_id: str) -> Path:
        return self.settings.artifacts_dir / benchmark_id

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish(self, bench: Benchmark) -> None:
        self.hub.publish(bench.id, benchmark_event(bench))

    # -- dispatch --------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                for bench_id, spec in self._assign():
                    self._spawn(self._execute(bench_id, spec))
            except Exception:  # keep scheduling whatever one round hit
                log.exception("dispatch round failed")

    def _assign(self) -> list[tuple[str, JobSpec]]:
        """Reserve free instances for the oldest pending benchmarks of each target type."""
        started: list[tuple[str, JobSpec]] = []
        with self.db.session() as session:
            busy = set(session.scalars(select(Benchmark.target_uid).where(
                Benchmark.status.in_(ACTIVE_STATUSES))))
            instances = session.scalars(select(TargetInstance).where(
                TargetInstance.enabled.is_(True)).order_by(TargetInstance.uid)).all()
            waiting = session.scalars(select(Benchmark).where(Benchmark.status == Status.PENDING)
                                      .order_by(Benchmark.seq)).all()
            for bench in waiting:
                instance = next((i for i in instances if i.uid not in busy
                                 and i.target_type == bench.target_type
                                 and bench.engine in i.engines
                                 and (not bench.requested_uids or i.uid in bench.requested_uids)),
                                None)
                if instance is None:
                    continue
                busy.add(instance.uid)
                bench.status = Status.QUEUED
                bench.target_uid = instance.uid
                started.append((bench.id, self._job_spec(session, bench, instance)))
                self._publish(bench)
        return started

    def _job_spec(self, session: Session, bench: Benchmark, instance: TargetInstance) -> JobSpec:
        model = session.get(StoredModel, bench.model_id)
        assert model is not None
        offer = instance.engines[bench.engine]
        dataset_path = dataset_filename = None
        if bench.dataset_name:
            dataset = session.scalar(select(Dataset).where(
                Dataset.name == bench.dataset_name, Dataset.owner_id == bench.owner_id))
            if dataset is not None:
                dataset_path = str(self.datasets.path(dataset.sha256))
                dataset_filename = dataset.name.rsplit("_", 1)[0] or "dataset.bin"
        extra_files = {}
        if bench.odt_config:
            from vlab_backend.odt import dataset_refs

            for ref in dataset_refs(bench.odt_config):
                row = session.scalars(select(Dataset).where(
                    Dataset.name == ref, or_(Dataset.owner_id == bench.owner_id,
                                             Dataset.public.is_(True)))).first()
                if row is not None:
                    extra_files[ref] = str(self.datasets.path(row.sha256))
        return JobSpec(
            benchmark_id=bench.id, odt_config=bench.odt_config, extra_files=extra_files,
            hidden_dirs=[str(self.settings.data_dir)],
            repository=offer.get("repository", ""),
            target=instance.target_type, target_uid=instance.uid, engine=bench.engine,
            benchmark_type=bench.benchmark_type, nb_inference=bench.nb_inference,
            model_path=str(self.models.path(model.sha256)), model_filename=bench.model_filename,
            dataset_path=dataset_path, dataset_filename=dataset_filename,
            parameters=bench.parameters, cpuset=list(instance.cpuset),
            step_timeouts_s=dict(self.settings.step_timeouts_s), env=dict(offer.get("env", {})),
            model_facts={k: model.info.get(k) for k in ("nb_parameters", "flops")},
            image=offer.get("image", ""), devices=list(offer.get("devices", [])),
            volumes=list(offer.get("volumes", [])), memory=dict(instance.memory))

    async def _execute(self, bench_id: str, spec: JobSpec) -> None:
        job = self.job_dir(bench_id)
        try:
            job.create(spec)
            ref = await self.runner.start(job, spec)
        except Exception as exc:
            log.exception("could not start %s", bench_id)
            self._finalize(bench_id, Outcome(Status.FAILED, f"could not start the job: {exc}"))
            return
        self._refs[bench_id] = ref
        if bench_id in self._canceling:
            await self.runner.cancel(ref)
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            assert bench is not None
            bench.runner_ref = ref
            bench.started_at = datetime.now(UTC)
            if bench_id not in self._canceling:
                bench.status = Status.RUNNING
            instance = session.get(TargetInstance, spec.target_uid)
            self._note_start(bench_id, instance.host if instance else "localhost")
            self._publish(bench)
        await self._follow(bench_id, ref)

    async def _follow(self, bench_id: str, ref: str) -> None:
        """Relay progress until the job ends, then collect it."""
        job = self.job_dir(bench_id)
        watcher = asyncio.create_task(self._watch_progress(bench_id, job))
        try:
            await self.runner.wait(job, ref)
        finally:
            watcher.cancel()
        self._refs.pop(bench_id, None)
        self._finalize_from_job_dir(bench_id, cleanup=False)
        await asyncio.sleep(0)  # let the terminal event reach the clients first
        await asyncio.to_thread(job.remove)

    async def _watch_progress(self, bench_id: str, job: JobDir) -> None:
        last = None
        saved_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            progress = job.read_progress()
            if progress is None or progress == last:
                continue
            last = progress
            self.hub.publish(bench_id, {"event": "progress", "status": Status.RUNNING,
                                        "progress": {"phase": progress.phase,
                                                     "done": progress.done,
                                                     "total": progress.total}})
            if loop.time() - saved_at < 1.0:
                continue  # the database copy only serves polling clients; keep writes rare
            saved_at = loop.time()
            with self.db.session() as session:
                bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
                if bench is not None and not bench.is_terminal:
                    bench.progress_phase = progress.phase
                    bench.progress_done, bench.progress_total = progress.done, progress.total

    def _note_start(self, bench_id: str, host: str) -> None:
        others = {other for other, where in self._hosts.items() if where == host}
        for other in others:
            self._side_by_side[other].add(bench_id)
        self._hosts[bench_id] = host
        self._side_by_side[bench_id] = others

    # -- completion ------------------------------------------------------------------------
    def _finalize_from_job_dir(self, bench_id: str, interrupted: str = "",
                               cleanup: bool = True) -> None:
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            benchmark_type = bench.benchmark_type if bench is not None else None
        if benchmark_type is None:  # deleted by its owner while it ended: nothing to keep
            self._canceling.discard(bench_id)
            self.job_dir(bench_id).remove()
            shutil.rmtree(self.artifact_dir(bench_id), ignore_errors=True)
            self.wake()
            return
        outcome = collect(self.job_dir(bench_id), self.artifact_dir(bench_id), benchmark_type,
                          canceled=bench_id in self._canceling, interrupted=interrupted)
        self._canceling.discard(bench_id)
        self._finalize(bench_id, outcome)
        if cleanup:
            self.job_dir(bench_id).remove()

    def _finalize(self, bench_id: str, outcome: Outcome) -> None:
        self._hosts.pop(bench_id, None)
        side_by_side = self._side_by_side.pop(bench_id, None)
        if side_by_side is not None:  # unknown for a job re-adopted after a restart
            outcome.metrics["concurrent_jobs_on_host"] = len(side_by_side)
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            if bench is None:  # deleted meanwhile
                self.wake()
                return
            bench.status = outcome.status
            bench.message = outcome.message[:2000]
            bench.artifacts = outcome.artifacts
            bench.metrics = outcome.metrics
            bench.finished_at = datetime.now(UTC)
            if outcome.status == Status.SUCCESS:
                bench.progress_phase = "done"
                bench.progress_done = bench.progress_total = outcome.metrics.get(
                    "nb_inference") or bench.progress_total
            self._publish(bench)
        self.wake()

    # -- cancel ----------------------------------------------------------------------------
    async def cancel(self, bench_id: str) -> str:
        """Cancel a benchmark; returns its status afterwards (terminal ones stay as they are)."""
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            assert bench is not None
            if bench.is_terminal:
                return bench.status
            if bench.status == Status.PENDING:
                bench.status, bench.message = Status.CANCELED, "canceled by the user"
                bench.finished_at = datetime.now(UTC)
                self._publish(bench)
                return bench.status
            self._canceling.add(bench_id)
        ref = self._refs.get(bench_id)
        if ref is not None:
            await self.runner.cancel(ref)
        return Status.CANCELED

    # -- recovery --------------------------------------------------------------------------
    async def recover(self) -> None:
        """Bring every benchmark left active by a previous server process to a known state."""
        with self.db.session() as session:
            active = session.scalars(select(Benchmark).where(
                Benchmark.status.in_(ACTIVE_STATUSES))).all()
            plans = [(b.id, b.runner_ref) for b in active]
        self._remove_stale_job_dirs({bench_id for bench_id, _ in plans})
        for bench_id, stored_ref in plans:
            job = self.job_dir(bench_id)
            ref = stored_ref or self.runner.reference(job)
            if ref is not None and await self.runner.alive(ref):
                log.info("re-adopting running benchmark %s (%s)", bench_id, ref)
                self._refs[bench_id] = ref
                self._mark_running(bench_id, ref)
                self._spawn(self._follow(bench_id, ref))
            elif ref is None and not job.has_result():
                # Reserved but never started: safe to hand to the FIFO again.
                self._requeue(bench_id)
            else:
                self._finalize_from_job_dir(
                    bench_id, interrupted="the job's process ended while the server was down")
        self.wake()

    def _remove_stale_job_dirs(self, active: set[str]) -> None:
        """Job directories of ended benchmarks (a stop between the end and the clean-up)."""
        if not self.settings.jobs_dir.is_dir():
            return
        for job_dir in self.settings.jobs_dir.iterdir():
            if job_dir.is_dir() and job_dir.name not in active:
                shutil.rmtree(job_dir, ignore_errors=True)

    def _mark_running(self, bench_id: str, ref: str) -> None:
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            assert bench is not None
            bench.status, bench.runner_ref = Status.RUNNING, ref

    def _requeue(self, bench_id: str) -> None:
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            assert bench is not None
            bench.status, bench.target_uid = Status.PENDING, None
        self.job_dir(bench_id).remove()

