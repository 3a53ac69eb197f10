"""Databases for the host tests: SQLite, and PostgreSQL from VLAB_TEST_POSTGRES_URL (`.ci/run`
starts a server; elsewhere the PostgreSQL cases are skipped when it is not set)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vlab.db'}"
        return
    with postgres_database() as url:
        yield url
