"""The store on SQLite and on PostgreSQL: migrations, constraints, JSON, FIFO order.

PostgreSQL comes from VLAB_TEST_POSTGRES_URL (`.ci/run` installs and starts a server); outside
CI the PostgreSQL cases are skipped when it is not set."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    from alembic.script import ScriptDirectory

    from vlab_backend.store.database import MIGRATIONS

    scripts = ScriptDirectory(str(MIGRATIONS))
    assert "0004" in {script.revision for script in scripts.walk_revisions()}
    with db.engine.connect() as connection:
        assert connection.execute(sa.text("select version_num from alembic_version")
                                  ).scalar() == scripts.get_current_head()


def test_the_migrations_build_the_tables_the_code_declares(db: Database) -> None:
    """Every column of `schema` has its migration (and no migration leaves a column the code
    does not know)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from vlab_backend.store.schema import Base

    db.migrate()
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def _alembic(db: Database, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from vlab_backend.store.database import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def test_runs_stored_before_labels_get_empty_ones(db: Database) -> None:
    """0004 on a store with runs: they keep everything and get an empty name, tags and notes;
    it goes back down too. (Plain SQL: the tables as of 0004, whatever later revisions add.)"""
    _alembic(db, "upgrade", "0003")
    with db.engine.begin() as connection:
        connection.execute(sa.text(
            "insert into users (email, is_admin, created_at) values ('a@b.c', false, "
            ":now)"), {"now": "2026-01-01 00:00:00"})
        connection.execute(sa.text(
            "insert into models (owner_id, sha256, filename, format, size, info, public, "
            "created_at) values (1, :sha, 'm.onnx', 'onnx', 3, '{}', false, :now)"),
            {"sha": "a" * 64, "now": "2026-01-01 00:00:00"})
        connection.execute(sa.text(
            "insert into benchmarks (id, owner_id, target_type, engine, benchmark_type, "
            "nb_inference, requested_uids, parameters, model_id, model_filename, model_sha256, "
            "odt_config, status, message, progress_done, progress_total, progress_phase, "
            "artifacts, metrics, public, created_at) values ('old', 1, 'host-cpu', "
            "'onnxruntime', 'TYPE1', 5, '[]', '{}', 1, 'm.onnx', :sha, '{}', 'success', '', "
            "0, 0, '', '[]', '{\"latency_mean_s\": 0.5}', false, :now)"),
            {"sha": "a" * 64, "now": "2026-01-01 00:00:00"})
    _alembic(db, "upgrade", "0004")
    labels = sa.table("benchmarks", sa.column("id"), sa.column("name"),
                      sa.column("tags", sa.JSON), sa.column("notes"), sa.column("metrics", sa.JSON))
    with db.engine.begin() as connection:
        old = connection.execute(sa.select(labels).where(labels.c.id == "old")).one()
        assert (old.name, old.tags, old.notes) == ("", [], "")
        assert old.metrics == {"latency_mean_s": 0.5}
        connection.execute(labels.update().where(labels.c.id == "old").values(
            name="baseline", tags=["fp32", "v1.2"], notes="first try"))
        again = connection.execute(sa.select(labels).where(labels.c.id == "old")).one()
        assert again.tags == ["fp32", "v1.2"] and again.name == "baseline"
    _alembic(db, "downgrade", "0003")
    columns = {c["name"] for c in sa.inspect(db.engine).get_columns("benchmarks")}
    assert "tags" not in columns and "model_sha256" in columns


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


# -- storage errors ------------------------------------------------------------------------------
# The server's answer to an upload when its data dir's tmp/ is a tiny file system: a real full
# disk, in a private mount namespace of a subprocess (root only; skipped elsewhere).
FULL_DISK_CLIENT = """
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from vlab_backend.api import create_app
from vlab_backend.config import Settings

data_dir, size = Path(sys.argv[1]), int(sys.argv[2])
with TestClient(create_app(Settings(data_dir=data_dir))) as client:
    token = (data_dir / "local-admin.token").read_text().strip()
    answer = client.post("/api/models/download", headers={"Authorization": f"Bearer {token}"},
                         files={"model": ("m.onnx", b"\\0" * size)})
    print(json.dumps({"status": answer.status_code, "body": answer.json(),
                      "left": sorted(p.name for p in (data_dir / "tmp").iterdir())}))
"""


def upload_to_a_full_disk(tmp_path: Path, upload_bytes: int, tmpfs_bytes: int) -> dict[str, Any]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs")
    data_dir = tmp_path / "data"
    (data_dir / "tmp").mkdir(parents=True)
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         f'mount -t tmpfs -o size={tmpfs_bytes} tmpfs "$1/tmp" && exec "$2" -c "$3" "$1" "$4"',
         "sh", str(data_dir), sys.executable, FULL_DISK_CLIENT, str(upload_bytes)],
        capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "mount" in done.stderr and not done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answer


@pytest.mark.slow
@pytest.mark.parametrize(("upload_mib", "tmpfs_mib"), [
    (2, 3),  # the form parser spools the part, saving a copy of it fills the disk
    (4, 2),  # the form parser's own spool fills the disk
])
def test_an_upload_to_a_full_disk_is_a_507(tmp_path: Path, upload_mib: int,
                                           tmpfs_mib: int) -> None:
    answer = upload_to_a_full_disk(tmp_path, upload_mib << 20, tmpfs_mib << 20)
    assert answer["status"] == 507, answer
    assert "out of storage space" in answer["body"]["error"]
    assert answer["left"] == []  # nothing half-written stays behind


