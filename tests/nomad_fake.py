"""An HTTP stand-in for the Nomad endpoints the runner uses, strict where it matters.

- **Nodes** come from the client configuration `vlab host init` writes
  (`tests.nomad_feasibility.nodes_from_client_config`); a job is placed on the first node
  (by name) that passes Nomad's feasibility checks (node pool, constraints, drivers, host
  volumes, memory and CPU left; `tests/nomad_feasibility.py`). A job no node can run stays
  `pending`, its evaluation carrying `FailedTGAllocs` (Nomad's AllocMetric) and a blocked
  evaluation, and is placed once capacity frees or a node comes back.
- **Tasks**: like a Nomad client with raw_exec, the stand-in runs the task's `args` with this
  Python, with the task's Env and its Variable template rendered under Nomad's implicit
  Variable ACL (a workload reads only `nomad/jobs/<job>[/<group>[/<task>]]`; anything else
  fails the task). The docker driver's refusals (`cap_add` outside `allow_caps`, ...) fail the
  task with a "Driver Failure", as on a real client. With `execute=False`, tasks do not run:
  allocations stay `running` until `finish(job_id, exit_code)` or a stop.
  Task Env `FAKE_NOMAD=driver_failure` fails the image pull; `FAKE_NOMAD=post` posts a
  minimal report and result to the API instead of running the pipeline (cheap, for many jobs),
  once `released` is set (clear it to hold them all running).
- **Lost hosts**: `lose_node(name)` kills the node's tasks; an allocation whose group sets
  `Disconnect.Replace = false` goes `unknown` and stays; any other is `lost` and replaced on
  another feasible node, whatever the reschedule policy (as Nomad does).
- **The HTTP front** is a TCP proxy like Nomad's agent: at most `max_conns_per_client`
  (100) concurrent connections per client address, the next one answered 429 and closed;
  `fail_next(n)` answers the next n requests 500 "No cluster leader"; `drop_next(n)` closes
  the next n connections without an answer; `outage()` (a context manager, or
  `start_outage()`/`end_outage()`) resets every connection until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.nomad_feasibility import (
    DRIVER,
    EXHAUSTED,
    FILTERED,
    POOL,
    check_group,
    group_cpu,
    group_memory_mb,
    variable_readable,
)
from tests.server import free_port
from vlab_backend.nomad.models import JobRegisterRequest

TEMPLATE_VAR = re.compile(r'nomadVar "([^"]+)" }}(\w+)=\{\{ \.(\w+) }}')
NOMAD_VAR = re.compile(r'nomadVar "([^"]+)"')
INHERITED = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV")
TERMINAL = ("complete", "failed", "lost")
LIVE = ("pending", "running")


def _post_outputs(env: dict[str, str]) -> int:
    """Task Env `FAKE_NOMAD=post`: what `pipeline.remote` posts at its end (a minimal report
    and a successful result), without running a pipeline: many jobs at little cost."""
    import httpx

    base = f"{env['VLAB_API_URL'].rstrip('/')}/api/jobs/{env['VLAB_BENCHMARK_ID']}"
    report = json.dumps({"nb_inference": 1, "target_id": env.get("TARGET_UID")}).encode()
    result = json.dumps({"exit_code": 0, "message": "", "steps": []}).encode()
    try:
        httpx.post(f"{base}/outputs", headers={"Authorization": f"Bearer {env['VLAB_JOB_TOKEN']}"},
                   files=[("out", ("report.json", report)), ("result", ("pipeline.json", result))],
                   timeout=120).raise_for_status()
    except httpx.HTTPError:
        return 1
    return 0


class _Proxy:
    """Nomad's HTTP front door: a per-client connection limit, injectable connection drops
    and outages; everything else goes to the stand-in's app."""

    def __init__(self, upstream_port: int, max_conns_per_client: int) -> None:
        self.upstream_port = upstream_port
        self.cap = max_conns_per_client
        self.port = free_port()
        self.open: dict[str, int] = {}
        self.max_open = 0  # the most concurrent connections one client held
        self.refused_429 = 0
        self.down = False
        self.resets = 0  # connections reset by an outage
        self.drops = 0
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024))
        self._ready.set()
        self._loop.run_forever()

    def _in_loop(self, apply: Callable[[], None]) -> None:
        """Run `apply` in the proxy's loop and wait for it: the change holds on return."""
        async def run() -> None:
            apply()
        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def set_down(self, down: bool) -> None:
        def apply() -> None:
            self.down = down
            if down:
                for client, upstream in list(self._links):
                    self.resets += 1
                    client.transport.abort()
                    if upstream is not None:
                        upstream.transport.abort()
        self._in_loop(apply)

    def drop_next(self, count: int) -> None:
        def apply() -> None:
            self.drops += count
        self._in_loop(apply)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername")[0])
        if self.down:
            self.resets += 1
            writer.transport.abort()
            return
        if self.drops > 0:
            self.drops -= 1
            with contextlib.suppress(Exception):
                await reader.read(1)
            writer.transport.abort()
            return
        if self.open.get(peer, 0) >= self.cap:
            self.refused_429 += 1
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            return
        self.open[peer] = self.open.get(peer, 0) + 1
        self.max_open = max(self.max_open, self.open[peer])
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._links.discard(link)
            link = (writer, up_writer)
            self._links.add(link)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                                 return_exceptions=True)
        finally:
            self._links.discard(link)
            self.open[peer] -= 1
            for end in link:
                if end is not None:
                    end.transport.abort()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(Exception):
                sink.write_eof()


