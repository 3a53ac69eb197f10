"""The scheduler's database work: off the event loop, batched progress, claims that several
API replicas on one PostgreSQL database make at the same time, and the take-over of a dead
replica's jobs.

PostgreSQL comes from VLAB_TEST_POSTGRES_URL (`.ci/run` starts a server); outside CI the
PostgreSQL cases are skipped when it is not set."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, select, update

from tests.server import postgres_database
from vlab_backend.artifacts import Outcome
from vlab_backend.auth import create_user
from vlab_backend.config import Settings
from vlab_backend.events import EventHub
from vlab_backend.jobdir import JobDir, JobSpec, Progress
from vlab_backend.scheduler import Scheduler
from vlab_backend.store.database import Database, after_commit
from vlab_backend.store.schema import Benchmark, Status, StoredModel, TargetInstance


class IdleRunner:
    """A runner whose jobs never start: these tests drive the scheduler's rounds by hand."""

    def prewarm(self, instances: Any) -> None:
        pass

    async def start(self, job: JobDir, spec: JobSpec) -> str:
        await asyncio.Event().wait()
        return ""

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


def populate(db: Database, instances: int, pending: int, running: int = 0) -> None:
    """`instances` host-cpu instances (synthetic engine), `running` of them busy, and
    `pending` benchmarks waiting."""
    db.migrate()
    with db.session() as session:
        user = create_user(session, "a@b.c", None, is_admin=False)
        model = StoredModel(owner_id=user.id, sha256="a" * 64, filename="m.onnx",
                            format="onnx", size=3, info={})
        session.add(model)
        session.flush()
        session.add_all(TargetInstance(uid=f"cpu-{n:04d}", target_type="host-cpu",
                                       engines={"synthetic": {}}, cpuset=[0])
                        for n in range(instances))

        def bench(status: Status, uid: str | None = None) -> Benchmark:
            return Benchmark(id=uuid.uuid4().hex, owner_id=user.id, target_type="host-cpu",
                             engine="synthetic", benchmark_type="TYPE1", nb_inference=5,
                             model_id=model.id, model_filename="m.onnx",
                             model_sha256="a" * 64, status=status, target_uid=uid)

        session.add_all(bench(Status.RUNNING, f"cpu-{n:04d}") for n in range(running))
        session.add_all(bench(Status.PENDING) for _ in range(pending))


def scheduler(db: Database, data_dir: Path, replica: str = "") -> Scheduler:
    settings = Settings(data_dir=data_dir, database_url=str(db.engine.url.render_as_string(
        hide_password=False)), replica_id=replica)
    settings.ensure_dirs()
    return Scheduler(settings, db, EventHub(), IdleRunner())


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'vlab.db'}")
    yield database
    database.dispose()


@pytest.fixture
def postgres() -> Iterator[Database]:
    with postgres_database() as url:
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


def statements(db: Database) -> tuple[list[tuple[int, str]], Any]:
    """(thread id, SQL) of every statement the engine runs, and the listener to remove."""
    seen: list[tuple[int, str]] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((threading.get_ident(), statement))

    event.listen(db.engine, "before_cursor_execute", record)
    return seen, record


def test_a_dispatch_round_runs_its_database_work_off_the_event_loop(
        sqlite: Database, tmp_path: Path) -> None:
    populate(sqlite, instances=4, pending=10)
    sched = scheduler(sqlite, tmp_path / "data")
    seen, listener = statements(sqlite)

    async def round_() -> tuple[int, int]:
        loop_thread = threading.get_ident()
        claimed = await sched.dispatch_round()
        event.remove(sqlite.engine, "before_cursor_execute", listener)
        await sched.stop()  # the spawned starts, before they ran
        return loop_thread, claimed

    loop_thread, claimed = asyncio.run(round_())
    assert claimed == 4
    assert seen, "the round ran no statement"
    assert loop_thread not in {thread for thread, _ in seen}
    with sqlite.session() as session:
        queued = session.scalars(select(Benchmark).where(
            Benchmark.status == Status.QUEUED)).all()
    assert len(queued) == 4 and len({b.target_uid for b in queued}) == 4
    assert {b.claimed_by for b in queued} == {sched.replica_id}


