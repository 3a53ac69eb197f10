"""Which API replica drives a federated-learning experiment: claims, leases, take-over."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from vlab_backend.events import EventHub
from vlab_backend.federated.orchestrator import ClaimLost, Orchestrator
from vlab_backend.store.database import Database
from vlab_backend.store.schema import (
    Benchmark,
    Dataset,
    FLExperimentRow,
    Status,
    StoredModel,
    User,
)


def orchestrator(db: Database, tmp_path: Path, replica: str, shared: bool) -> Orchestrator:
    settings = SimpleNamespace(replica_lease_s=30.0, shared_store=shared, tmp_dir=tmp_path)
    scheduler = SimpleNamespace(settings=settings, hub=EventHub(), models=None, datasets=None,
                                replica_id=replica)
    return Orchestrator(db, scheduler, max_nb_inference=10)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'vlab.db'}")
    database.migrate()
    now = datetime.now(UTC)
    with database.session() as session:
        session.add(User(id=1, email="a@lab.example"))
        session.flush()
        for ident, status, owner, lease in (
                ("alive", "running", "other", now + timedelta(seconds=60)),
                ("expired", "running", "other", now - timedelta(seconds=1)),
                ("mine", "running", "me", now + timedelta(seconds=60)),
                ("unclaimed", "pending", None, None),
                ("done", "success", None, None)):
            session.add(FLExperimentRow(id=ident, owner_id=1, status=status, message="",
                                        config={}, results={}, model_id=1, model_filename="m",
                                        current_round=0, claimed_by=owner, lease_until=lease))
    return database


def test_a_shared_store_takes_only_what_no_live_replica_drives(db: Database,
                                                               tmp_path: Path) -> None:
    me = orchestrator(db, tmp_path, "me", shared=True)
    assert sorted(me._claim_orphans(at_start=True)) == ["expired", "mine", "unclaimed"]
    with db.session() as session:
        owners = {row.id: row.claimed_by for row in session.query(FLExperimentRow)}
    assert owners["expired"] == "me" and owners["alive"] == "other"
    # Later passes find nothing new: every lease is fresh.
    assert me._claim_orphans(at_start=False) == []
    other = orchestrator(db, tmp_path, "other", shared=True)
    assert other._claim_orphans(at_start=False) == []
    # A replica that lost its claim learns it when it renews.
    assert other._renew(["alive", "expired"]) == ["expired"]


def test_one_server_on_sqlite_resumes_everything_unfinished(db: Database,
                                                            tmp_path: Path) -> None:
    me = orchestrator(db, tmp_path, "restarted", shared=False)
    assert sorted(me._claim_orphans(at_start=True)) == ["alive", "expired", "mine",
                                                        "unclaimed"]
    assert me._ended("done") and me._ended("missing") and not me._ended("alive")


# -- terminal paths: client jobs and per-round subsets -------------------------------------------


class Store:
    """The blob store `delete_stored` removes unreferenced blobs from."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove(self, sha256: str) -> None:
        self.removed.append(sha256)


def driver(db: Database, tmp_path: Path, replica: str = "me") -> tuple[Orchestrator, list[str]]:
    """An orchestrator whose scheduler records what it is asked to cancel."""
    canceled: list[str] = []

    async def cancel(bench_id: str) -> None:
        canceled.append(bench_id)
        with db.session() as session:
            session.execute(update(Benchmark).where(Benchmark.id == bench_id)
                            .values(status="canceled"))

    settings = SimpleNamespace(replica_lease_s=30.0, shared_store=True, tmp_dir=tmp_path)
    scheduler = SimpleNamespace(settings=settings, hub=EventHub(), models=None,
                                datasets=Store(), replica_id=replica, cancel=cancel)
    return Orchestrator(db, scheduler, max_nb_inference=10), canceled  # type: ignore[arg-type]


def add_jobs(db: Database) -> None:
    """Client jobs of `mine` (one renamed, one retagged, one done), another user's job that
    only looks like one, and per-round subsets of `mine` (and another user's look-alike)."""
    with db.session() as session:
        session.add(User(id=2, email="b@lab.example"))
        session.add(StoredModel(id=1, owner_id=1, sha256="a" * 64, filename="m.onnx",
                                format="onnx", size=1))
        session.flush()
        for ident, owner, name, tags, status in (
                ("renamed", 1, "my own name", ["fl", "fl-mine"], "running"),
                ("retagged", 1, "FL mine round 1 c1 train", [], "queued"),
                ("done", 1, "FL mine round 1 c2 train", ["fl", "fl-mine"], "success"),
                ("foreign", 2, "FL mine round 1 c1 train", ["fl", "fl-mine"], "running")):
            session.add(Benchmark(id=ident, owner_id=owner, target_type="t", engine="e",
                                  benchmark_type="TYPE3", nb_inference=1, model_id=1,
                                  model_filename="m.onnx", model_sha256="a" * 64, name=name,
                                  tags=tags, status=status))
        for owner, name in ((1, "fl-mine-c1-r1-train-input.bin_" + "b" * 64),
                            (1, "fl-mine-c1-r1-train-output.bin_" + "c" * 64),
                            (1, "kept.bin_" + "d" * 64),
                            (2, "fl-mine-c1-r1-train-input.bin_" + "e" * 64)):
            session.add(Dataset(owner_id=owner, name=name, sha256=name[-64:], size=4))


