"""The Nomad HTTP API as the runner uses it: python-nomad calls, retried, off the event loop.

python-nomad (module `nomad`) is synchronous (`requests`). Each call runs in a thread pool of
this client's own, `workers` threads sharing as many pooled connections (`pool_block`): the
runner holds at most `workers` + 1 connections to Nomad whatever the number of benchmarks,
far below Nomad's `limits.http_max_conns_per_client` (100, then 429). The one long-lived
request, the allocation watcher's blocking query, runs in a daemon thread with a connection of
its own, so that it never waits behind the calls, nor they behind it, nor the process's exit.

Every call is retried with exponential backoff and jitter (tenacity) on what passes: a
connection refused or dropped, a timeout, a body cut short, 429, and 5xx (`No cluster leader`,
`rpc error: ...`) — for up to `retry_for_s` seconds, then `NomadError`. 404 is
`NomadNotFound` at once. Retrying is safe: registering the same job again, putting the same
Variable, deregistering a job are idempotent.

Requests not made through a python-nomad method, and why (none is hand-written with httpx):
- the blocking allocation list `GET /v1/allocations?index=&wait=&filter=`: python-nomad's
  `allocations.get_allocations` takes neither `index` nor `wait` and returns only the body,
  without the `X-Nomad-Index` header a blocking query needs; it goes through python-nomad's
  own `Requester.request` on that endpoint, which returns the response.
- `/v1/validate/job`: python-nomad's `validate.validate_job` returns the raw response (its
  body is read here).
- Variables: python-nomad adds the client's `?namespace=` to `/v1/variable(s)` paths only,
  not to `/v1/var/...` where Variables live, so it is passed explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import nomad
import nomad.api.exceptions as nomad_errors
import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from vlab_backend.nomad.models import JobRegisterRequest

log = logging.getLogger("vlab.nomad")
T = TypeVar("T")

WORKERS = 8  # concurrent Nomad calls (and pooled connections) per runner
RETRY_FOR_S = 120.0  # how long one call keeps retrying through an outage
CALL_TIMEOUT_S = 30  # connect and read timeout of an ordinary call
MAX_WAIT_S = 300  # Nomad caps a blocking query's wait at 5 min (MaxBlockingRPCQueryTime)


class NomadError(RuntimeError):
    """Nomad refused a request or could not be reached (after the retries)."""


class NomadNotFound(NomadError):
    """Nomad answered 404: no such job, allocation or Variable."""


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "nomad_resp", None)
    return response.status_code if isinstance(response, requests.Response) else None


def is_transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed if tried again: no connection, a timeout, a body
    cut short, 429 (Nomad's per-client connection limit) or 5xx (no leader, RPC errors)."""
    if isinstance(exc, nomad_errors.BaseNomadException):
        status = _status(exc)
        if status is None:  # python-nomad wraps a requests exception: a connection problem
            return True
        return status == 429 or status >= 500
    return isinstance(exc, requests.RequestException | OSError)


def _describe(exc: BaseException, what: str) -> str:
    response = getattr(exc, "nomad_resp", None)
    if isinstance(response, requests.Response):
        return f"Nomad answered {response.status_code} to {what}: {response.text.strip()[:300]}"
    cause = response if isinstance(response, BaseException) else exc
    return f"Nomad is unreachable ({what}): {type(cause).__name__}: {cause}"