def test_a_round_with_every_instance_busy_reads_no_pending_benchmark(
        sqlite: Database, tmp_path: Path) -> None:
    populate(sqlite, instances=20, pending=100, running=20)
    sched = scheduler(sqlite, tmp_path / "data")
    seen, listener = statements(sqlite)
    try:
        assert sched._assign() == []
    finally:
        event.remove(sqlite.engine, "before_cursor_execute", listener)
    assert len(seen) == 1 and "FROM target_instances" in seen[0][1]


def test_progress_reaches_the_database_in_one_statement_for_all_running_jobs(
        sqlite: Database, tmp_path: Path) -> None:
    populate(sqlite, instances=3, pending=0, running=3)
    sched = scheduler(sqlite, tmp_path / "data")
    with sqlite.session() as session:
        ids = list(session.scalars(select(Benchmark.id)))
    for n, bench_id in enumerate(ids):
        sched._progress_due[bench_id] = Progress("inference", n + 1, 10)
    seen, listener = statements(sqlite)
    try:
        asyncio.run(sched.flush_progress())
    finally:
        event.remove(sqlite.engine, "before_cursor_execute", listener)
    assert [sql for _, sql in seen if sql.startswith("UPDATE")] == [seen[0][1]]
    assert not sched._progress_due
    with sqlite.session() as session:
        done = {b.id: b.progress_done for b in session.scalars(select(Benchmark))}
    assert done == {bench_id: n + 1 for n, bench_id in enumerate(ids)}


def test_replicas_racing_for_work_claim_each_benchmark_and_instance_once(
        postgres: Database, tmp_path: Path) -> None:
    """Three replicas run their rounds at the same moment, again and again, while the jobs
    they claimed end in between: every benchmark is claimed once, and no round hands an
    instance that is busy (or that another replica claimed in the same round)."""
    populate(postgres, instances=30, pending=300)
    replicas = [scheduler(postgres, tmp_path / "data", f"replica-{n}") for n in range(3)]
    barrier = threading.Barrier(len(replicas))
    claims: Counter[str] = Counter()
    rounds = 0

    def race(replica: Scheduler) -> list[tuple[str, JobSpec]]:
        barrier.wait()
        return replica._assign()

    with ThreadPoolExecutor(len(replicas)) as pool:
        while True:
            results = list(pool.map(race, replicas))
            rounds += 1
            claimed = [spec for result in results for _, spec in result]
            uids = [spec.target_uid for spec in claimed]
            assert len(uids) == len(set(uids)), "an instance was handed out twice"
            claims.update(spec.benchmark_id for spec in claimed)
            with postgres.session() as session:
                running = session.scalars(select(Benchmark).where(
                    Benchmark.status == Status.QUEUED)).all()
                assert sorted(b.target_uid or "" for b in running) == sorted(uids)
                assert {b.claimed_by for b in running} <= {r.replica_id for r in replicas}
                session.execute(update(Benchmark).where(Benchmark.status == Status.QUEUED)
                                .values(status=Status.SUCCESS))
                left = session.scalar(select(sa.func.count()).where(
                    Benchmark.status == Status.PENDING))
            if not left:
                break
            assert rounds < 100
    assert len(claims) == 300 and set(claims.values()) == {1}


