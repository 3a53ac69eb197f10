"""A live `vlab serve` process for tests, with its own data dir and port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """`database_url`: a PostgreSQL database instead of the data dir's SQLite file; then the
    server takes no lock on the data dir, and several servers (API replicas) may share both."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args or []
        self.extra_env = env or {}
        if database_url is not None:
            self.extra_env["VLAB_DATABASE_URL"] = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self._log_start = 0  # where this start's lines begin in the log

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "VLAB_TOKEN"}
        # Health checks take the instances for a moment after start: only the tests that
        # check health turn them on (their own `env`).
        env.update(VLAB_HEALTH_CHECK_ON_JOIN="0", VLAB_HEALTH_CHECK_INTERVAL_H="0")
        env.update(VLAB_DATA_DIR=str(self.data_dir), VLAB_URL=self.url, **self.extra_env)
        return env

    def start(self) -> LiveServer:
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vlab_kernel.cli", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), *self.extra_args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/api/benchmarks/status", timeout=1).status_code == 200 \
                        and self.credential_path.exists():
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until `text` appears `count` times in what this start of the server logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                if log.read().decode(errors="replace").count(text) >= count:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the server never logged {text!r} {count} time(s)")

    def wait_for_warm_workers(self, timeout: float = 60) -> None:
        """Until every instance's warm worker takes requests (one per core here)."""
        from vlab_backend.runners.warm import READY_LINE

        self.wait_for_log(READY_LINE, len(os.sched_getaffinity(0)), timeout)

    @property
    def credential_path(self) -> Path:
        return self.data_dir / "local-admin.token"

    @property
    def token(self) -> str:
        return self.credential_path.read_text().strip()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args: str, stdin: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vlab_kernel.cli", *args],
                              env={**self.env, **env}, input=stdin, capture_output=True,
                              text=True, timeout=300)


def wait_terminal(client: httpx.Client, bench_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/api/benchmarks/{bench_id}").json()
        if body["status"] in ("success", "failed", "canceled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"benchmark {bench_id} did not finish")


def wait_status(client: httpx.Client, bench_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(f"/api/benchmarks/{bench_id}/status").json()["status"] == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"benchmark {bench_id} never became {status}")


def add_user(server: LiveServer, email: str, password: str = "a long password",
             admin: bool = False) -> None:
    done = server.cli("user", "add", email, *(["--admin"] if admin else []),
                      stdin=password + "\n")
    assert done.returncode == 0, done.stderr


def user_client(server: LiveServer, email: str,
                password: str = "a long password") -> httpx.Client:
    """A client authenticated as `email`, created on first use."""
    response = httpx.post(server.url + "/api/users/login",
                          json={"email": email, "password": password})
    if response.status_code == 401:
        add_user(server, email, password)
        response = httpx.post(server.url + "/api/users/login",
                              json={"email": email, "password": password})
    response.raise_for_status()
    return server.client(response.json()["access_token"])


def postgres_base_url() -> str | None:
    """The PostgreSQL server of the tests (VLAB_TEST_POSTGRES_URL; `.ci/run` starts one and
    sets it): None outside CI when it is not set, a failure in CI."""
    import pytest

    url = os.environ.get("VLAB_TEST_POSTGRES_URL")
    if url is None and os.environ.get("CI"):
        pytest.fail("VLAB_TEST_POSTGRES_URL is not set: .ci/run starts a PostgreSQL server")
    return url


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards; the test is skipped
    when there is no PostgreSQL server."""
    import pytest
    import sqlalchemy as sa

    base = postgres_base_url()
    if base is None:
        pytest.skip("no PostgreSQL server (set VLAB_TEST_POSTGRES_URL)")
    name = f"vlab_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