def _session(connections: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections, pool_block=True,
                          max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _in_daemon_thread(call: Callable[[], T]) -> asyncio.Future[T]:
    """`call()` in a daemon thread of its own: a blocking query may wait minutes, and must
    neither hold a pool thread nor keep the process alive at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the waiter was canceled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = call(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="nomad-watch", daemon=True).start()
    return future


class NomadClient:
    """The runner's Nomad calls, async, retried. `retry_for_s` bounds one call's retries."""

    def __init__(self, addr: str, token: str = "", namespace: str = "default", *,
                 workers: int = WORKERS, retry_for_s: float = RETRY_FOR_S) -> None:
        self.addr = addr.rstrip("/")
        self.retry_for_s = retry_for_s
        self.namespace = namespace
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nomad")
        self._api = self._nomad(token, namespace, _session(workers))
        self._watch_api = self._nomad(token, namespace, _session(1))

    def _nomad(self, token: str, namespace: str, session: requests.Session) -> Any:
        # python-nomad does not verify TLS certificates unless told (`verify=False` default).
        verify: bool | str = os.environ.get("NOMAD_CACERT") or True
        return nomad.Nomad(address=self.addr, token=token or None, namespace=namespace,
                           timeout=CALL_TIMEOUT_S, verify=verify, session=session)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api.requester_settings["session"].close()
        self._watch_api.requester_settings["session"].close()

    async def _call(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call(*args, **kwargs)` in the pool, retried while the failure is transient."""
        loop = asyncio.get_running_loop()
        try:
            async for attempt in AsyncRetrying(
                    retry=retry_if_exception(is_transient), reraise=True,
                    wait=wait_random_exponential(multiplier=0.1, max=5.0),
                    stop=stop_after_delay(self.retry_for_s),
                    before_sleep=lambda state: log.debug(
                        "Nomad %s failed (%s); retrying", what,
                        state.outcome.exception() if state.outcome else "?")):
                with attempt:
                    return await loop.run_in_executor(
                        self._pool, functools.partial(call, *args, **kwargs))
        except nomad_errors.URLNotFoundNomadException as exc:
            raise NomadNotFound(_describe(exc, what)) from exc
        except (nomad_errors.BaseNomadException, requests.RequestException, OSError) as exc:
            raise NomadError(_describe(exc, what)) from exc
        raise AssertionError("unreachable")  # tenacity either returns or raises

    # -- jobs ------------------------------------------------------------------------------
    async def validate(self, job: JobRegisterRequest) -> list[str]:
        """Nomad's own validation of the job; the problems it reports."""
        validate = self._api.validate.validate_job
        body: dict[str, Any] = await self._call(
            "validate job", lambda job_json: validate(job_json).json(), job.to_json())
        problems = list(body.get("ValidationErrors") or [])
        if body.get("Error") and not problems:
            problems.append(body["Error"])
        return problems

    async def register(self, job: JobRegisterRequest) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("register job",
                                                  self._api.jobs.register_job, job.to_json())
        return result

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None if Nomad does not know it (never registered, or purged)."""
        try:
            result: dict[str, Any] = await self._call(f"read job {job_id}",
                                                      self._api.job.get_job, job_id)
        except NomadNotFound:
            return None
        return result

    async def job_allocations(self, job_id: str) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = await self._call(
                f"list allocations of {job_id}", self._api.job.get_allocations, job_id,
                all_=True)
        except NomadNotFound:
            return []
        return result

    async def evaluations(self, job_id: str) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = await self._call(
                f"list evaluations of {job_id}", self._api.job.get_evaluations, job_id)
        except NomadNotFound:
            return []
        return result

    async def nodes(self) -> list[dict[str, Any]]:
        """The cluster's client nodes (`/v1/nodes` stubs: name, status, drain, eligibility)."""
        result: list[dict[str, Any]] = await self._call("list nodes", self._api.nodes.get_nodes)
        return result

    async def deregister(self, job_id: str, purge: bool = False) -> None:
        """Stop the job (its allocations get DesiredStatus stop); with `purge`, also remove
        it from Nomad's state at once. A job Nomad does not know is fine."""
        with contextlib.suppress(NomadNotFound):
            await self._call(f"{'purge' if purge else 'stop'} job {job_id}",
                             self._api.job.deregister_job, job_id, purge=purge or None)

    # -- allocations -----------------------------------------------------------------------
    async def allocations(self, index: int = 0, wait_s: float = 60.0, filter_: str = ""
                          ) -> tuple[list[dict[str, Any]], int]:
        """Every allocation (matching the bexpr `filter_`); with `index`, a blocking query
        that answers once Nomad's allocation index passes it, or after `wait_s`."""
        params: dict[str, Any] = {}
        if filter_:
            params["filter"] = filter_
        if index:
            params.update(index=index, wait=f"{int(min(wait_s, MAX_WAIT_S))}s")
        # Nomad adds up to wait/16 of jitter to a blocking query's wait.
        timeout = (CALL_TIMEOUT_S, min(wait_s, MAX_WAIT_S) * 17 / 16 + CALL_TIMEOUT_S)
        requester = self._watch_api.allocations

        def query() -> requests.Response:
            return requester.request(method="get", params=dict(params), timeout=timeout)

        what = "list allocations"
        try:
            async for attempt in AsyncRetrying(
                    retry=retry_if_exception(is_transient), reraise=True,
                    wait=wait_random_exponential(multiplier=0.1, max=5.0),
                    stop=stop_after_delay(self.retry_for_s)):
                with attempt:
                    response = await _in_daemon_thread(query)
                    allocations: list[dict[str, Any]] = response.json()
                    new_index = int(response.headers.get("X-Nomad-Index") or 0)
                    return allocations, new_index
        except (nomad_errors.BaseNomadException, requests.RequestException, OSError) as exc:
            raise NomadError(_describe(exc, what)) from exc
        raise AssertionError("unreachable")

    async def task_log(self, alloc_id: str, task: str, kind: str = "stderr") -> str:
        text: str = await self._call(f"read the {kind} of {alloc_id}",
                                     self._api.client.stream_logs.stream, alloc_id, task,
                                     kind, plain=True)
        return text

    # -- variables -------------------------------------------------------------------------
    async def put_variable(self, path: str, items: dict[str, str]) -> None:
        # python-nomad adds `?namespace=` only below /v1/variable(s), not /v1/var: say it.
        await self._call(f"put variable {path}", self._api.variable.create_variable, path,
                         {"Path": path, "Items": items}, namespace=self.namespace)

    async def delete_variable(self, path: str) -> None:
        with contextlib.suppress(NomadNotFound):
            await self._call(f"delete variable {path}", self._api.variable.delete_variable,
                             path, namespace=self.namespace)
