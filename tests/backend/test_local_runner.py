"""The local runner's warm path: a worker that takes a request starts the pipeline or the job
fails; only a worker that cannot be reached sends the pipeline to a cold start."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backend.test_pipeline import make_job, make_repository
from vlab_backend.runners.local import LocalRunner


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRunner]:
    warm_runner = LocalRunner(warm_workers=True)
    assert warm_runner.warm is not None
    monkeypatch.setattr(warm_runner.warm, "socket_for", lambda _cores: tmp_path / "w.sock")
    yield warm_runner
    asyncio.run(warm_runner.aclose())


def mute_worker(path: Path) -> None:
    """Takes one request, then goes away without answering."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        connection, _ = server.accept()
        connection.recv(1 << 20)
        connection.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()


def test_a_worker_that_takes_the_request_but_fails_fails_the_start(
        runner: LocalRunner, tmp_path: Path) -> None:
    job = make_job(tmp_path, make_repository(tmp_path / "repo", {}))
    mute_worker(tmp_path / "w.sock")
    with pytest.raises(RuntimeError, match="did not start the pipeline"):
        asyncio.run(runner.start(job, job.read_spec()))
    assert job.recorded_reference() is None  # no second, cold pipeline either


def test_without_a_worker_the_pipeline_starts_cold(runner: LocalRunner, tmp_path: Path) -> None:
    job = make_job(tmp_path, make_repository(tmp_path / "repo", {}))

    async def run() -> str:
        ref = await runner.start(job, job.read_spec())
        await runner.wait(job, ref)
        return ref

    ref = asyncio.run(run())
    assert job.recorded_reference() == ref
    result = job.read_result()
    assert result is not None and result.succeeded


# A step reads its parent's (the pipeline's) start-up environment, as a hostile script would.
PARENT_ENVIRONMENT = 'tr "\\0" "\\n" < /proc/$PPID/environ > "$VLAB_OUT_DIR/parent.env"'


def test_the_pipeline_starts_without_the_servers_secrets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_TOKEN", "vlab_server-token")
    monkeypatch.setenv("NOMAD_TOKEN", "nomad-acl-token")
    job = make_job(tmp_path, make_repository(tmp_path / "repo", {"build": PARENT_ENVIRONMENT}))
    cold = LocalRunner(warm_workers=False)

    async def run() -> None:
        await cold.wait(job, await cold.start(job, job.read_spec()))

    asyncio.run(run())
    seen = (job.out / "parent.env").read_text()
    assert "PATH=" in seen
    assert "server-token" not in seen and "nomad-acl-token" not in seen
