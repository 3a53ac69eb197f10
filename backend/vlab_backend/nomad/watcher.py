"""One allocation watcher for all of a runner's Nomad jobs.

A single blocking query, `GET /v1/allocations?index=…&filter=JobID matches "^vlab-bench-"`,
follows every benchmark job at once (one connection, whatever the number of benchmarks:
Nomad refuses a client's 101st connection with 429). Each answer is the full list, so a
reconnection after an outage needs no separate reconciliation. Each watched job has a future
that settles once, with a `JobOutcome`:

- `ended`: every allocation of the job is terminal (or it was canceled before placement);
- `lost`: an allocation is `lost`, or `unknown` (its host stopped heartbeating and the job
  forbids a replacement) for longer than the placement deadline;
- `unplaced`: no allocation by the placement deadline; the reason is the evaluation's
  `FailedTGAllocs` in words ("no Nomad node can run it: missing compatible host volumes
  vlab-host (3 nodes filtered)");
- `gone`: the job vanished from Nomad before it was placed.

An unreachable Nomad never settles a future: the loop retries with backoff, and the runner
finalises a benchmark from the result its pipeline posts to the API meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_random_exponential

from vlab_backend.nomad.client import NomadClient, NomadError

log = logging.getLogger("vlab.nomad.watcher")

TERMINAL = ("complete", "failed", "lost")
Kind = Literal["ended", "lost", "unplaced", "gone"]


@dataclass(frozen=True)
class JobOutcome:
    kind: Kind
    allocation: dict[str, Any] | None = None
    message: str = ""


@dataclass
class _Watch:
    job_id: str
    future: asyncio.Future[JobOutcome]
    since: float
    job: Mapping[str, Any] | None = None
    allocations: list[dict[str, Any]] = field(default_factory=list)
    unknown_since: float | None = None
    canceled: bool = False
    checking: bool = False


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe_placement_failure(evaluations: list[dict[str, Any]],
                               job: Mapping[str, Any] | None = None) -> str | None:
    """Why Nomad could not place the job, in words, from the newest evaluation that has
    `FailedTGAllocs` (None if none has)."""
    failed = [e for e in evaluations if e.get("FailedTGAllocs")]
    if not failed:
        return None
    newest = max(failed, key=lambda e: (e.get("CreateIndex", 0), e.get("ModifyIndex", 0)))
    spec = (job or {}).get("Job", job) or {}
    groups = {g.get("Name"): g for g in spec.get("TaskGroups") or []}
    parts: list[str] = []
    for group_name, metric in sorted(newest["FailedTGAllocs"].items()):
        metric = metric or {}
        volumes = sorted({v.get("Source", "") for v in
                          ((groups.get(group_name) or {}).get("Volumes") or {}).values()
                          if v.get("Type") == "host"})
        if not metric.get("NodesEvaluated") and not metric.get("NodesInPool"):
            pool = spec.get("NodePool") or "default"
            parts.append(f'no node is ready in node pool "{pool}"')
        for reason, count in sorted((metric.get("ConstraintFiltered") or {}).items()):
            if reason == "missing compatible host volumes" and volumes:
                reason = f"{reason} {', '.join(volumes)}"
            parts.append(f"{reason} ({_plural(count, 'node')} filtered)")
        for reason, count in sorted((metric.get("ClassFiltered") or {}).items()):
            parts.append(f"node class {reason} ({_plural(count, 'node')} filtered)")
        for dimension, count in sorted((metric.get("DimensionExhausted") or {}).items()):
            parts.append(f"not enough {dimension} ({_plural(count, 'node')} exhausted)")
        parts.extend(f"quota {quota} exhausted" for quota in metric.get("QuotaExhausted") or [])
    unique = list(dict.fromkeys(parts)) or ["Nomad gave no reason"]
    return "no Nomad node can run it: " + "; ".join(unique)


class AllocationWatcher:
    """Follows the allocations of every job whose ID starts with `prefix`."""

    def __init__(self, client: NomadClient, prefix: str, placement_deadline_s: float,
                 wait_s: float = 60.0) -> None:
        self.client = client
        self.prefix = prefix
        self.deadline_s = placement_deadline_s
        self.wait_s = wait_s
        self._watches: dict[str, _Watch] = {}
        self._snapshot: dict[str, list[dict[str, Any]]] = {}
        self._has_watches = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._checks: set[asyncio.Task[None]] = set()
        self.queries = 0  # blocking queries answered, for tests and diagnostics

    # -- the runner's side -----------------------------------------------------------------
    def watch(self, job_id: str, job: Mapping[str, Any] | None = None
              ) -> asyncio.Future[JobOutcome]:
        """The future outcome of `job_id` (the job's JSON names its volumes in reasons).
        The placement deadline counts from the first call."""
        self._ensure_running()
        existing = self._watches.get(job_id)
        if existing is not None:
            return existing.future
        loop = asyncio.get_running_loop()
        watch = _Watch(job_id=job_id, future=loop.create_future(), since=loop.time(), job=job)
        self._watches[job_id] = watch
        self._has_watches.set()
        if job_id in self._snapshot:
            self._update(watch, self._snapshot[job_id])
        return watch.future

    def cancel(self, job_id: str) -> None:
        """The job is being stopped: it ends once nothing of it runs (at once if nothing
        was placed)."""
        watch = self._watches.get(job_id)
        if watch is not None:
            watch.canceled = True
            self._update(watch, watch.allocations)

    def forget(self, job_id: str) -> None:
        watch = self._watches.pop(job_id, None)
        if watch is not None and not watch.future.done():
            watch.future.cancel()
        if not self._watches:
            self._has_watches.clear()

    def allocations(self, job_id: str) -> list[dict[str, Any]]:
        """The job's allocations as last seen."""
        watch = self._watches.get(job_id)
        return list(watch.allocations) if watch else list(self._snapshot.get(job_id, []))

    async def close(self) -> None:
        for task in [*self._tasks, *self._checks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._checks, return_exceptions=True)
        self._tasks.clear()
        for watch in self._watches.values():
            if not watch.future.done():
                watch.future.cancel()
        self._watches.clear()

    # -- the loops -------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._follow(), name="nomad-allocations"),
                           asyncio.create_task(self._tick(), name="nomad-deadlines")]

    async def _follow(self) -> None:
        """The blocking query, forever; Nomad being away only delays it."""
        index = 0
        filter_ = f'JobID matches "^{self.prefix}"'
        failing = False
        while True:
            await self._has_watches.wait()
            try:
                async for attempt in AsyncRetrying(
                        retry=retry_if_exception_type(NomadError), stop=stop_never,
                        wait=wait_random_exponential(multiplier=0.5, max=10.0)):
                    with attempt:
                        try:
                            allocations, new_index = await self.client.allocations(
                                index, self.wait_s, filter_)
                        except NomadError as exc:
                            if not failing:
                                log.warning("cannot follow Nomad allocations (retrying): %s",
                                            exc)
                            failing = True
                            raise
            except asyncio.CancelledError:
                raise
            except Exception:  # a malformed answer: start over from a full list
                log.exception("following Nomad allocations failed; listing them again")
                index = 0
                await asyncio.sleep(1.0)
                continue
            if failing:
                log.info("following Nomad allocations again")
                failing = False
            self.queries += 1
            # An index that goes back (a restored or new cluster) means: list everything.
            index = new_index if new_index >= index else 0
            self._apply(allocations)

    def _apply(self, allocations: list[dict[str, Any]]) -> None:
        by_job: dict[str, list[dict[str, Any]]] = {}
        for alloc in allocations:
            job_id = str(alloc.get("JobID", ""))
            if job_id.startswith(self.prefix):
                by_job.setdefault(job_id, []).append(alloc)
        self._snapshot = by_job
        for job_id, watch in list(self._watches.items()):
            self._update(watch, by_job.get(job_id, []))

    def _settle(self, watch: _Watch, outcome: JobOutcome) -> None:
        if not watch.future.done():
            watch.future.set_result(outcome)

    def _update(self, watch: _Watch, allocations: list[dict[str, Any]]) -> None:
        if watch.future.done():
            return
        watch.allocations = list(allocations)
        if not allocations:
            if watch.canceled:
                self._settle(watch, JobOutcome("ended", None, "stopped before it was placed"))
            return
        latest = max(allocations, key=lambda a: a.get("ModifyIndex", 0))
        lost = [a for a in allocations if a.get("ClientStatus") == "lost"]
        if lost:
            alloc = max(lost, key=lambda a: a.get("ModifyIndex", 0))
            self._settle(watch, JobOutcome("lost", alloc, (
                f"the target's host {alloc.get('NodeName') or '?'} was lost while the "
                "benchmark ran (allocation lost)")))
            return
        if all(a.get("ClientStatus") in TERMINAL for a in allocations):
            self._settle(watch, JobOutcome("ended", latest))
            return
        if any(a.get("ClientStatus") == "unknown" for a in allocations) and \
                not any(a.get("ClientStatus") in ("running", "pending") for a in allocations):
            if watch.unknown_since is None:
                watch.unknown_since = asyncio.get_running_loop().time()
        else:
            watch.unknown_since = None

    async def _tick(self) -> None:
        """Deadlines: unplaced jobs, allocations whose host stopped answering."""
        period = max(0.05, min(1.0, self.deadline_s / 10))
        while True:
            await asyncio.sleep(period)
            try:
                self._check_deadlines()
            except Exception:  # keep watching whatever one round hit
                log.exception("checking Nomad job deadlines failed")

    def _check_deadlines(self) -> None:
        now = asyncio.get_running_loop().time()
        for watch in list(self._watches.values()):
            if watch.future.done():
                continue
            if watch.unknown_since is not None and \
                    now - watch.unknown_since >= self.deadline_s:
                alloc = next((a for a in watch.allocations
                              if a.get("ClientStatus") == "unknown"), None)
                node = (alloc or {}).get("NodeName") or "?"
                self._settle(watch, JobOutcome("lost", alloc, (
                    f"the target's host {node} stopped answering Nomad for "
                    f"{self.deadline_s:g} s (allocation unknown); the benchmark was "
                    "stopped and not run elsewhere")))
            elif not watch.allocations and not watch.checking and \
                    now - watch.since >= self.deadline_s:
                watch.checking = True
                task = asyncio.create_task(self._check_placement(watch))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

    async def _check_placement(self, watch: _Watch) -> None:
        """Past the deadline with no allocation seen: ask Nomad why (or find it placed)."""
        try:
            allocations = await self.client.job_allocations(watch.job_id)
            if allocations:
                self._update(watch, allocations)
                return
            job = await self.client.job(watch.job_id)
            if job is None:
                self._settle(watch, JobOutcome("gone", None, (
                    "the Nomad job disappeared before it was placed")))
                return
            reason = describe_placement_failure(
                await self.client.evaluations(watch.job_id), watch.job or job)
            if reason is None:
                reason = f"Nomad did not place the job (job status {job.get('Status')})"
            self._settle(watch, JobOutcome("unplaced", None, (
                f"not placed within {self.deadline_s:g} s: {reason}")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Nomad away: look again at the next tick
            log.warning("cannot tell why %s is not placed yet: %s", watch.job_id, exc)
        finally:
            watch.checking = False

