"""An HTTP stand-in for the Nomad endpoints the runner uses.

Registered jobs are checked against the typed models, then "placed": like a Nomad client with
raw_exec, the stand-in runs the task's command locally with the task's Env and the rendered
Variable template, so artifacts really flow back to the API. Per-job behaviour comes from the
task Env key FAKE_NOMAD: `driver_failure` (the image cannot be pulled) or `lost` (the node
disappears mid-run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from tests.server import free_port
from vlab_backend.nomad.models import JobRegisterRequest

TEMPLATE_VAR = re.compile(r'nomadVar "([^"]+)" }}(\w+)=\{\{ \.(\w+) }}')
INHERITED = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV")


class FakeNomad:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.allocs: dict[str, dict[str, Any]] = {}
        self.variables: dict[str, dict[str, str]] = {}
        self.logs: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.index = 1
        self.changed = threading.Condition()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.app = self._build_app()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                     log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FakeNomad:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.kill()
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # -- state ---------------------------------------------------------------------------------
    def _bump(self) -> None:
        with self.changed:
            self.index += 1
            self.changed.notify_all()

    def _set_alloc(self, alloc_id: str, status: str, events: list[dict[str, Any]]) -> None:
        alloc = self.allocs[alloc_id]
        alloc["ClientStatus"] = status
        alloc["ModifyIndex"] = self.index + 1
        task = alloc["TaskStates"]["pipeline"]
        task["Events"].extend(events)
        task["State"] = "dead" if status in ("complete", "failed", "lost") else "running"
        task["Failed"] = status == "failed"
        self._bump()

    def _place(self, job: dict[str, Any]) -> None:
        alloc_id = str(uuid.uuid4())
        self.allocs[alloc_id] = {"ID": alloc_id, "JobID": job["ID"], "NodeName": "fake-node-1",
                                 "TaskGroup": job["TaskGroups"][0]["Name"], "ClientStatus":
                                 "pending", "DesiredStatus": "run", "ModifyIndex": self.index,
                                 "TaskStates": {"pipeline": {"State": "pending", "Failed": False,
                                                             "Events": []}}}
        self._bump()
        task = job["TaskGroups"][0]["Tasks"][0]
        mode = task["Env"].get("FAKE_NOMAD", "")
        if mode == "driver_failure":
            self._set_alloc(alloc_id, "failed", [{"Type": "Driver Failure", "DisplayMessage":
                                                  "failed to pull image " +
                                                  task["Config"]["image"], "Details": {}}])
            return
        env = {k: v for k, v in os.environ.items() if k in INHERITED}
        env.update(task["Env"])
        for template in task.get("Templates", []):
            for path, name, key in TEMPLATE_VAR.findall(template["EmbeddedTmpl"]):
                env[name] = self.variables.get(path, {}).get(key, "")
        command = [sys.executable, *task["Config"]["args"]]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        self.processes[alloc_id] = proc
        self._set_alloc(alloc_id, "running", [{"Type": "Started", "Details": {}}])
        threading.Thread(target=self._watch, args=(alloc_id, proc, mode), daemon=True).start()

    def _watch(self, alloc_id: str, proc: subprocess.Popen[bytes], mode: str) -> None:
        if mode == "lost":
            time.sleep(1.0)
            proc.kill()
            proc.wait()
            self._set_alloc(alloc_id, "lost", [])
            return
        _stdout, stderr = proc.communicate()
        self.logs[alloc_id] = stderr.decode(errors="replace")
        if self.allocs[alloc_id]["DesiredStatus"] == "stop":
            self._set_alloc(alloc_id, "complete", [{"Type": "Killed", "Details": {}}])
            return
        code = proc.returncode
        self._set_alloc(alloc_id, "complete" if code == 0 else "failed",
                        [{"Type": "Terminated", "Details": {"exit_code": str(code)}}])

    # -- HTTP ----------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            self.requests.append((request.method, request.url.path))
            return await call_next(request)

        @app.put("/v1/validate/job")
        async def validate(request: Request) -> dict[str, Any]:
            body = await request.json()
            try:
                JobRegisterRequest.model_validate(body)
            except ValueError as exc:
                return {"ValidationErrors": [str(exc)], "Error": str(exc), "Warnings": ""}
            return {"ValidationErrors": [], "Error": "", "Warnings": "",
                    "DriverConfigValidated": True}

        @app.put("/v1/jobs")
        async def register(request: Request) -> dict[str, Any]:
            job = (await request.json())["Job"]
            self.jobs[job["ID"]] = {**job, "Status": "running"}
            threading.Thread(target=self._place, args=(job,), daemon=True).start()
            return {"EvalID": str(uuid.uuid4()), "JobModifyIndex": self.index}

        @app.get("/v1/job/{job_id}")
        def job_info(job_id: str) -> dict[str, Any]:
            if job_id not in self.jobs:
                raise HTTPException(404, "job not found")
            allocs = [a for a in self.allocs.values() if a["JobID"] == job_id]
            done = allocs and all(a["ClientStatus"] in ("complete", "failed", "lost")
                                  for a in allocs)
            return {**self.jobs[job_id], "Status": "dead" if done else "running"}

        @app.delete("/v1/job/{job_id}")
        def stop_job(job_id: str) -> dict[str, Any]:
            for alloc_id, alloc in self.allocs.items():
                if alloc["JobID"] == job_id:
                    alloc["DesiredStatus"] = "stop"
                    proc = self.processes.get(alloc_id)
                    if proc is not None and proc.poll() is None:
                        os.killpg(proc.pid, 9)
            return {"EvalID": str(uuid.uuid4())}

        @app.get("/v1/job/{job_id}/allocations")
        def allocations(job_id: str, index: int = 0, wait: str = "0s") -> JSONResponse:
            deadline = time.monotonic() + min(float(wait.rstrip("s") or 0), 5.0)
            with self.changed:
                while self.index <= index and time.monotonic() < deadline:
                    self.changed.wait(timeout=max(0.0, deadline - time.monotonic()))
                current = self.index
            allocs = [a for a in self.allocs.values() if a["JobID"] == job_id]
            return JSONResponse(allocs, headers={"X-Nomad-Index": str(current)})

        @app.put("/v1/var/{path:path}")
        async def put_var(path: str, request: Request) -> dict[str, Any]:
            self.variables[path] = (await request.json())["Items"]
            return {"Path": path}

        @app.delete("/v1/var/{path:path}")
        def delete_var(path: str) -> dict[str, Any]:
            self.variables.pop(path, None)
            return {}

        @app.get("/v1/client/fs/logs/{alloc_id}")
        def logs(alloc_id: str, task: str, type: str = "stderr") -> PlainTextResponse:
            return PlainTextResponse(self.logs.get(alloc_id, ""))

        return app
