"""Proxy handlers. Every method is authenticated by Jupyter; the backend sees the server's
token, never the browser's or the kernel's."""

from __future__ import annotations

from typing import Any

import httpx
from jupyter_server.base.handlers import APIHandler
from tornado import web

# Response headers worth passing on to the caller.
PASSED_HEADERS = ("Content-Type", "Content-Disposition", "Retry-After", "Cache-Control")
# Request headers worth passing on to the backend (Authorization is replaced).
FORWARDED_HEADERS = ("Content-Type", "Accept")


class _ProxyHandler(APIHandler):
    """Relays a request and streams the response back chunk by chunk (SSE included)."""

    _track_activity = False  # long event streams should not keep the server "active"

    @property
    def http(self) -> httpx.AsyncClient:
        client: httpx.AsyncClient = self.settings["vlab_http"]
        return client

    async def relay(self, url: str, extra_headers: dict[str, str]) -> None:
        headers = {name: self.request.headers[name] for name in FORWARDED_HEADERS
                   if name in self.request.headers}
        headers.update(extra_headers)
        body = self.request.body if self.request.method in ("POST", "PUT", "PATCH") else None
        request = self.http.build_request(self.request.method or "GET", url,
                                          params=self._query(), content=body, headers=headers)
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise web.HTTPError(502, f"upstream unreachable: {exc}") from exc
        try:
            self.set_status(response.status_code)
            for name in PASSED_HEADERS:
                if name in response.headers:
                    self.set_header(name, response.headers[name])
            if response.status_code in (204, 304):
                return
            async for chunk in response.aiter_raw():
                if self.request.connection.stream.closed():  # type: ignore[union-attr]
                    break
                self.write(chunk)
                await self.flush()
        finally:
            await response.aclose()

    def _query(self) -> httpx.QueryParams:
        return httpx.QueryParams([(key, value.decode()) for key, values
                                  in self.request.query_arguments.items() for value in values])


class BackendProxyHandler(_ProxyHandler):
    """`/vlab/api/<path>` -> `<backend>/api/<path>`."""

    async def _proxy(self, path: str) -> None:
        backend: dict[str, Any] = self.settings["vlab_backend"]
        await self.relay(f"{backend['url']}/api/{path}",
                         {"Authorization": f"Bearer {backend['token']}"})

    @web.authenticated
    async def get(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    async def post(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    async def put(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    async def patch(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    async def delete(self, path: str) -> None:
        await self._proxy(path)


class NomadProxyHandler(_ProxyHandler):
    """`/vlab/nomad/<path>` -> `$NOMAD_ADDR/<path>`, read-only."""

    @web.authenticated
    async def get(self, path: str) -> None:
        nomad: dict[str, str] = self.settings["vlab_nomad"]
        if not nomad.get("addr"):
            raise web.HTTPError(503, "no Nomad cluster is configured (set NOMAD_ADDR)")
        headers = {"X-Nomad-Token": nomad["token"]} if nomad.get("token") else {}
        await self.relay(f"{nomad['addr'].rstrip('/')}/{path}", headers)

    def _read_only(self) -> None:
        raise web.HTTPError(405, "the Nomad proxy is read-only")

    @web.authenticated
    async def post(self, path: str) -> None:
        self._read_only()

    @web.authenticated
    async def put(self, path: str) -> None:
        self._read_only()

    @web.authenticated
    async def delete(self, path: str) -> None:
        self._read_only()
