"""Two API replicas — two `vlab serve` processes — on one PostgreSQL database, sharing the
data dir (the model and dataset stores, job and artifact dirs: shared storage in a
deployment). Benchmarks submitted half to each run exactly once each, every one ends in
success, and no instance ever runs two at once, whichever replica claimed them.

The target repository is the built-in host-cpu one with two lines of the test's own: the
first step logs the job's start and takes the instance's "busy" directory (saying so if it is
taken already), the last step gives it back. PostgreSQL comes from VLAB_TEST_POSTGRES_URL
(`.ci/run` starts a server); the test is skipped without one outside CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.api.test_benchmarks_api import submit
from tests.server import LiveServer, postgres_database
from vlab_backend.targets import builtin_targets_dir

pytestmark = pytest.mark.slow

INSTANCES = 6
JOBS = 200


def logging_target(repository: Path, runs: Path) -> Path:
    """The host-cpu target repository, logging each start and holding a busy mark per
    instance while a job runs on it."""
    shutil.copytree(builtin_targets_dir() / "host-cpu", repository)
    support = repository / "AI_Support" / "support.sh"
    shebang, rest = support.read_text().split("\n", 1)
    support.write_text(
        f"{shebang}\n"
        f'mkdir "{runs}/busy/$TARGET_UID" 2>/dev/null || echo "overlap $TARGET_UID $PWD" '
        f'>>"{runs}/log"\n'
        f'echo "start $TARGET_UID $PWD" >>"{runs}/log"\n{rest}')
    manager = repository / "AI_Manager" / "manager.sh"
    manager.write_text(manager.read_text().rstrip("\n")
                       + f'\nrmdir "{runs}/busy/$TARGET_UID"\n')
    return repository


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer, str, Path]]:
    runs = tmp_path / "runs"
    (runs / "busy").mkdir(parents=True)
    repository = logging_target(tmp_path / "target", runs)
    cores = sorted(os.sched_getaffinity(0))
    engines = {"synthetic": {"supported_types": ["TYPE1"]}}
    config = {"replica-cpu": [{"target_uid": f"rep-{n}", "repository": str(repository),
                               "cpuset": [cores[n % len(cores)]], "engines": engines}
                              for n in range(INSTANCES)]}
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps(config))
    with postgres_database() as url:
        servers: list[LiveServer] = []
        try:
            for name in ("a", "b"):  # one data dir, one database
                servers.append(LiveServer(tmp_path / "data", ["--targets", str(targets)],
                                          env={"VLAB_REPLICA_ID": f"replica-{name}"},
                                          database_url=url).start())
            yield servers[0], servers[1], url, runs
        finally:
            for server in servers:
                server.stop()


def test_two_replicas_run_each_benchmark_once_and_each_instance_one_at_a_time(
        replicas: tuple[LiveServer, LiveServer, str, Path], small_onnx: Path) -> None:
    first, second, url, runs = replicas
    parameters = {"mean_ms": 0.1, "warmup_min_s": 0}
    ids: list[str] = []
    with first.client() as one, second.client() as two:
        for n in range(JOBS):
            response = submit(one if n % 2 == 0 else two, small_onnx, device="replica-cpu",
                              engine="synthetic", nb_inference="5", parameters=parameters)
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
        final = wait_all_terminal(one, ids)
        # Either replica answers for every benchmark.
        assert two.get(f"/api/benchmarks/{ids[0]}/status").json()["status"] == "success"
    failed = {bench_id: body["message"] for bench_id, body in final.items()
              if body["status"] != "success"}
    assert not failed, failed
    lines = (runs / "log").read_text().splitlines()
    assert not [line for line in lines if line.startswith("overlap")], lines
    starts = Counter(bench_id for line in lines for bench_id in
                     re.findall(r"/jobs/([0-9a-f]+)(?:/|$)", line.split(" ", 2)[2]))
    assert set(starts) == set(ids) and set(starts.values()) == {1}, starts.most_common(3)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            claims: dict[str, int] = dict(connection.execute(sa.text(
                "select claimed_by, count(*) from benchmarks group by claimed_by")).all())
    finally:
        engine.dispose()
    # Every benchmark was claimed by one of the two (which one took how many depends on the
    # machine's load; each ran once, as checked above).
    assert set(claims) <= {"replica-a", "replica-b"}, claims
    assert sum(claims.values()) == JOBS


def wait_all_terminal(client: httpx.Client, ids: list[str],
                      timeout: float = 600) -> dict[str, dict[str, Any]]:
    """Until every benchmark has ended; their bodies by id."""
    left = list(ids)
    final: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        body = client.get(f"/api/benchmarks/{left[0]}").json()
        if body["status"] in ("success", "failed", "canceled"):
            final[left.pop(0)] = body
        else:
            time.sleep(0.1)
    assert not left, f"{len(left)} benchmark(s) did not end"
    return final


def test_a_cancel_sent_to_the_other_replica_stops_the_job(
        replicas: tuple[LiveServer, LiveServer, str, Path], small_onnx: Path) -> None:
    """The replica that did not claim the job stops it through its runner reference and
    leaves the request in the database; the claiming one ends it canceled."""
    first, second, url, _ = replicas
    with first.client() as one, second.client() as two:
        bench_id = submit(one, small_onnx, device="replica-cpu", engine="synthetic",
                          nb_inference="100000", parameters={"mean_ms": 5}).json()["id"]
        deadline = time.monotonic() + 120
        while one.get(f"/api/benchmarks/{bench_id}/status").json()["status"] != "running":
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.05)
        engine = sa.create_engine(url)
        try:
            with engine.connect() as connection:
                owner = connection.execute(sa.text(
                    "select claimed_by from benchmarks where id = :id"), {"id": bench_id}
                ).scalar()
        finally:
            engine.dispose()
        other = two if owner == "replica-a" else one
        assert other.post(f"/api/benchmarks/{bench_id}/cancel").json()["status"] == "canceled"
        final = wait_all_terminal(one, [bench_id], timeout=120)[bench_id]
    assert final["status"] == "canceled", final["message"]