def test_a_corrupt_database_stops_the_server_with_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "vlab.db").write_bytes(b"not a database, but not empty either" * 200)
    done = subprocess.run([sys.executable, "-m", "vlab_kernel.cli", "serve", "--data-dir",
                           str(data_dir), "--port", "1", "--no-warm-workers"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "vlab.db cannot be used (file is not a database)" in done.stderr
    assert "restore it from a backup" in done.stderr


def test_existing_data_dirs_and_secrets_become_private(tmp_path: Path) -> None:
    from vlab_backend.config import Settings

    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir(mode=0o755)
    settings.data_dir.chmod(0o755)
    for secret in (settings.credential_file, settings.secret_file):
        secret.write_text("secret\n")
        secret.chmod(0o644)
    database_file = settings.data_dir / "vlab.db"
    sqlite3.connect(database_file).close()
    database_file.chmod(0o644)
    settings.ensure_dirs()
    database = Database(settings.db_url)
    database.migrate()
    database.dispose()
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    for path in (settings.credential_file, settings.secret_file, database_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_new_database_is_private(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'new.db'}")
    database.migrate()
    database.dispose()
    assert stat.S_IMODE((tmp_path / "new.db").stat().st_mode) == 0o600


def test_a_part_over_its_limit_is_refused_as_it_streams_in() -> None:
    """A model part over the model limit but under the request limit: refused once the part
    passes its limit, long before the rest of the body is read."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.types import Message

    from vlab_backend.api.uploads import BodySizeLimit

    async def form(request: Request) -> JSONResponse:
        await request.form()
        return JSONResponse({"ok": True})

    app = BodySizeLimit(Starlette(routes=[Route("/", form, methods=["POST"])]),
                        limit=64 << 20, part_limits={"model": 1 << 20})
    chunk = 64 << 10
    body = (b"--b\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m.onnx\"\r\n\r\n"
            + b"\0" * (8 << 20) + b"\r\n--b--\r\n")
    sent = 0
    answer: list[Message] = []

    async def receive() -> Message:
        nonlocal sent
        piece = body[sent:sent + chunk]
        sent += len(piece)
        return {"type": "http.request", "body": piece, "more_body": sent < len(body)}

    async def send(message: Message) -> None:
        answer.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("testserver", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}
    asyncio.run(app(scope, receive, send))
    assert answer[0]["status"] == 413
    assert json.loads(answer[1]["body"])["error"] == \
        "the model exceeds the upload limit of 1 MiB"
    assert sent <= (1 << 20) + 2 * chunk  # the part's limit and a chunk, not 8 MiB


def test_label_filters_and_result_rows(db: Database) -> None:
    """The tag and name filters and the results table, in each database's SQL: a tag matches
    a whole element of the stored JSON list in any case, LIKE wildcards are literal, and tags
    come back as lists."""
    import orjson

    from vlab_backend.api.results import encode, table_query
    from vlab_backend.api.routes.benchmarks import Filters, _filtered

    db.migrate()
    labelled = {"b0": ("Baseline fp32", ["fp32", "v1.2:rc_1"]), "b1": ("int8_try", ["INT8"]),
                "b2": ("", [])}
    with db.session() as session:
        user = create_user(session, "labels@example.org", "a long password", is_admin=False)
        model = StoredModel(owner_id=user.id, sha256="b" * 64, filename="m.onnx",
                            format="onnx", size=3, info={})
        session.add(model)
        session.flush()
        for bench_id, (name, tags) in labelled.items():
            session.add(Benchmark(id=bench_id, owner_id=user.id, target_type="host-cpu",
                                  engine="onnxruntime", benchmark_type="TYPE1", nb_inference=3,
                                  model_id=model.id, model_filename="m.onnx",
                                  model_sha256=model.sha256, name=name, tags=tags,
                                  metrics={"latency_mean_s": 0.01}))

    def ids(**filters: Any) -> list[str]:
        with db.session() as session:
            query = _filtered(Filters(**filters)).order_by(Benchmark.seq)
            return [b.id for b in session.scalars(query)]

    assert ids(tag=["FP32"]) == ["b0"]
    assert ids(tag=["int8"]) == ["b1"]
    assert ids(tag=["fp32", "v1.2:rc_1"]) == ["b0"]
    assert ids(tag=["fp32", "int8"]) == []
    assert ids(tag=["fp3"]) == [] and ids(tag=["v1_2:rc_1"]) == []
    assert ids(name="BASELINE") == ["b0"]
    assert ids(name="_") == ["b1"] and ids(name="%") == []
    with db.session() as session:
        rows = list(session.execute(table_query(_filtered(Filters()).order_by(Benchmark.seq))))
    records = orjson.loads(encode(rows, "records"))
    assert [(r["name"], r["tags"]) for r in records] == list(labelled.values())
    table = orjson.loads(encode(rows, "columns"))
    tags = table["columns"].index("tags")
    assert [row[tags] for row in table["data"]] == [tags for _, tags in labelled.values()]
