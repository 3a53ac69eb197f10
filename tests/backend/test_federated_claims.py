"""Which API replica drives a federated-learning experiment: claims, leases, take-over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlab_backend.events import EventHub
from vlab_backend.federated.orchestrator import Orchestrator
from vlab_backend.store.database import Database
from vlab_backend.store.schema import FLExperimentRow, User


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
