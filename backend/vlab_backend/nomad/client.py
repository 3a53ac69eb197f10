"""An async client for the few Nomad HTTP endpoints the runner uses (httpx).

python-nomad is synchronous with a 5 s default timeout, which fits neither the asyncio
scheduler nor Nomad's blocking queries (up to 300 s); this client covers exactly what we use.
"""

from __future__ import annotations

from typing import Any

import httpx

from vlab_backend.nomad.models import JobRegisterRequest


class NomadError(RuntimeError):
    """Nomad refused a request or could not be reached."""


class NomadClient:
    def __init__(self, addr: str, token: str = "", namespace: str = "default",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"X-Nomad-Token": token} if token else {}
        self._http = httpx.AsyncClient(base_url=addr.rstrip("/"), headers=headers,
                                       params={"namespace": namespace}, transport=transport,
                                       timeout=httpx.Timeout(30.0, read=90.0))

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NomadError(f"Nomad at {self._http.base_url} is unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise NomadError(f"Nomad answered {response.status_code} to {method} {path}: "
                             f"{response.text.strip()[:300]}")
        return response

    async def validate(self, job: JobRegisterRequest) -> list[str]:
        """Nomad's own validation of the job; the problems it reports."""
        body = (await self._call("PUT", "/v1/validate/job", json=job.to_json())).json()
        problems = list(body.get("ValidationErrors") or [])
        if body.get("Error") and not problems:
            problems.append(body["Error"])
        return problems

    async def register(self, job: JobRegisterRequest) -> dict[str, Any]:
        result: dict[str, Any] = (await self._call("PUT", "/v1/jobs", json=job.to_json())).json()
        return result

    async def job_status(self, job_id: str) -> str | None:
        try:
            response = await self._call("GET", f"/v1/job/{job_id}")
        except NomadError as exc:
            if " 404 " in str(exc):
                return None
            raise
        return str(response.json().get("Status"))

    async def allocations(self, job_id: str, index: int = 0,
                          wait_s: int = 60) -> tuple[list[dict[str, Any]], int]:
        """The job's allocations; with `index`, a blocking query that returns on change."""
        params: dict[str, Any] = {"all": "true"}
        if index:
            params.update(index=index, wait=f"{wait_s}s")
        response = await self._call("GET", f"/v1/job/{job_id}/allocations", params=params)
        new_index = int(response.headers.get("X-Nomad-Index", index or 0))
        allocations: list[dict[str, Any]] = response.json()
        return allocations, new_index

    async def stop(self, job_id: str) -> None:
        await self._call("DELETE", f"/v1/job/{job_id}")

    async def put_variable(self, path: str, items: dict[str, str]) -> None:
        await self._call("PUT", f"/v1/var/{path}", json={"Path": path, "Items": items})

    async def delete_variable(self, path: str) -> None:
        await self._call("DELETE", f"/v1/var/{path}")

    async def task_log(self, alloc_id: str, task: str, kind: str = "stderr") -> str:
        response = await self._call("GET", f"/v1/client/fs/logs/{alloc_id}", params={
            "task": task, "type": kind, "plain": "true", "origin": "start"})
        return response.text
