"""The scheduler: a FIFO per target type, kept in the database, feeding free instances.

A benchmark is `pending` while it waits for an instance, `queued` once an instance is
reserved for it, `running` while its pipeline process lives, then `success`, `failed` or
`canceled`. One benchmark holds an instance at a time. After a crash, `recover()` adopts the
pipelines that still run, collects those that ended, and fails those that vanished, so every
benchmark reaches one terminal state and none runs twice.

Several API replicas may share one PostgreSQL database. A replica claims a benchmark and an
instance in one transaction: the free instances are locked with `SELECT ... FOR UPDATE SKIP
LOCKED` (another replica's round skips them until this one commits) and each benchmark is
taken with a conditional `UPDATE ... WHERE status = 'pending'`, so each is claimed by exactly
one replica; an instance is busy exactly when a queued or running benchmark names it, which
every replica reads from the database. The claiming replica (`claimed_by`) starts, follows and
finalises the job and renews its lease (`lease_until`) while it lives; when a replica dies,
another one takes its jobs over once their lease has run out, and recovery at start takes only
jobs whose lease has run out (or this replica's own), never a live replica's. With SQLite one
server owns the data dir (a file lock) and recovers everything at start.

A dispatch round's database work runs in a worker thread, off the event loop; progress goes to
the live event streams at once and to the database in one batched statement per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Table, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from vlab_backend.artifacts import Outcome, collect
from vlab_backend.blobstore import BlobStore
from vlab_backend.config import Settings
from vlab_backend.events import EventHub
from vlab_backend.health import HealthMonitor, degraded_note
from vlab_backend.jobdir import JobDir, JobSpec, Progress, ProgressWatch
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

# How often the progress of running jobs is written to the database (one statement for all).
PROGRESS_FLUSH_S = 1.0
# How often a dispatch round runs without being woken: other replicas' submissions and freed
# instances (shared store), or a round that failed.
SHARED_POLL_S = 1.0
LOCAL_POLL_S = 5.0
RETRY_POLL_S = 0.2
# Pending benchmarks a dispatch round reads at a time, oldest first.
FIFO_PAGE = 500


def default_replica_id() -> str:
    """This process among the replicas: host name, process id and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"[:200]


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


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
        # Replicas may share the store (PostgreSQL); SQLite is one server's own.
        self.shared = db.engine.dialect.name != "sqlite"
        self.replica_id = settings.replica_id or default_replica_id()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refs: dict[str, str] = {}
        self._canceling: set[str] = set()
        # Progress read from the job dirs, not yet written to the database.
        self._progress_due: dict[str, Progress] = {}
        # Running benchmark -> its host, and the other benchmarks that ran on that host while
        # it ran (`concurrent_jobs_on_host`: jobs side by side share the host's cores, caches
        # and memory bandwidth, which makes latencies noisy).
        self._hosts: dict[str, str] = {}
        self._side_by_side: dict[str, set[str]] = {}
        self._main: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        # Health checks per instance: reference benchmarks it submits like any other.
        self.health = HealthMonitor(settings, db, self)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.recover()
        await self.health.start()
        self._main = asyncio.create_task(self._dispatch_loop())
        self._maintenance = asyncio.create_task(self._maintain())

    async def stop(self) -> None:
        """Stop scheduling; running pipelines go on and are re-adopted at the next start (or,
        on a shared store, by another replica once this one's lease has run out)."""
        for main in (self._main, self._maintenance):
            if main:
                main.cancel()
        await self.health.stop()
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

    def _publish(self, session: Session, bench: Benchmark) -> None:
        """The benchmark's event, as it is now, once the session commits."""
        self.hub.publish_on_commit(session, bench.id, benchmark_event(bench))

    def _lease(self) -> datetime:
        """Until when a claim made or renewed now holds."""
        return datetime.now(UTC) + timedelta(seconds=self.settings.replica_lease_s)

    # -- dispatch --------------------------------------------------------------------------
    async def _dispatch_loop(self) -> None:
        poll = SHARED_POLL_S if self.shared else LOCAL_POLL_S
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)
            self._wake.clear()
            try:
                await self.dispatch_round()
                poll = SHARED_POLL_S if self.shared else LOCAL_POLL_S
            except Exception:  # keep scheduling whatever one round hit; retry soon
                log.exception("dispatch round failed")
                poll = RETRY_POLL_S

    async def dispatch_round(self) -> int:
        """Claim what can start now (the database work in a worker thread, off the event
        loop) and start those jobs; returns how many were claimed."""
        claimed = await asyncio.to_thread(self._assign)
        for bench_id, spec in claimed:
            self._spawn(self._execute(bench_id, spec))
        return len(claimed)

    def _assign(self) -> list[tuple[str, JobSpec]]:
        """Claim free instances for the oldest pending benchmarks of each target type (runs
        in a worker thread). The free instances stay locked (`FOR UPDATE SKIP LOCKED`) until
        the claims commit, and each claim is a conditional UPDATE of a pending benchmark: a
        benchmark and an instance are claimed by one replica only."""
        claimed: list[tuple[str, str]] = []
        started: list[tuple[str, JobSpec]] = []
        events: list[tuple[str, dict[str, Any]]] = []
        with self.db.session() as session:
            holds = select(Benchmark.seq).where(Benchmark.target_uid == TargetInstance.uid,
                                                Benchmark.status.in_(ACTIVE_STATUSES)).exists()
            free = session.execute(
                select(TargetInstance.uid, TargetInstance.target_type, TargetInstance.engines,
                       TargetInstance.health)
                .where(TargetInstance.enabled.is_(True), ~holds).order_by(TargetInstance.uid)
                .with_for_update(skip_locked=True, of=TargetInstance)).all()
            if not free:
                return []
            if self.shared:
                # Read again now that the rows are locked: a replica whose claims committed
                # just before this round's locks shows in a newer snapshot only.
                taken = set(session.scalars(select(Benchmark.target_uid).where(
                    Benchmark.status.in_(ACTIVE_STATUSES),
                    Benchmark.target_uid.in_([row.uid for row in free]))))
                free = [row for row in free if row.uid not in taken]
            pools: dict[str, list[Any]] = defaultdict(list)
            for row in free:
                pools[row.target_type].append(row)
            left, after = len(free), 0
            while left:  # the FIFO a page at a time: a few free instances read a few rows
                waiting = session.execute(
                    select(Benchmark.seq, Benchmark.id, Benchmark.target_type,
                           Benchmark.engine, Benchmark.requested_uids, Benchmark.owner_id)
                    .where(Benchmark.status == Status.PENDING, Benchmark.seq > after,
                           Benchmark.target_type.in_([t for t, pool in pools.items() if pool]))
                    .order_by(Benchmark.seq).limit(FIFO_PAGE)).all()
                for row in waiting:
                    pool = pools[row.target_type]
                    instance = next((i for i in pool if row.engine in i.engines
                                     and (not row.requested_uids
                                          or i.uid in row.requested_uids)
                                     and not self._excluded(i.health, row.owner_id)), None)
                    if instance is None or not self._claim(session, row.id, instance.uid):
                        continue  # canceled, deleted or claimed elsewhere meanwhile
                    pool.remove(instance)
                    claimed.append((row.id, instance.uid))
                    left -= 1
                    if not left:
                        break
                if len(waiting) < FIFO_PAGE:
                    break
                after = waiting[-1].seq
            if not claimed:
                return []
            benches = {b.id: b for b in session.scalars(select(Benchmark).where(
                Benchmark.id.in_([bench_id for bench_id, _ in claimed])))}
            instances = {i.uid: i for i in session.scalars(select(TargetInstance).where(
                TargetInstance.uid.in_([uid for _, uid in claimed])))}
            for bench_id, uid in claimed:
                bench = benches[bench_id]
                started.append((bench_id, self._job_spec(session, bench, instances[uid])))
                events.append((bench_id, benchmark_event(bench)))
        for bench_id, event in events:  # once committed
            self.hub.publish(bench_id, event)
        return started

    def _excluded(self, health: str, owner_id: int) -> bool:
        """Policy `exclude`: no user job on a degraded instance (its health checks still
        run there, to find it healthy again)."""
        return (self.settings.degraded_policy == "exclude" and health == "degraded"
                and owner_id != self.health.user_id)

    def _claim(self, session: Session, bench_id: str, uid: str) -> bool:
        """Take a pending benchmark for `uid`: true unless another replica, a cancel or a
        delete got there first."""
        return _rowcount(session.execute(
            update(Benchmark).where(Benchmark.id == bench_id,
                                    Benchmark.status == Status.PENDING)
            .values(status=Status.QUEUED, target_uid=uid, claimed_by=self.replica_id,
                    lease_until=self._lease(), cancel_requested=False)
            .execution_options(synchronize_session=False))) == 1

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
        if self.shared and not await asyncio.to_thread(self._renew_claim, bench_id):
            log.warning("%s: claimed by another replica meanwhile; not starting it", bench_id)
            return
        try:
            job.create(spec)
            ref = await self.runner.start(job, spec)
        except Exception as exc:
            log.exception("could not start %s", bench_id)
            self._finalize(bench_id, Outcome(Status.FAILED, f"could not start the job: {exc}"))
            return
        self._refs[bench_id] = ref
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            assert bench is not None
            if bench.cancel_requested:  # asked of another replica before the job started
                self._canceling.add(bench_id)
            bench.runner_ref = ref
            bench.started_at = datetime.now(UTC)
            if bench_id not in self._canceling:
                bench.status = Status.RUNNING
            instance = session.get(TargetInstance, spec.target_uid)
            self._note_start(bench_id, instance.host if instance else "localhost")
            self._publish(session, bench)
        if bench_id in self._canceling:
            await self.runner.cancel(ref)
        await self._follow(bench_id, ref)

    def _renew_claim(self, bench_id: str) -> bool:
        """Whether this replica still holds the claim on a queued benchmark (renewing it)."""
        with self.db.session() as session:
            return _rowcount(session.execute(
                update(Benchmark).where(Benchmark.id == bench_id,
                                        Benchmark.status == Status.QUEUED,
                                        Benchmark.claimed_by == self.replica_id)
                .values(lease_until=self._lease())
                .execution_options(synchronize_session=False))) == 1

    async def _follow(self, bench_id: str, ref: str) -> None:
        """Relay progress until the job ends, then collect it."""
        job = self.job_dir(bench_id)
        watcher = asyncio.create_task(self._watch_progress(bench_id, job))
        try:
            await self.runner.wait(job, ref)
        finally:
            watcher.cancel()
        self._refs.pop(bench_id, None)
        self._progress_due.pop(bench_id, None)
        self._finalize_from_job_dir(bench_id, cleanup=False)
        await asyncio.sleep(0)  # let the terminal event reach the clients first
        await asyncio.to_thread(job.remove)

    async def _watch_progress(self, bench_id: str, job: JobDir) -> None:
        """Progress goes to the live event streams at once; the database copy (for polling
        clients) is written by `_maintain`, once a second for every running job together."""
        watch = ProgressWatch(job)
        while True:
            await asyncio.sleep(0.1)
            progress = watch.changed()
            if progress is None:
                continue
            self.hub.publish(bench_id, {"event": "progress", "status": Status.RUNNING,
                                        "progress": progress.event()})
            self._progress_due[bench_id] = progress

    async def _maintain(self) -> None:
        """Once a second: write the progress of running jobs; on a shared store, now and then,
        renew this replica's leases and take over the jobs of replicas whose lease ran out."""
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        while True:
            await asyncio.sleep(PROGRESS_FLUSH_S)
            try:
                await self.flush_progress()
                if self.shared and (loop.time() - renewed_at
                                    >= self.settings.replica_lease_s / 3):
                    renewed_at = loop.time()
                    await asyncio.to_thread(self._renew_leases)
                    for bench_id, ref in await asyncio.to_thread(self._claim_orphans):
                        await self._adopt(bench_id, ref)
            except Exception:  # keep maintaining whatever one round hit
                log.exception("scheduler maintenance failed")

    async def flush_progress(self) -> None:
        """Write the progress read since the last flush: one UPDATE statement for all."""
        due, self._progress_due = self._progress_due, {}
        if due:
            await asyncio.to_thread(self._write_progress, due)

    def _write_progress(self, due: dict[str, Progress]) -> None:
        table = cast(Table, Benchmark.__table__)
        statement = (update(table)
                     .where(table.c.id == bindparam("b_id"), table.c.status == Status.RUNNING)
                     .values(progress_phase=bindparam("b_phase"),
                             progress_done=bindparam("b_done"),
                             progress_total=bindparam("b_total")))
        with self.db.engine.begin() as connection:
            connection.execute(statement, [
                {"b_id": bench_id, "b_phase": p.phase, "b_done": p.done, "b_total": p.total}
                for bench_id, p in due.items()])

    def _renew_leases(self) -> None:
        """One statement: every queued or running job this replica follows stays its own."""
        with self.db.session() as session:
            session.execute(
                update(Benchmark).where(Benchmark.claimed_by == self.replica_id,
                                        Benchmark.status.in_(ACTIVE_STATUSES))
                .values(lease_until=self._lease())
                .execution_options(synchronize_session=False))

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
            if bench is not None and bench.cancel_requested:
                self._canceling.add(bench_id)
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
            query = select(Benchmark).where(Benchmark.id == bench_id)
            if self.shared:  # against a takeover by another replica at the same moment
                query = query.with_for_update()
            bench = session.scalar(query)
            if bench is None:  # deleted meanwhile
                self.wake()
                return
            if bench.is_terminal or (self.shared and bench.claimed_by is not None
                                     and bench.claimed_by != self.replica_id):
                log.warning("%s: already ended, or taken over by replica %s; leaving it",
                            bench_id, bench.claimed_by)
                self.wake()
                return
            self._note_health(session, bench, outcome)
            bench.status = outcome.status
            bench.message = outcome.message[:2000]
            bench.artifacts = outcome.artifacts
            bench.metrics = outcome.metrics
            bench.finished_at = datetime.now(UTC)
            bench.lease_until = None
            if outcome.status == Status.SUCCESS:
                bench.progress_phase = "done"
                bench.progress_done = bench.progress_total = outcome.metrics.get(
                    "nb_inference") or bench.progress_total
            self._publish(session, bench)
        self.wake()
        self.health.wake()

    def _note_health(self, session: Session, bench: Benchmark, outcome: Outcome) -> None:
        """Policy `warn`: a user job that ran on a degraded instance says so in its metrics
        (`instance_health`, `instance_health_note`) and, when it succeeded, in its message."""
        if bench.owner_id == self.health.user_id or bench.target_uid is None:
            return
        instance = session.get(TargetInstance, bench.target_uid)
        if instance is None or instance.health != "degraded":
            return
        note = degraded_note(instance)
        outcome.metrics["instance_health"] = instance.health
        outcome.metrics["instance_health_note"] = note
        if outcome.status == Status.SUCCESS and not outcome.message:
            outcome.message = f"warning: {note}"

    # -- cancel ----------------------------------------------------------------------------
    async def cancel(self, bench_id: str) -> str:
        """Cancel a benchmark; returns its status afterwards (terminal ones stay as they are).
        A job that another replica follows is stopped through its runner reference, and the
        request is kept in the database for that replica (`cancel_requested`)."""
        with self.db.session() as session:
            stopped = _rowcount(session.execute(
                update(Benchmark).where(Benchmark.id == bench_id,
                                        Benchmark.status == Status.PENDING)
                .values(status=Status.CANCELED, message="canceled by the user",
                        finished_at=datetime.now(UTC))
                .execution_options(synchronize_session=False))) == 1
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            assert bench is not None
            if stopped:
                self._publish(session, bench)
                return bench.status
            if bench.is_terminal:
                return bench.status
            bench.cancel_requested = True
            stored_ref = bench.runner_ref
            self._canceling.add(bench_id)
        ref = self._refs.get(bench_id) or stored_ref
        if ref is not None:
            await self.runner.cancel(ref)
        return Status.CANCELED

    # -- recovery --------------------------------------------------------------------------
    async def recover(self) -> None:
        """Bring every benchmark left active by a previous server process to a known state:
        with SQLite all of them; on a shared store those this replica claimed before (a fixed
        `replica_id`) and those whose claiming replica's lease has run out."""
        plans = await asyncio.to_thread(self._claim_orphans, True)
        await asyncio.to_thread(self._remove_stale_job_dirs)
        for bench_id, stored_ref in plans:
            await self._adopt(bench_id, stored_ref)
        self.wake()

    def _claim_orphans(self, at_start: bool = False) -> list[tuple[str, str | None]]:
        """Claim the active benchmarks no live replica follows; returns them with their
        stored runner references. With SQLite (at start) that is all of them; on a shared
        store those whose lease has run out, and at start this replica's own."""
        orphaned: ColumnElement[bool] = Benchmark.status.in_(ACTIVE_STATUSES)
        if self.shared:
            expired = or_(Benchmark.lease_until.is_(None),
                          Benchmark.lease_until < datetime.now(UTC))
            if at_start:
                expired = or_(expired, Benchmark.claimed_by == self.replica_id)
            else:  # never one this replica is starting or following
                expired = and_(expired, or_(Benchmark.claimed_by.is_(None),
                                            Benchmark.claimed_by != self.replica_id))
            orphaned = and_(orphaned, expired)
        taken: list[tuple[str, str | None]] = []
        with self.db.session() as session:
            candidates = session.execute(select(Benchmark.id, Benchmark.claimed_by)
                                         .where(orphaned).order_by(Benchmark.seq)).all()
            for bench_id, previous in candidates:
                if not _rowcount(session.execute(
                        update(Benchmark).where(Benchmark.id == bench_id, orphaned)
                        .values(claimed_by=self.replica_id, lease_until=self._lease())
                        .execution_options(synchronize_session=False))):
                    continue  # another replica took it first
                ref = session.scalar(select(Benchmark.runner_ref).where(
                    Benchmark.id == bench_id))
                if previous not in (None, self.replica_id):
                    log.warning("taking over %s from replica %s, whose lease ran out",
                                bench_id, previous)
                taken.append((bench_id, ref))
        return taken

    async def _adopt(self, bench_id: str, stored_ref: str | None) -> None:
        """Follow a claimed job that still runs, collect one that ended, hand one that never
        started back to the queue."""
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

    def _remove_stale_job_dirs(self) -> None:
        """Job directories of ended benchmarks (a stop between the end and the clean-up). The
        directories are listed before the database is read: a job dir exists only once its
        claim has committed, so another replica's live job is never taken for stale."""
        if not self.settings.jobs_dir.is_dir():
            return
        dirs = [d for d in self.settings.jobs_dir.iterdir() if d.is_dir()]
        if not dirs:
            return
        with self.db.session() as session:
            active = set(session.scalars(select(Benchmark.id).where(
                Benchmark.status.in_(ACTIVE_STATUSES))))
        for job_dir in dirs:
            if job_dir.name not in active:
                shutil.rmtree(job_dir, ignore_errors=True)

    def _mark_running(self, bench_id: str, ref: str) -> None:
        with self.db.session() as session:
            bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
            assert bench is not None
            bench.status, bench.runner_ref = Status.RUNNING, ref

    def _requeue(self, bench_id: str) -> None:
        with self.db.session() as session:
            session.execute(
                update(Benchmark).where(Benchmark.id == bench_id,
                                        Benchmark.status == Status.QUEUED,
                                        Benchmark.claimed_by == self.replica_id)
                .values(status=Status.PENDING, target_uid=None, claimed_by=None,
                        lease_until=None)
                .execution_options(synchronize_session=False))
        self.job_dir(bench_id).remove()