def test_a_dead_replicas_jobs_are_taken_over_once_its_lease_runs_out(
        postgres: Database, tmp_path: Path) -> None:
    populate(postgres, instances=2, pending=2)
    alive = scheduler(postgres, tmp_path / "data", "alive")
    dead = scheduler(postgres, tmp_path / "data", "dead")
    kept, lost = (bench_id for bench_id, _ in alive._assign())
    with postgres.session() as session:  # the other one, the dead replica claimed
        session.execute(update(Benchmark).where(Benchmark.id == lost).values(
            claimed_by="dead"))
    late = scheduler(postgres, tmp_path / "data", "late")
    # A replica that starts takes no job whose replica renews its lease.
    assert late._claim_orphans(at_start=True) == []
    assert alive._claim_orphans() == []
    with postgres.session() as session:  # the dead replica stopped renewing
        session.execute(update(Benchmark).where(Benchmark.id == lost).values(
            lease_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert alive._claim_orphans() == [(lost, None)]
    assert late._claim_orphans() == []  # taken once
    with postgres.session() as session:
        owners = dict(session.execute(select(Benchmark.id, Benchmark.claimed_by)
                                      .where(Benchmark.status == Status.QUEUED)).all())
    assert owners == {kept: "alive", lost: "alive"}
    # The dead replica, come back, finalises nothing that it no longer holds.
    dead._finalize(lost, Outcome(Status.FAILED, "stale"))
    with postgres.session() as session:
        assert session.scalar(select(Benchmark.status).where(Benchmark.id == lost)) == "queued"


def test_the_data_dir_is_locked_for_sqlite_only(tmp_path: Path) -> None:
    """One server per SQLite store; replicas on PostgreSQL share the data dir, lock-free."""
    own = Settings(data_dir=tmp_path / "own")
    fd = own.lock_data_dir()
    try:
        with pytest.raises(RuntimeError, match="another VLab server is using"):
            Settings(data_dir=tmp_path / "own").lock_data_dir()
    finally:
        os.close(fd)
    shared = Settings(data_dir=tmp_path / "shared",
                      database_url="postgresql+psycopg://vlab@db/vlab")
    assert shared.shared_store and not own.shared_store
    assert shared.lock_data_dir() == -1 and shared.lock_data_dir() == -1
    assert (tmp_path / "shared" / "jobs").is_dir()


def test_an_event_is_published_only_once_what_it_announces_can_be_read(
        sqlite: Database, tmp_path: Path) -> None:
    """Views re-read the database on an event (the queue on a targets event, a run's page on
    its terminal one): at the moment an event is published, another connection must already
    read the state it announces, or the view shows the old state and waits for nothing."""
    populate(sqlite, instances=1, pending=1, running=1)
    sched = scheduler(sqlite, tmp_path / "data")
    with sqlite.session() as session:
        statuses = dict(session.execute(select(Benchmark.id, Benchmark.status)).all())
    running = next(b for b, status in statuses.items() if status == Status.RUNNING)
    pending = next(b for b, status in statuses.items() if status == Status.PENDING)
    seen: list[tuple[str, str, str]] = []

    def publish(bench_id: str, event: dict[str, Any]) -> None:
        with sqlite.engine.connect() as other:  # another reader, as a request would be
            stored = other.execute(select(Benchmark.status).where(
                Benchmark.id == bench_id)).scalar_one()
        seen.append((bench_id, event["status"], stored))

    sched.hub.publish = publish  # type: ignore[method-assign]
    sched._finalize(running, Outcome(Status.SUCCESS, ""))
    assert asyncio.run(sched.cancel(pending)) == Status.CANCELED
    assert seen == [(running, Status.SUCCESS, Status.SUCCESS),
                    (pending, Status.CANCELED, Status.CANCELED)]


def test_events_of_a_transaction_that_rolls_back_are_never_published(
        sqlite: Database) -> None:
    populate(sqlite, instances=1, pending=1)
    hub, published = EventHub(), []
    hub.publish = lambda key, event: published.append(key)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError), sqlite.session() as session:
        hub.publish_on_commit(session, "lost", {"status": Status.RUNNING})
        raise RuntimeError("the change is abandoned")
    with sqlite.session() as session:
        hub.publish_on_commit(session, "kept", {"status": Status.RUNNING})
        assert published == []  # not before the commit
    assert published == ["kept"]


def test_an_action_after_a_commit_that_fails_leaves_the_commit_and_the_others(
        sqlite: Database) -> None:
    populate(sqlite, instances=1, pending=1)
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("the event loop is closed")

    with sqlite.session() as session:
        bench = session.scalars(select(Benchmark)).one()
        bench.message = "changed"
        after_commit(session, broken)
        after_commit(session, lambda: done.append("next"))
    assert done == ["next"]
    with sqlite.session() as session:
        assert session.scalars(select(Benchmark.message)).one() == "changed"
