"""Engine and session factory for SQLite (embedded) or any SQLAlchemy URL."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger(__name__)


# Where a session keeps what is to run once its transaction commits (`after_commit`).
_AFTER_COMMIT = "vlab_after_commit"

# PostgreSQL advisory lock keys ("vlab" + a number).
_MIGRATION_LOCK = 0x766C6101
_STARTUP_LOCK = 0x766C6102


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's transaction has committed, and never if it rolls back.
    What others are told of a change (an event that makes a view read it again) must not
    reach them before they can read it. Not for savepoints (`begin_nested`, which nothing
    here uses): SQLAlchemy reports a savepoint's release as a commit."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def _run_after_commit(session: Session) -> None:
    # The change is committed whatever an action does: each runs, and none makes the commit
    # look failed.
    for action in session.info.pop(_AFTER_COMMIT, []):
        try:
            action()
        except Exception:
            log.exception("an action after a commit failed")


def _drop_after_commit(session: Session, _previous: Any) -> None:
    session.info.pop(_AFTER_COMMIT, None)


class StoreUnusable(Exception):
    """The database cannot be opened or read: a one-line message saying what to do."""


class Database:
    def __init__(self, url: str) -> None:
        connect_args: dict[str, Any] = {}
        if url.startswith("sqlite"):
            connect_args = {"check_same_thread": False, "timeout": 30}
            _make_private(make_url(url).database)
        self.engine: Engine = create_engine(url, connect_args=connect_args, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self._sessions, "after_commit", _run_after_commit)
        event.listen(self._sessions, "after_soft_rollback", _drop_after_commit)

    def check(self) -> None:
        """Raises StoreUnusable unless the database opens and reads (a corrupt SQLite file, a
        PostgreSQL server that cannot be reached)."""
        try:
            with self.engine.connect() as connection:
                if self.engine.dialect.name == "sqlite":
                    connection.execute(text("SELECT count(*) FROM sqlite_master"))
                else:
                    connection.execute(text("SELECT 1"))
        except DBAPIError as exc:
            where = self.engine.url.database if self.engine.dialect.name == "sqlite" else \
                self.engine.url.render_as_string(hide_password=True)
            reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
            raise StoreUnusable(
                f"the database {where} cannot be used ({reason}): restore it from a backup, or "
                "move it away to start with an empty store") from None

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic), creating it if needed."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.engine.url.render_as_string(False))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas starting together: one migrates, the others wait and find it done.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def startup_lock(self) -> Iterator[None]:
        """Serialises the start-up writes (admin, targets, catalogue) of API replicas that
        share a PostgreSQL database; SQLite has one server per data dir, so nothing to do."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _STARTUP_LOCK})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": _STARTUP_LOCK})
                connection.commit()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


def _make_private(path: str | None) -> None:
    """The SQLite file (and so its -wal and -shm files, which SQLite creates with its mode)
    is readable by the server's user only."""
    if not path or path == ":memory:":
        return
    # A directory that does not exist yet, read-only media: SQLite says so itself.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with contextlib.suppress(OSError):
            os.chmod(name, 0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the CLI and a second server process read while the scheduler writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
