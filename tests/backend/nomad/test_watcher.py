"""The Nomad runner against the stand-in, in-process: one watcher for every job, retries
through Nomad's failures, the placement deadline, lost hosts, and the connection limit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.nomad_fake import FakeNomad
from tests.nomad_feasibility import node_from_client_config
from vlab_backend.config import Settings
from vlab_backend.hosts.sdk import nomad_client_config
from vlab_backend.jobdir import JobDir, JobSpec, PipelineResult
from vlab_backend.nomad.client import WORKERS, NomadClient, NomadError
from vlab_backend.nomad.jobs import benchmark_job, job_id, variable_path
from vlab_backend.nomad.watcher import describe_placement_failure
from vlab_backend.runners.nomad import NomadRunner
from vlab_backend.store.database import Database
from vlab_backend.store.schema import Base

T = TypeVar("T")
DEADLINE_S = 1.0


def node(name: str, uids: list[str], memory_mb: int = 8192, cpu: int = 8000
         ) -> dict[str, Any]:
    return node_from_client_config(nomad_client_config(name, uids, minimal=False), name,
                                   memory_mb=memory_mb, cpu_mhz=cpu)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Database:
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('db') / 'vlab.db'}")
    Base.metadata.create_all(db.engine)  # the runner keeps job credentials there
    return db


@pytest.fixture
def nomad() -> Iterator[FakeNomad]:
    fake = FakeNomad([node("alpha", ["rpi5-0001", "rpi5-0002"]), node("beta", ["jetson-0001"])],
                     execute=False).start()
    try:
        yield fake
    finally:
        fake.stop()


def run(tmp_path: Path, nomad: FakeNomad, database: Database,
        scenario: Callable[[NomadRunner], Awaitable[T]], **settings: Any) -> T:
    """`scenario(runner)` in an event loop that fails the test on any task exception left
    unretrieved (what an unhandled Nomad error used to leave)."""
    options: dict[str, Any] = {"nomad_placement_deadline_s": DEADLINE_S}
    options.update(settings)

    async def main() -> T:
        errors: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        runner = NomadRunner(Settings(data_dir=tmp_path, nomad_addr=nomad.url,
                                      public_url="http://api.lab:8765", **options), database,
                             client=NomadClient(nomad.url, retry_for_s=30))
        try:
            return await scenario(runner)
        finally:
            await runner.aclose()
            assert errors == [], errors

    return asyncio.run(main())


def spec(bench_id: str, uid: str = "rpi5-0001") -> JobSpec:
    return JobSpec(benchmark_id=bench_id, repository="", target="rpi5", target_uid=uid,
                   engine="tflite", benchmark_type="TYPE1", nb_inference=3,
                   model_path="/m.tflite", model_filename="m.tflite",
                   image="registry.lab/rpi5-tflite:1")


async def started(runner: NomadRunner, bench_id: str, uid: str = "rpi5-0001"
                  ) -> tuple[JobDir, str]:
    job = JobDir(runner.settings.jobs_dir / bench_id)
    job.create(spec(bench_id, uid))
    return job, await runner.start(job, spec(bench_id, uid))


def in_thread(call: Callable[[], T]) -> Awaitable[T]:
    return asyncio.to_thread(call)


def post_result(job: JobDir, exit_code: int = 0) -> None:
    """What the API does when the pipeline posts its outputs: the result, last."""
    result = PipelineResult(exit_code=exit_code, message="" if exit_code == 0 else "boom")
    job.write_result(result)


def test_a_failed_task_ends_with_its_exit_code_and_the_job_is_purged(
        tmp_path: Path, nomad: FakeNomad, database: Database) -> None:
    async def scenario(runner: NomadRunner) -> PipelineResult | None:
        job, ref = await started(runner, "b1")
        await in_thread(lambda: nomad.wait_until(lambda: nomad.running_alloc(ref)))
        nomad.finish(ref, exit_code=3)
        await runner.wait(job, ref)
        return job.read_result()

    result = run(tmp_path, nomad, database, scenario)
    assert result is not None and result.exit_code == 3
    assert result.message == "the pipeline exited with code 3 on alpha"
    assert job_id("b1") in nomad.purged and variable_path("b1") not in nomad.variables
    assert any(m == "DELETE" and p == f"/v1/job/{job_id('b1')}" and "purge=True" in q
               for m, p, q in nomad.calls)


def test_one_blocking_query_follows_every_job(tmp_path: Path, nomad: FakeNomad,
                                              database: Database) -> None:
    async def scenario(runner: NomadRunner) -> None:
        jobs = [await started(runner, f"m{i}", uid) for i, uid in
                enumerate(["rpi5-0001", "rpi5-0002", "jetson-0001"])]
        waits = [asyncio.create_task(runner.wait(job, ref)) for job, ref in jobs]
        await in_thread(lambda: nomad.wait_until(
            lambda: all(nomad.running_alloc(ref) for _, ref in jobs)))
        for _, ref in jobs:
            nomad.finish(ref)
        await asyncio.gather(*waits)

    run(tmp_path, nomad, database, scenario)
    per_job = [p for _m, p, _q in nomad.calls if p.endswith("/allocations")
               and p.startswith("/v1/job/")]
    assert per_job == []  # no per-job long-poll: the watcher lists them all
    watch = [q for _m, p, q in nomad.calls if p == "/v1/allocations"]
    assert watch and all("filter=JobID+matches" in q for q in watch)


def test_retries_through_no_leader_and_dropped_connections(
        tmp_path: Path, nomad: FakeNomad, database: Database) -> None:
    async def scenario(runner: NomadRunner) -> PipelineResult | None:
        nomad.fail_next(4)  # "No cluster leader"
        nomad.drop_next(3)
        job, ref = await started(runner, "r1")
        await in_thread(lambda: nomad.wait_until(lambda: nomad.running_alloc(ref)))
        nomad.fail_next(3, status=429, body="Your IP is issuing too many concurrent "
                                            "connections")
        post_result(job)
        await runner.wait(job, ref)
        return job.read_result()

    result = run(tmp_path, nomad, database, scenario)
    assert result is not None and result.succeeded
    assert job_id("r1") in nomad.purged


def test_a_posted_result_ends_the_benchmark_while_nomad_is_away(
        tmp_path: Path, nomad: FakeNomad, database: Database) -> None:
    async def scenario(runner: NomadRunner) -> tuple[PipelineResult | None, bool]:
        runner.cleanup_wait_s = 0.2
        job, ref = await started(runner, "o1")
        await in_thread(lambda: nomad.wait_until(lambda: nomad.running_alloc(ref)))
        nomad.start_outage()
        post_result(job)
        await runner.wait(job, ref)  # returns: the target is free again
        purged_during_outage = job_id("o1") in nomad.purged
        nomad.end_outage()  # the clean-up goes on in the background until Nomad is back
        await in_thread(lambda: nomad.wait_until(lambda: job_id("o1") in nomad.purged))
        return job.read_result(), purged_during_outage

    result, purged_during_outage = run(tmp_path, nomad, database, scenario)
    assert result is not None and result.succeeded and not purged_during_outage
    assert variable_path("o1") not in nomad.variables


def test_an_unplaceable_job_fails_after_the_deadline_with_nomads_reason(
        tmp_path: Path, nomad: FakeNomad, database: Database) -> None:
    async def scenario(runner: NomadRunner) -> PipelineResult | None:
        job, ref = await started(runner, "u1", uid="rpi5-0404")
        await runner.wait(job, ref)
        return job.read_result()

    result = run(tmp_path, nomad, database, scenario)
    assert result is not None and not result.succeeded
    assert result.message == (
        f"not placed within {DEADLINE_S:g} s: no Nomad node can run it: "
        "${meta.vlab_targets} set_contains rpi5-0404 (2 nodes filtered)")
    assert job_id("u1") in nomad.purged and nomad.job_allocs(job_id("u1")) == []


def test_a_lost_host_fails_the_benchmark_and_it_is_not_run_elsewhere(
        tmp_path: Path, database: Database) -> None:
    # Two hosts advertise the same instance: Nomad could put a replacement on the other.
    fake = FakeNomad([node("alpha", ["rpi5-0001"]), node("beta", ["rpi5-0001"])],
                     execute=False).start()

    async def scenario(runner: NomadRunner) -> PipelineResult | None:
        job, ref = await started(runner, "l1")
        alloc = await in_thread(lambda: fake.wait_until(lambda: fake.running_alloc(ref)))
        fake.lose_node(alloc["NodeName"])
        await runner.wait(job, ref)
        return job.read_result()

    try:
        result = run(tmp_path, fake, database, scenario)
        assert result is not None and not result.succeeded
        assert result.message == (
            f"the target's host alpha stopped answering Nomad for {DEADLINE_S:g} s "
            "(allocation unknown); the benchmark was stopped and not run elsewhere")
        assert [a["ClientStatus"] for a in fake.job_allocs(job_id("l1"))] == ["unknown"]
        assert job_id("l1") in fake.purged
    finally:
        fake.stop()


def test_a_lost_allocation_is_not_followed_by_its_replacement(
        tmp_path: Path, database: Database) -> None:
    """A Nomad that ignores `Disconnect` (older than 1.8) marks it lost and replaces it: the
    benchmark fails at once and the purge stops the replacement."""
    fake = FakeNomad([node("alpha", ["rpi5-0001"]), node("beta", ["rpi5-0001"])],
                     execute=False).start()

    async def scenario(runner: NomadRunner) -> PipelineResult | None:
        job, ref = await started(runner, "l2")
        alloc = await in_thread(lambda: fake.wait_until(lambda: fake.running_alloc(ref)))
        fake.jobs[ref]["TaskGroups"][0].pop("Disconnect")  # the allocation's job too
        fake.lose_node(alloc["NodeName"])
        await runner.wait(job, ref)
        return job.read_result()

    try:
        result = run(tmp_path, fake, database, scenario, nomad_placement_deadline_s=60)
        assert result is not None and result.message == (
            "the target's host alpha was lost while the benchmark ran (allocation lost)")
        assert job_id("l2") in fake.purged
        assert not any(a["ClientStatus"] in ("pending", "running")
                       for a in fake.job_allocs(job_id("l2")))
    finally:
        fake.stop()


def test_cancel_before_placement_ends_the_wait(tmp_path: Path, nomad: FakeNomad,
                                               database: Database) -> None:
    async def scenario(runner: NomadRunner) -> PipelineResult | None:
        job, ref = await started(runner, "c1", uid="rpi5-0404")  # never placed
        waiting = asyncio.create_task(runner.wait(job, ref))
        await runner.cancel(ref)
        await waiting
        return job.read_result()

    result = run(tmp_path, nomad, database, scenario, nomad_placement_deadline_s=300)
    assert result is not None and "stopped before it was placed" in result.message
    assert job_id("c1") in nomad.purged


def test_placement_failures_in_words(nomad: FakeNomad) -> None:
    job = benchmark_job(benchmark_id="v1", target_type="rpi5", target_uid="rpi5-0001",
                        engine="tflite", offer={"image": "x:1"}, memory={},
                        api_url="http://api").to_json()
    job["Job"]["TaskGroups"][0]["Volumes"] = {"host": {"Type": "host", "Source": "vlab-host"}}
    httpx.put(f"{nomad.url}/v1/jobs", json=job).raise_for_status()
    evaluations = httpx.get(f"{nomad.url}/v1/job/{job_id('v1')}/evaluations").json()
    assert describe_placement_failure(evaluations, job) == (
        "no Nomad node can run it: ${meta.vlab_targets} set_contains rpi5-0001 "
        "(1 node filtered); missing compatible host volumes vlab-host (1 node filtered)")
    exhausted = [{"CreateIndex": 3, "FailedTGAllocs": {"g": {
        "NodesEvaluated": 3, "DimensionExhausted": {"memory": 3}}}}]
    assert describe_placement_failure(exhausted) == \
        "no Nomad node can run it: not enough memory (3 nodes exhausted)"
    assert describe_placement_failure([{"FailedTGAllocs": None}]) is None


def test_nomad_unreachable_for_good_is_a_nomad_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        client = NomadClient("http://127.0.0.1:9", retry_for_s=0.5)
        try:
            with pytest.raises(NomadError, match="Nomad is unreachable"):
                await client.job("x")
        finally:
            await client.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_200_concurrent_benchmarks_stay_under_the_connection_limit(
        tmp_path: Path, database: Database) -> None:
    count = 200
    uids = [f"rpi5-{i:04d}" for i in range(count)]
    fake = FakeNomad([node("big", uids, memory_mb=1024 * count, cpu=1000 * count)],
                     execute=False).start()

    async def scenario(runner: NomadRunner) -> list[PipelineResult | None]:
        jobs = await asyncio.gather(*(started(runner, f"p{i}", uid)
                                      for i, uid in enumerate(uids)))
        waits = [asyncio.create_task(runner.wait(job, ref)) for job, ref in jobs]
        await in_thread(lambda: fake.wait_until(
            lambda: all(fake.running_alloc(ref) for _, ref in jobs), timeout=120))
        for index, (job, ref) in enumerate(jobs):
            if index % 2:
                post_result(job)  # half end from their posted result
            else:
                fake.finish(ref)  # half from Nomad (no result: a failure)
        await asyncio.gather(*waits)
        return [job.read_result() for job, _ in jobs]

    try:
        results = run(tmp_path, fake, database, scenario)
        assert all(r is not None for r in results)
        assert sum(1 for r in results if r is not None and r.succeeded) == count // 2
        assert fake.refused_429 == 0
        assert fake.max_connections <= WORKERS + 1
        assert len(fake.purged) == count
    finally:
        fake.stop()


def test_re_adoption_after_a_restart(tmp_path: Path, nomad: FakeNomad,
                                     database: Database) -> None:
    async def scenario(runner: NomadRunner) -> tuple[bool, bool, bool]:
        _job, ref = await started(runner, "a1")
        await in_thread(lambda: nomad.wait_until(lambda: nomad.running_alloc(ref)))
        running = await runner.alive(ref)
        nomad.finish(ref)
        await in_thread(lambda: nomad.wait_until(
            lambda: nomad.job_allocs(ref)[0]["ClientStatus"] == "complete"))
        ended = await runner.alive(ref)  # a dead job: finalised from the job dir, and purged
        await in_thread(lambda: nomad.wait_until(lambda: ref in nomad.purged))
        away = NomadRunner(runner.settings, database,
                           client=NomadClient("http://127.0.0.1:9", retry_for_s=0.3))
        try:
            unknown = await away.alive(ref)  # Nomad cannot tell: follow it
        finally:
            await away.aclose()
        return running, ended, unknown

    assert run(tmp_path, nomad, database, scenario) == (True, False, True)
