"""Dispatch round at scale: 1,000 busy target instances and 5,000 pending benchmarks.

Side by side in one run, on one store: the round as it was (every pending benchmark loaded
as an ORM object and matched against every instance, on the event loop) and the round as it
is (`Scheduler._assign`: free instances locked and read first — none free, nothing more read —
then only the pending rows' matching columns, the DB work in a worker thread), in two cases:
every instance busy, and 10 instances just freed. For the current round it also reports how
long the event loop stalls while a round runs (the largest gap of a 1 ms ticker), and the cost
of the progress writes of 1,000 running benchmarks: one statement per benchmark per second as
it was, one batched statement per second as it is.

    python -m benchmarks.dispatch_round [--postgres URL] [--repeats N]

`--postgres` takes a server URL (as VLAB_TEST_POSTGRES_URL); a scratch database is created
and dropped. Without it the store is SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select, update

from vlab_backend.auth import create_user
from vlab_backend.config import Settings
from vlab_backend.events import EventHub
from vlab_backend.jobdir import JobDir, JobSpec, Progress
from vlab_backend.scheduler import Scheduler
from vlab_backend.store.database import Database
from vlab_backend.store.schema import (
    ACTIVE_STATUSES,
    Benchmark,
    Status,
    StoredModel,
    TargetInstance,
)

INSTANCES = 1000
PENDING = 5000
FREED = 10


class NoRunner:
    """The rounds are timed alone: nothing is started."""

    def prewarm(self, instances: Any) -> None:
        pass

    async def start(self, job: JobDir, spec: JobSpec) -> str:
        raise NotImplementedError

    async def wait(self, job: JobDir, ref: str) -> None:
        pass

    async def cancel(self, ref: str) -> None:
        pass

    async def alive(self, ref: str) -> bool:
        return False

    def reference(self, job: JobDir) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


def populate(db: Database) -> None:
    """INSTANCES instances of two target types, each running a benchmark, and PENDING
    benchmarks waiting, spread over both types."""
    db.migrate()
    with db.session() as session:
        user = create_user(session, "bench@lab", None, is_admin=False)
        model = StoredModel(owner_id=user.id, sha256="a" * 64, filename="m.onnx",
                            format="onnx", size=3, info={})
        session.add(model)
        session.flush()
        types = ("host-cpu", "rpi5")
        session.add_all(TargetInstance(uid=f"t-{n:04d}", target_type=types[n % 2],
                                       engines={"onnxruntime": {}, "tflite": {}},
                                       cpuset=[n % 64]) for n in range(INSTANCES))

        def bench(n: int, status: Status, uid: str | None) -> dict[str, Any]:
            return {"id": uuid.uuid4().hex, "owner_id": user.id, "target_type": types[n % 2],
                    "engine": "onnxruntime", "benchmark_type": "TYPE1", "nb_inference": 100,
                    "model_id": model.id, "model_filename": "m.onnx", "model_sha256": "a" * 64,
                    "status": status, "target_uid": uid, "requested_uids": [],
                    "parameters": {}, "odt_config": {}, "artifacts": [], "metrics": {},
                    "tags": []}

        session.execute(sa.insert(Benchmark), [bench(n, Status.RUNNING, f"t-{n:04d}")
                                               for n in range(INSTANCES)])
        session.execute(sa.insert(Benchmark), [bench(n, Status.PENDING, None)
                                               for n in range(PENDING)])


def legacy_assign(db: Database) -> int:
    """The round as it was (the scheduler's code before replicas), rolled back afterwards."""
    claimed = 0
    session = db._sessions()
    try:
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
            claimed += 1
        session.flush()
    finally:
        session.rollback()
        session.close()
    return claimed


def free_some(db: Database) -> list[str]:
    """End FREED running benchmarks: their instances are free."""
    with db.session() as session:
        ids = list(session.scalars(select(Benchmark.id).where(
            Benchmark.status == Status.RUNNING).order_by(Benchmark.seq).limit(FREED)))
        session.execute(update(Benchmark).where(Benchmark.id.in_(ids))
                        .values(status=Status.SUCCESS))
    return ids


def undo(db: Database, freed: list[str]) -> None:
    """Back to every instance busy and PENDING waiting."""
    with db.session() as session:
        session.execute(update(Benchmark).where(Benchmark.status == Status.QUEUED)
                        .values(status=Status.PENDING, target_uid=None, claimed_by=None,
                                lease_until=None))
        session.execute(update(Benchmark).where(Benchmark.id.in_(freed))
                        .values(status=Status.RUNNING))


def timed(action: Callable[[], Any], repeats: int,
          before: Callable[[], Any] | None = None,
          after: Callable[[Any], Any] | None = None) -> float:
    """Median seconds of `action` over `repeats` runs (`before`/`after` not timed)."""
    samples = []
    for _ in range(repeats):
        state = before() if before else None
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
        if after:
            after(state)
    return statistics.median(samples)


def loop_stall(scheduler: Scheduler | None) -> tuple[float, float]:
    """(round seconds, largest event-loop gap in seconds) of one round awaited as
    `dispatch_round()` awaits it; with no scheduler, of an idle 50 ms (the machine's noise)."""

    async def measure() -> tuple[float, float]:
        gaps: list[float] = []
        running = True

        async def ticker() -> None:
            last = time.perf_counter()
            while running:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        if scheduler is None:
            await asyncio.sleep(0.05)
        else:
            await asyncio.to_thread(scheduler._assign)  # what dispatch_round awaits
        elapsed = time.perf_counter() - start
        running = False
        await tick
        return elapsed, max(gaps)

    return asyncio.run(measure())


def legacy_loop_stall(db: Database) -> float:
    """The old round ran on the event loop: the loop stalls for all of it."""
    start = time.perf_counter()
    legacy_assign(db)
    return time.perf_counter() - start


def progress_writes(db: Database, scheduler: Scheduler, repeats: int) -> tuple[float, float]:
    """Seconds to write one second's progress of INSTANCES running benchmarks: one session
    and UPDATE per benchmark (as it was) and one batched statement (as it is)."""
    with db.session() as session:
        ids = list(session.scalars(select(Benchmark.id).where(
            Benchmark.status == Status.RUNNING)))

    def one_by_one() -> None:
        for n, bench_id in enumerate(ids):
            with db.session() as session:
                bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
                assert bench is not None
                bench.progress_phase, bench.progress_done = "inference", n

    def batched() -> None:
        scheduler._write_progress({bench_id: Progress("inference", n, 100)
                                   for n, bench_id in enumerate(ids)})

    return timed(one_by_one, repeats), timed(batched, repeats)


@contextmanager
def store(postgres: str | None) -> Iterator[Database]:
    if postgres is None:
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(f"sqlite:///{Path(tmp) / 'vlab.db'}")
            try:
                yield db
            finally:
                db.dispose()
        return
    name = f"vlab_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db = Database(postgres.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield db
    finally:
        db.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def run(postgres: str | None, repeats: int) -> dict[str, float]:
    with store(postgres) as db, tempfile.TemporaryDirectory() as data:
        populate(db)
        settings = Settings(data_dir=Path(data), database_url=db.engine.url.render_as_string(
            hide_password=False))
        settings.ensure_dirs()
        scheduler = Scheduler(settings, db, EventHub(), NoRunner())
        figures = {
            "busy: round before (on the loop)": timed(lambda: legacy_assign(db), repeats),
            "busy: round now (in a thread)": timed(scheduler._assign, repeats),
            "freed: round before (on the loop)": timed(lambda: legacy_assign(db), repeats,
                                                       before=lambda: free_some(db),
                                                       after=lambda ids: undo(db, ids)),
            "freed: round now (in a thread)": timed(scheduler._assign, repeats,
                                                    before=lambda: free_some(db),
                                                    after=lambda ids: undo(db, ids)),
        }
        stalls_before, rounds_now, stalls_now, idle = [], [], [], []
        for _ in range(repeats):
            freed = free_some(db)
            stalls_before.append(legacy_loop_stall(db))
            undo(db, freed)
            freed = free_some(db)
            elapsed, stall = loop_stall(scheduler)
            undo(db, freed)
            rounds_now.append(elapsed)
            stalls_now.append(stall)
            idle.append(loop_stall(None)[1])
        figures["freed: event-loop stall before (all of the round)"] = \
            statistics.median(stalls_before)
        figures["freed: round now, awaited"] = statistics.median(rounds_now)
        figures["freed: event-loop stall now (largest 1 ms tick gap)"] = \
            statistics.median(stalls_now)
        figures["idle event loop: largest 1 ms tick gap (noise)"] = statistics.median(idle)
        before, now = progress_writes(db, scheduler, max(1, repeats // 2))
        figures["progress of 1,000 running: writes before (1/benchmark)"] = before
        figures["progress of 1,000 running: write now (1 batched)"] = now
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", help="PostgreSQL server URL (a scratch database)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    store_name = "PostgreSQL" if args.postgres else "SQLite"
    print(f"dispatch round, {INSTANCES} instances, {PENDING} pending, {store_name}")
    for name, seconds in run(args.postgres, args.repeats).items():
        print(f"  {name:<58} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
