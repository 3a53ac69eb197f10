"""The store on SQLite and on PostgreSQL: migrations, constraints, JSON, FIFO order.

PostgreSQL comes from VLAB_TEST_POSTGRES_URL (`.ci/run` installs and starts a server); outside
CI the PostgreSQL cases are skipped when it is not set."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from vlab_backend.auth import create_user
from vlab_backend.store.database import Database
from vlab_backend.store.schema import Benchmark, StoredModel, TargetInstance, User


def _postgres_url() -> str | None:
    url = os.environ.get("VLAB_TEST_POSTGRES_URL")
    if url is None and os.environ.get("CI"):
        pytest.fail("VLAB_TEST_POSTGRES_URL is not set: .ci/run starts a PostgreSQL server")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'vlab.db'}")
        yield database
        database.dispose()
        return
    base = _postgres_url()
    if base is None:
        pytest.skip("no PostgreSQL server (set VLAB_TEST_POSTGRES_URL)")
    name = f"vlab_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    database = Database(base.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield database
    finally:
        database.dispose()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrations_create_the_schema_and_are_idempotent(db: Database) -> None:
    db.migrate()
    db.migrate()
    tables = set(sa.inspect(db.engine).get_table_names())
    assert {"users", "api_tokens", "models", "datasets", "target_instances", "benchmarks",
            "hardware_types", "engine_families", "engine_parameters", "engine_parameter_links",
            "job_credentials", "hosts", "alembic_version"} <= tables
    with db.engine.connect() as connection:
        assert connection.execute(sa.text("select version_num from alembic_version")
                                  ).scalar() == "0003"


def test_constraints_json_and_fifo_order(db: Database) -> None:
    db.migrate()
    with db.session() as session:
        user = create_user(session, "Ada@Example.org", "a long password", is_admin=False)
        session.add(TargetInstance(uid="board-1", target_type="board",
                                   engines={"tflite": {"supported_types": ["TYPE1"]}},
                                   cpuset=[0, 1]))
        model = StoredModel(owner_id=user.id, sha256="a" * 64, filename="m.onnx",
                            format="onnx", size=3, info={"inputs": [{"shape": [1, 3]}]})
        session.add(model)
        session.flush()
        for index in range(3):
            session.add(Benchmark(id=f"b{index}", owner_id=user.id, target_type="board",
                                  engine="tflite", benchmark_type="TYPE1", nb_inference=5,
                                  model_id=model.id, model_filename="m.onnx",
                                  model_sha256=model.sha256, parameters={"threads": index},
                                  metrics={"latency_mean_s": 0.001 * (index + 1)}))
    with db.session() as session:
        fifo = session.scalars(select(Benchmark).where(Benchmark.status == "pending")
                               .order_by(Benchmark.seq)).all()
        assert [b.id for b in fifo] == ["b0", "b1", "b2"]
        assert fifo[2].parameters == {"threads": 2}
        assert fifo[1].metrics["latency_mean_s"] == pytest.approx(0.002)
        instance = session.get(TargetInstance, "board-1")
        assert instance is not None and instance.cpuset == [0, 1]
        assert session.scalar(select(User.email)) == "ada@example.org"
    with pytest.raises(ValueError, match="already exists"), db.session() as session:
        create_user(session, "ada@example.org", "another password", is_admin=False)
    with pytest.raises(IntegrityError), db.session() as session:
        session.add(User(email="ada@example.org", is_admin=False))
        session.flush()