class FakeNomad:
    def __init__(self, nodes: list[dict[str, Any]] | None = None, *, execute: bool = True,
                 max_conns_per_client: int = 100) -> None:
        self.nodes: dict[str, dict[str, Any]] = {n["Name"]: n for n in nodes or []}
        self.execute = execute
        self.jobs: dict[str, dict[str, Any]] = {}
        self.evals: dict[str, dict[str, Any]] = {}
        self.allocs: dict[str, dict[str, Any]] = {}
        self.variables: dict[str, dict[str, str]] = {}
        self.logs: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str, str]] = []  # method, path, query
        self.purged: set[str] = set()
        self.blocked: set[str] = set()
        self.index = 1
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._failures: list[tuple[int, str]] = []
        self.released = threading.Event()  # `FAKE_NOMAD=post` tasks post once it is set
        self.released.set()
        self._closing = False
        self._async_event: asyncio.Event | None = None
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self.app = self._build_app()
        self.app_port = free_port()
        self._proxy = _Proxy(self.app_port, max_conns_per_client)
        self.port = self._proxy.port
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.app_port, log_level="warning",
            backlog=2048, timeout_keep_alive=30))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeNomad:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)
        self._proxy.start()
        return self

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.kill()
        self._closing = True
        self._bump()  # blocking queries answer now
        self._proxy.stop()
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # -- faults --------------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 500, body: str = "No cluster leader") -> None:
        """Answer the next `count` requests with this error (Nomad's leaderless 500)."""
        with self.lock:
            self._failures.extend([(status, body)] * count)

    def drop_next(self, count: int) -> None:
        """Close the next `count` connections without answering."""
        self._proxy.drop_next(count)

    def start_outage(self) -> None:
        self._proxy.set_down(True)

    def end_outage(self) -> None:
        self._proxy.set_down(False)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Nomad unreachable while the block runs: every connection is reset."""
        self.start_outage()
        try:
            yield
        finally:
            self.end_outage()

    @property
    def max_connections(self) -> int:
        return self._proxy.max_open

    @property
    def refused_429(self) -> int:
        return self._proxy.refused_429

    @property
    def outage_resets(self) -> int:
        """Connections an outage reset (open ones, and those tried meanwhile)."""
        return self._proxy.resets

    # -- waiting on the stand-in's state (tests) -----------------------------------------------
    def wait_until(self, predicate: Callable[[], Any], timeout: float = 180) -> Any:
        """Until `predicate()` is true (re-checked at every state change); its value."""
        deadline = time.monotonic() + timeout
        while True:
            with self.changed:
                seen = self.index
            value = predicate()  # outside the lock: it may call the stand-in over HTTP
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("the Nomad stand-in never reached the awaited state")
            with self.changed:
                if self.index == seen:
                    self.changed.wait(min(remaining, 0.5))

    def job_allocs(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.allocs.values() if a["JobID"] == job_id]

    def running_alloc(self, job_id: str) -> dict[str, Any] | None:
        return next((a for a in self.job_allocs(job_id) if a["ClientStatus"] == "running"),
                    None)

    # -- state ---------------------------------------------------------------------------------
    def _bump(self) -> int:
        with self.changed:
            self.index += 1
            self.changed.notify_all()
            index = self.index
        loop = self._server_loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_async)
        return index

    def _wake_async(self) -> None:
        if self._async_event is not None:
            self._async_event.set()
        self._async_event = asyncio.Event()

    def _set_alloc(self, alloc_id: str, status: str, events: list[dict[str, Any]],
                   description: str = "") -> None:
        with self.lock:
            alloc = self.allocs[alloc_id]
            if alloc["ClientStatus"] in TERMINAL and status != alloc["ClientStatus"]:
                return  # a terminal allocation stays as it ended
            alloc["ClientStatus"] = status
            alloc["ClientDescription"] = description
            alloc["ModifyIndex"] = self.index + 1
            alloc["ModifyTime"] = time.time_ns()
            task = alloc["TaskStates"]["pipeline"] if "pipeline" in alloc["TaskStates"] else \
                next(iter(alloc["TaskStates"].values()))
            task["Events"].extend({"Time": time.time_ns(), **e} for e in events)
            task["State"] = "dead" if status in TERMINAL else \
                "running" if status == "running" else task["State"]
            task["Failed"] = status == "failed"
            self._bump()
        if status in TERMINAL:
            self._unblock()

    def _node_usage(self, node_name: str) -> tuple[int, int]:
        used_mb = used_cpu = 0
        for alloc in self.allocs.values():
            if alloc["NodeName"] == node_name and alloc["ClientStatus"] in LIVE and \
                    alloc["DesiredStatus"] == "run":
                group = self._group(self.jobs.get(alloc["JobID"]) or alloc["Job"],
                                    alloc["TaskGroup"])
                used_mb += group_memory_mb(group)
                used_cpu += group_cpu(group)
        return used_mb, used_cpu

    @staticmethod
    def _group(job: dict[str, Any], name: str) -> dict[str, Any]:
        return next(g for g in job["TaskGroups"] if g["Name"] == name)

    def _evaluate(self, job: dict[str, Any], trigger: str) -> str:
        """One evaluation of the job: place what is missing, or record why not. A system job
        gets one allocation on every node that can run it (nodes it filters out are no
        failure); other jobs get `Count` allocations per group."""
        with self.lock:
            eval_id = str(uuid.uuid4())
            failed: dict[str, Any] = {}
            placements = 0
            for group in job["TaskGroups"]:
                # Whatever ran and was not lost counts: restarts and reschedules are the
                # job's business (ours has them off), only a lost allocation is replaced.
                live = [a for a in self.allocs.values() if a["JobID"] == job["ID"]
                        and a["TaskGroup"] == group["Name"] and a["DesiredStatus"] == "run"
                        and a["ClientStatus"] != "lost"]
                if job["Type"] in ("system", "sysbatch"):
                    taken = {a["NodeName"] for a in live}
                    for name in sorted(set(self.nodes) - taken):
                        node, metric, refusal = self._select(job, group, only=name)
                        if node is not None:
                            self._place(job, group, node, refusal, eval_id)
                            placements += 1
                        elif metric["NodesExhausted"]:
                            failed[group["Name"]] = metric
                    continue
                for _ in range(max(0, int(group.get("Count", 1)) - len(live))):
                    node, metric, refusal = self._select(job, group)
                    if node is None:
                        failed[group["Name"]] = metric
                        break
                    self._place(job, group, node, refusal, eval_id)  # counts for the next
                    placements += 1
            index = self._bump()
            self.evals[eval_id] = {
                "ID": eval_id, "Namespace": job.get("Namespace", "default"),
                "JobID": job["ID"], "Type": job["Type"], "TriggeredBy": trigger,
                "Status": "complete", "FailedTGAllocs": failed or None,
                "CreateIndex": index, "ModifyIndex": index, "CreateTime": time.time_ns()}
            if failed:
                blocked_id = str(uuid.uuid4())
                self.evals[eval_id]["BlockedEval"] = blocked_id
                self.evals[blocked_id] = {**self.evals[eval_id], "ID": blocked_id,
                                          "Status": "blocked", "FailedTGAllocs": None,
                                          "TriggeredBy": "queued-allocs", "BlockedEval": ""}
                self.blocked.add(job["ID"])
            elif job["Type"] in ("system", "sysbatch"):
                self.blocked.add(job["ID"])  # a node that joins later gets one too
            else:
                self.blocked.discard(job["ID"])
        return eval_id

    def _select(self, job: dict[str, Any], group: dict[str, Any], only: str = ""
                ) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
        metric: dict[str, Any] = {
            "NodesEvaluated": 0, "NodesFiltered": 0, "NodesInPool": 0, "NodesAvailable": {},
            "ClassFiltered": None, "ConstraintFiltered": None, "NodesExhausted": 0,
            "ClassExhausted": None, "DimensionExhausted": None, "QuotaExhausted": None,
            "CoalescedFailures": 0}
        for name in [only] if only else sorted(self.nodes):
            node = self.nodes[name]
            used_mb, used_cpu = self._node_usage(name)
            verdict = check_group(job, group, node, used_mb=used_mb, used_cpu=used_cpu)
            if verdict is not None and verdict.kind == POOL:
                continue
            metric["NodesInPool"] += 1
            metric["NodesEvaluated"] += 1
            datacenter = node.get("Datacenter", "dc1")
            metric["NodesAvailable"][datacenter] = metric["NodesAvailable"].get(datacenter, 0) + 1
            if verdict is None or verdict.kind == DRIVER:
                return node, metric, verdict.reason if verdict else ""
            if verdict.kind == FILTERED:
                metric["NodesFiltered"] += 1
                filtered = metric["ConstraintFiltered"] = metric["ConstraintFiltered"] or {}
                filtered[verdict.reason] = filtered.get(verdict.reason, 0) + 1
            elif verdict.kind == EXHAUSTED:
                metric["NodesExhausted"] += 1
                exhausted = metric["DimensionExhausted"] = metric["DimensionExhausted"] or {}
                exhausted[verdict.dimension] = exhausted.get(verdict.dimension, 0) + 1
        return None, metric, ""

    def _unblock(self) -> None:
        """Capacity freed or a node changed: evaluate the blocked jobs again."""
        with self.lock:
            waiting = [self.jobs[j] for j in sorted(self.blocked) if j in self.jobs
                       and not self.jobs[j].get("Stop")]
        for job in waiting:
            self._evaluate(job, "queued-allocs")

    def _place(self, job: dict[str, Any], group: dict[str, Any], node: dict[str, Any],
               refusal: str, eval_id: str) -> None:
        alloc_id = str(uuid.uuid4())
        tasks = group["Tasks"]
        with self.lock:
            self.allocs[alloc_id] = {
                "ID": alloc_id, "EvalID": eval_id, "Namespace": job.get("Namespace", "default"),
                "JobID": job["ID"], "Job": job, "NodeID": node["ID"], "NodeName": node["Name"],
                "TaskGroup": group["Name"], "ClientStatus": "pending", "DesiredStatus": "run",
                "ClientDescription": "", "CreateIndex": self.index + 1,
                "ModifyIndex": self.index + 1, "CreateTime": time.time_ns(),
                "ModifyTime": time.time_ns(),
                "TaskStates": {t["Name"]: {"State": "pending", "Failed": False, "Events": [
                    {"Type": "Received", "Time": time.time_ns()}]} for t in tasks}}
            self._bump()
        threading.Thread(target=self._run_task, args=(alloc_id, job, group, refusal),
                         daemon=True).start()

    def _run_task(self, alloc_id: str, job: dict[str, Any], group: dict[str, Any],
                  refusal: str) -> None:
        task = group["Tasks"][0]
        if refusal:
            self._set_alloc(alloc_id, "failed", [{"Type": "Driver Failure",
                                                  "DisplayMessage": refusal, "Details": {}}])
            return
        if task.get("Env", {}).get("FAKE_NOMAD") == "driver_failure":
            self._set_alloc(alloc_id, "failed", [{
                "Type": "Driver Failure", "Details": {},
                "DisplayMessage": "failed to pull image " + task["Config"]["image"]}])
            return
        env = {k: v for k, v in os.environ.items() if k in INHERITED}
        env.update(task.get("Env") or {})
        for template in task.get("Templates") or []:
            for path in NOMAD_VAR.findall(template["EmbeddedTmpl"]):
                if not variable_readable(path, job["ID"], group["Name"], task["Name"]):
                    self._set_alloc(alloc_id, "failed", [{
                        "Type": "Killing", "Details": {},
                        "DisplayMessage": f"Template failed: nomad.var.block({path}@default."
                                          "global): Permission denied"}])
                    return
            for path, name, key in TEMPLATE_VAR.findall(template["EmbeddedTmpl"]):
                env[name] = self.variables.get(path, {}).get(key, "")
        if not self.execute:
            self._set_alloc(alloc_id, "running", [{"Type": "Started", "Details": {}}])
            return
        if env.get("FAKE_NOMAD") == "post":
            self._set_alloc(alloc_id, "running", [{"Type": "Started", "Details": {}}])
            self.released.wait(300)
            code = _post_outputs(env)
            self._set_alloc(alloc_id, "complete" if code == 0 else "failed",
                            [{"Type": "Terminated", "Details": {"exit_code": str(code)}}])
            return
        command = [sys.executable, *task["Config"]["args"]]
        with self.lock:
            if self.allocs[alloc_id]["DesiredStatus"] != "run" or \
                    self.allocs[alloc_id]["ClientStatus"] != "pending":
                return
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
            self.processes[alloc_id] = proc
        self._set_alloc(alloc_id, "running", [{"Type": "Started", "Details": {}}])
        _stdout, stderr = proc.communicate()
        self.logs[alloc_id] = stderr.decode(errors="replace")
        with self.lock:
            alloc = self.allocs[alloc_id]
            if alloc["ClientStatus"] in (*TERMINAL, "unknown"):
                return  # its node was lost meanwhile
            if alloc["DesiredStatus"] == "stop":
                self._set_alloc(alloc_id, "complete", [{"Type": "Killed", "Details": {}}])
                return
        code = proc.returncode
        self._set_alloc(alloc_id, "complete" if code == 0 else "failed",
                        [{"Type": "Terminated", "Details": {"exit_code": str(code)}}])

    def finish(self, job_id: str, exit_code: int = 0) -> None:
        """End the job's running allocation (`execute=False`) with this exit code."""
        alloc = self.running_alloc(job_id)
        assert alloc is not None, f"{job_id} has no running allocation"
        self._set_alloc(alloc["ID"], "complete" if exit_code == 0 else "failed",
                        [{"Type": "Terminated", "Details": {"exit_code": str(exit_code)}}])

    def _kill(self, alloc_id: str) -> None:
        proc = self.processes.get(alloc_id)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)

    def _stop_job(self, job_id: str) -> None:
        with self.lock:
            if job_id in self.jobs:
                self.jobs[job_id]["Stop"] = True
            self.blocked.discard(job_id)
            stopping = [a for a in self.allocs.values() if a["JobID"] == job_id
                        and a["DesiredStatus"] == "run"]
            for alloc in stopping:
                alloc["DesiredStatus"] = "stop"
            self._bump()
        for alloc in stopping:
            if alloc["ClientStatus"] in LIVE:
                self._kill(alloc["ID"])
                if not self.execute or alloc["ID"] not in self.processes:
                    self._set_alloc(alloc["ID"], "complete", [{"Type": "Killed",
                                                               "Details": {}}])

    def lose_node(self, name: str) -> None:
        """The node stops heartbeating (it is down): its tasks die with it."""
        with self.lock:
            self.nodes[name]["Status"] = "down"
            on_node = [a for a in self.allocs.values() if a["NodeName"] == name
                       and a["ClientStatus"] in LIVE]
            replace = []
            for alloc in on_node:
                self._kill(alloc["ID"])
                group = self._group(alloc["Job"], alloc["TaskGroup"])
                if (group.get("Disconnect") or {}).get("Replace", True) is False:
                    alloc["ClientStatus"] = "unknown"
                    alloc["ModifyIndex"] = self.index + 1
                else:
                    alloc["ClientStatus"] = "lost"
                    alloc["DesiredStatus"] = "stop"
                    alloc["ClientDescription"] = "alloc is lost since its node is down"
                    alloc["ModifyIndex"] = self.index + 1
                    replace.append(alloc["JobID"])
            self._bump()
            jobs = [self.jobs[j] for j in dict.fromkeys(replace) if j in self.jobs]
        for job in jobs:
            self._evaluate(job, "node-update")

    def drain_node(self, name: str, drain: bool = True) -> None:
        """`nomad node drain -enable` (or `-disable`): the node takes no new allocations."""
        with self.lock:
            self.nodes[name]["Drain"] = drain
            self.nodes[name]["SchedulingEligibility"] = "ineligible" if drain else "eligible"
            self._bump()

    def add_nodes(self, nodes: list[dict[str, Any]]) -> None:
        """Clients join (or re-register): waiting jobs are evaluated again, as Nomad
        unblocks its blocked evaluations."""
        with self.lock:
            self.nodes.update({node["Name"]: node for node in nodes})
            self._bump()
        self._unblock()

    def restore_node(self, name: str) -> None:
        with self.lock:
            self.nodes[name]["Status"] = "ready"
            self._bump()
        self._unblock()

    def _job_status(self, job_id: str) -> str:
        allocs = self.job_allocs(job_id)
        if any(a["ClientStatus"] in (*LIVE, "unknown") for a in allocs):
            return "running"
        if self.jobs[job_id].get("Stop") or (allocs and job_id not in self.blocked):
            return "dead"
        return "pending"

    # -- HTTP ----------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def bind_loop(_app: FastAPI) -> AsyncIterator[None]:
            self._server_loop = asyncio.get_running_loop()
            self._async_event = asyncio.Event()
            yield

        app = FastAPI(lifespan=bind_loop)

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            self.requests.append((request.method, request.url.path))
            self.calls.append((request.method, request.url.path, request.url.query))
            with self.lock:
                failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                return PlainTextResponse(failure[1], status_code=failure[0])
            return await call_next(request)

        def validation_errors(body: Any) -> list[str]:
            try:
                JobRegisterRequest.model_validate(body)
            except ValueError as exc:
                return [str(exc)]
            return []

        @app.api_route("/v1/validate/job", methods=["PUT", "POST"])
        async def validate(request: Request) -> dict[str, Any]:
            errors = validation_errors(await request.json())
            return {"ValidationErrors": errors, "Error": "; ".join(errors), "Warnings": "",
                    "DriverConfigValidated": True}

        async def register(request: Request) -> Response:
            body = await request.json()
            errors = validation_errors(body)
            if errors:  # Nomad: 500 text/plain for an invalid job
                return PlainTextResponse("1 error occurred:\n\t* " + errors[0], 500)
            job = body["Job"]
            with self.lock:
                self.jobs[job["ID"]] = {**job, "Stop": False,
                                        "SubmitTime": time.time_ns()}
                self.purged.discard(job["ID"])
            eval_id = await asyncio.to_thread(self._evaluate, self.jobs[job["ID"]],
                                              "job-register")
            return JSONResponse({"EvalID": eval_id, "EvalCreateIndex": self.index,
                                 "JobModifyIndex": self.index, "Warnings": ""})

        app.add_api_route("/v1/jobs", register, methods=["PUT", "POST"])

        @app.api_route("/v1/job/{job_id}", methods=["PUT", "POST"])
        async def register_at(job_id: str, request: Request) -> Response:
            return await register(request)

        @app.get("/v1/job/{job_id}")
        def job_info(job_id: str) -> dict[str, Any]:
            with self.lock:
                if job_id not in self.jobs:
                    raise HTTPException(404, "job not found")
                return {**self.jobs[job_id], "Status": self._job_status(job_id)}

        @app.delete("/v1/job/{job_id}")
        def deregister(job_id: str, purge: str = "false") -> dict[str, Any]:
            with self.lock:
                if job_id not in self.jobs:
                    raise HTTPException(404, "job not found")
            self._stop_job(job_id)
            if purge.lower() == "true":
                with self.lock:
                    self.jobs.pop(job_id, None)
                    self.purged.add(job_id)
                    self._bump()
            return {"EvalID": str(uuid.uuid4()), "JobModifyIndex": self.index}

        def stub(alloc: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in alloc.items() if k != "Job"}

        @app.get("/v1/job/{job_id}/allocations")
        def job_allocations(job_id: str) -> list[dict[str, Any]]:
            return [stub(a) for a in self.job_allocs(job_id)]

        @app.get("/v1/job/{job_id}/evaluations")
        def job_evaluations(job_id: str) -> list[dict[str, Any]]:
            with self.lock:
                if job_id not in self.jobs:
                    raise HTTPException(404, "job not found")
                return [e for e in self.evals.values() if e["JobID"] == job_id]

        @app.get("/v1/evaluation/{eval_id}")
        def evaluation(eval_id: str) -> dict[str, Any]:
            with self.lock:
                if eval_id not in self.evals:
                    raise HTTPException(404, "eval not found")
                return self.evals[eval_id]

        @app.get("/v1/allocations")
        async def allocations(index: int = 0, wait: str = "0s", filter: str = "",
                              prefix: str = "") -> JSONResponse:
            seconds = float(wait.rstrip("s") or 0) if wait.endswith("s") else 0.0
            deadline = time.monotonic() + min(seconds, 300.0)
            while self.index <= index and time.monotonic() < deadline and not self._closing:
                event = self._async_event
                assert event is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), deadline - time.monotonic())
            match = re.fullmatch(r'JobID matches "(.*)"', filter.strip())
            if filter and match is None:
                return JSONResponse(f"unsupported filter {filter!r}", status_code=400)
            with self.lock:
                current = self.index
                chosen = [stub(a) for a in self.allocs.values()
                          if a["ID"].startswith(prefix)
                          and (match is None or re.search(match.group(1), a["JobID"]))]
            return JSONResponse(chosen, headers={"X-Nomad-Index": str(current)})

        @app.get("/v1/allocation/{alloc_id}")
        def allocation(alloc_id: str) -> dict[str, Any]:
            with self.lock:
                if alloc_id not in self.allocs:
                    raise HTTPException(404, "alloc not found")
                return self.allocs[alloc_id]

        @app.get("/v1/nodes")
        def nodes() -> list[dict[str, Any]]:
            # Nomad's list stubs: no Meta, but the drain and eligibility flags.
            return [{**{k: n[k] for k in ("ID", "Name", "NodePool", "Datacenter", "Status")},
                     "Drain": bool(n.get("Drain")),
                     "SchedulingEligibility": n.get("SchedulingEligibility", "eligible")}
                    for n in self.nodes.values()]

        @app.put("/v1/var/{path:path}")
        async def put_var(path: str, request: Request) -> dict[str, Any]:
            body = await request.json()
            with self.lock:
                self.variables[path] = body["Items"]
                self._bump()
            return {"Path": path, "Items": body["Items"]}

        @app.get("/v1/var/{path:path}")
        def get_var(path: str) -> dict[str, Any]:
            if path not in self.variables:
                raise HTTPException(404, "variable not found")
            return {"Path": path, "Items": self.variables[path]}

        @app.delete("/v1/var/{path:path}")
        def delete_var(path: str) -> Response:
            with self.lock:
                self.variables.pop(path, None)
                self._bump()
            return Response(status_code=200)

        @app.get("/v1/client/fs/logs/{alloc_id}")
        def logs(alloc_id: str, task: str, type: str = "stderr") -> PlainTextResponse:
            return PlainTextResponse(self.logs.get(alloc_id, ""))

        return app
