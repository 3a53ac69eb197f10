"""Login storm: how responsive `GET /api/benchmarks/status` stays while many wrong-password
logins are verified (argon2, ~0.1 s of CPU each).

Each account's guesses come from a loopback address of its own (127.0.0.2, 127.0.0.3, ...), as
a storm from many clients would, and stay under the per-account failure limit, so that every
guess is verified. The status endpoint is probed one request after another, first at rest and
then for as long as the storm lasts, at a steady rate; both p99s come from the same server in
the same run.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from tests.server import LiveServer
from vlab_backend.auth import hash_password
from vlab_backend.store.database import Database
from vlab_backend.store.schema import User

STATUS = "/api/benchmarks/status"
PROBE_INTERVAL_S = 0.02  # 50 status requests a second
PROBE_CONNECTIONS = 32


@dataclass(frozen=True)
class StormResult:
    rest_p99_s: float  # the status endpoint's p99 with no other traffic
    storm_p99_s: float  # its p99 while the logins are in flight
    storm_samples: int  # status requests answered during the storm
    login_statuses: dict[int, int]  # what the logins were answered: status -> count
    storm_s: float  # first login sent → last login answered

    @property
    def ratio(self) -> float:
        return self.storm_p99_s / self.rest_p99_s


def p99(samples: list[float]) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def add_accounts(server: LiveServer, count: int) -> list[str]:
    """`count` accounts written straight to the store (one hash shared: creating them is not
    what is measured)."""
    emails = [f"storm{i}@lab.example" for i in range(count)]
    password_hash = hash_password("the right password")
    db = Database(f"sqlite:///{server.data_dir / 'vlab.db'}")
    try:
        with db.session() as session:
            session.add_all(User(email=email, password_hash=password_hash, is_admin=False)
                            for email in emails)
    finally:
        db.dispose()
    return emails


def probe(url: str, stop: threading.Event, count: int | None = None) -> list[float]:
    """Status request latencies, `count` of them or until `stop`. Requests leave at a steady
    rate whether or not earlier ones were answered, and each is timed from when it was due:
    a stall counts for every request it holds up, not just for the one that met it."""
    with httpx.Client(base_url=url, timeout=600,
                      limits=httpx.Limits(max_connections=PROBE_CONNECTIONS)) as client, \
            ThreadPoolExecutor(PROBE_CONNECTIONS) as pool:

        def timed(due: float) -> float:
            client.get(STATUS).raise_for_status()
            return time.perf_counter() - due

        sent: list[Future[float]] = []
        start = time.perf_counter()
        while count is None or len(sent) < count:
            due = start + len(sent) * PROBE_INTERVAL_S
            if stop.wait(max(0.0, due - time.perf_counter())):
                break
            sent.append(pool.submit(timed, due))
        return [request.result() for request in sent]


def login_storm(server: LiveServer, accounts: int = 40, logins: int = 200,
                rest_samples: int = 200) -> StormResult:
    """`logins` concurrent wrong-password logins spread evenly over `accounts` new accounts."""
    emails = add_accounts(server, accounts)
    never = threading.Event()
    probe(server.url, never, 20)  # warm-up: connections, first-request costs
    rest = probe(server.url, never, rest_samples)
    clients = [httpx.Client(base_url=server.url, timeout=600,
                            transport=httpx.HTTPTransport(local_address=f"127.0.0.{2 + i}"))
               for i in range(accounts)]
    ready = threading.Barrier(logins + 1)

    def guess(index: int) -> int:
        account = index % accounts
        ready.wait()
        response = clients[account].post("/api/users/login", json={
            "email": emails[account], "password": f"wrong guess {index}"})
        return response.status_code

    stop = threading.Event()
    try:
        with ThreadPoolExecutor(logins + 1) as pool:
            statuses = [pool.submit(guess, i) for i in range(logins)]
            ready.wait()
            started = time.perf_counter()
            during = pool.submit(probe, server.url, stop)
            counted = collections.Counter(future.result() for future in statuses)
            storm_s = time.perf_counter() - started
            stop.set()
            storm = during.result()
    finally:
        for client in clients:
            client.close()
    return StormResult(rest_p99_s=p99(rest), storm_p99_s=p99(storm), storm_samples=len(storm),
                       login_statuses=dict(counted), storm_s=storm_s)