def dataset_names(db: Database) -> list[str]:
    with db.session() as session:
        return sorted(f"{d.owner_id}:{d.name[:12]}" for d in session.query(Dataset))


def test_cancel_stops_the_owners_client_jobs_even_renamed_and_removes_subsets(
        db: Database, tmp_path: Path) -> None:
    add_jobs(db)
    me, canceled = driver(db, tmp_path)
    assert asyncio.run(me.cancel("mine")) == "canceled"
    assert sorted(set(canceled)) == ["renamed", "retagged"]  # not another user's look-alike
    assert dataset_names(db) == ["1:kept.bin_ddd", "2:fl-mine-c1-r"]


def test_a_failed_experiment_leaves_no_client_job_running(db: Database,
                                                          tmp_path: Path) -> None:
    add_jobs(db)
    me, canceled = driver(db, tmp_path)

    async def broken(_experiment_id: str) -> None:
        raise RuntimeError("the server dataset is gone")

    me._rounds = broken  # type: ignore[method-assign,assignment]
    asyncio.run(me._run("mine"))
    assert sorted(set(canceled)) == ["renamed", "retagged"]
    with db.session() as session:
        row = session.get(FLExperimentRow, "mine")
        assert row is not None
        assert (row.status, row.message) == ("failed", "the server dataset is gone")
        assert session.query(Benchmark.status).filter(Benchmark.id == "foreign").scalar() \
            == "running"
    assert dataset_names(db) == ["1:kept.bin_ddd", "2:fl-mine-c1-r"]


def test_an_experiment_found_ended_has_its_subsets_removed(db: Database,
                                                           tmp_path: Path) -> None:
    add_jobs(db)
    with db.session() as session:  # canceled through another replica
        session.execute(update(FLExperimentRow).where(FLExperimentRow.id == "mine")
                        .values(status="canceled"))
    me, _canceled = driver(db, tmp_path)
    asyncio.run(me._run("mine"))
    assert dataset_names(db) == ["1:kept.bin_ddd", "2:fl-mine-c1-r"]


def test_a_replica_that_lost_the_claim_writes_nothing_and_stops(db: Database,
                                                                tmp_path: Path) -> None:
    me, _canceled = driver(db, tmp_path)
    with pytest.raises(ClaimLost):
        me._set_round("alive", 3)
    with pytest.raises(ClaimLost):
        me._save_round("alive", {"rounds": ["x"]}, 1, "f" * 64, {})
    with pytest.raises(ClaimLost):
        me._finish("alive", Status.SUCCESS, "done")
    with pytest.raises(ClaimLost):
        me._mark_running("alive")

    async def broken(_experiment_id: str) -> None:
        raise RuntimeError("boom")

    me._rounds = broken  # type: ignore[method-assign,assignment]
    asyncio.run(me._run("alive"))  # fails, but the failure is not this replica's to write
    assert "alive" in me._lost
    with db.session() as session:
        row = session.get(FLExperimentRow, "alive")
        assert row is not None
        assert (row.status, row.current_round, row.results) == ("running", 0, {})
    me._set_round("mine", 2)  # its own claim: written
    with db.session() as session:
        assert session.get(FLExperimentRow, "mine").current_round == 2  # type: ignore[union-attr]


def test_the_end_of_a_canceled_experiment_is_announced_once_it_can_be_read(
        db: Database, tmp_path: Path) -> None:
    """A view stops following at the terminal event and reads the results: they must say
    canceled by then."""
    me, _ = driver(db, tmp_path)
    seen: list[tuple[str, str]] = []

    def publish(key: str, event: dict[str, object]) -> None:
        with db.engine.connect() as other:
            stored = other.execute(select(FLExperimentRow.status).where(
                FLExperimentRow.id == key)).scalar_one()
        seen.append((str(event["status"]), stored))

    me.hub.publish = publish  # type: ignore[method-assign]
    assert asyncio.run(me.cancel("mine")) == "canceled"
    assert seen == [("canceled", "canceled")]
