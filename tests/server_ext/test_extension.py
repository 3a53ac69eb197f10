"""The Jupyter server extension in a real Jupyter server (pytest-jupyter), unauthenticated
access off: /vlab/api proxies to a live backend with the server's token, /vlab/nomad to a fake
Nomad, read-only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from tornado.httpclient import HTTPClientError

from tests.server import LiveServer, free_port


class FakeNomad(BaseHTTPRequestHandler):
    """Answers GET /v1/jobs like Nomad; records what it saw."""

    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def do_GET(self) -> None:
        FakeNomad.seen.append(("GET", self.path, self.headers.get("X-Nomad-Token")))
        body = json.dumps([{"ID": "vlab-bench-1", "Type": "batch", "Status": "running"}])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def fake_nomad() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeNomad)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def jp_server_config(server: LiveServer, fake_nomad: str,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in ("VLAB_URL", "VLAB_TOKEN"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    return {"ServerApp": {"jpserver_extensions": {"vlab_server_ext": True},
                          "allow_unauthenticated_access": False},
            "VLabExtension": {"backend_url": server.url, "backend_token": server.token,
                              "nomad_addr": fake_nomad, "nomad_token": "nomad-secret"}}


async def test_api_is_proxied_with_the_server_token(jp_fetch: Any) -> None:
    status = await jp_fetch("vlab", "api", "benchmarks", "status")
    assert json.loads(status.body)["status"] == "OK"
    # The backend needs a token for this one: the extension supplied it.
    overview = json.loads((await jp_fetch("vlab", "api", "targets", "overview")).body)
    assert overview["targets"][0]["target"] == "host-cpu"
    with pytest.raises(HTTPClientError) as missing:
        await jp_fetch("vlab", "api", "benchmarks", "nope")
    assert missing.value.code == 404
    assert "no benchmark nope" in json.loads(missing.value.response.body)["error"]


async def test_requests_without_jupyter_credentials_are_refused(
        http_server_client: Any, jp_http_port: int, jp_base_url: str) -> None:
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    async with httpx.AsyncClient(base_url=base) as client:
        for path in ("/vlab/api/benchmarks/status", "/vlab/api/targets/overview",
                     "/vlab/nomad/v1/jobs"):
            response = await client.get(path)
            assert response.status_code == 403, path
        post = await client.post("/vlab/api/benchmarks/run", data={"device": "host-cpu"})
        assert post.status_code == 403
        # A backend token is no Jupyter credential either.
        spoofed = await client.get("/vlab/api/benchmarks",
                                   headers={"Authorization": "Bearer vlab_whatever"})
        assert spoofed.status_code == 403


async def test_submission_and_live_events_stream_through(
        http_server_client: Any, jp_http_port: int, jp_base_url: str,
        jp_auth_header: dict[str, str], small_onnx: Path) -> None:
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    async with httpx.AsyncClient(base_url=base, headers=jp_auth_header, timeout=60) as client:
        submitted = await client.post(
            "/vlab/api/benchmarks/run",
            data={"device": "host-cpu", "engine": "onnxruntime", "nb_inference": "5",
                  "parameters": json.dumps({"min_time_s": 1.5})},
            files={"model": ("small.onnx", small_onnx.read_bytes())})
        assert submitted.status_code == 200, submitted.text
        bench_id = submitted.json()["id"]
        events = []
        async with client.stream("GET", f"/vlab/api/benchmarks/{bench_id}/events",
                                 headers={"Accept": "text/event-stream"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    # Streamed, not buffered: progress arrived while it ran, then the end.
    assert any(e["event"] == "progress" for e in events)
    assert events[-1]["status"] == "success"


async def test_nomad_proxy_is_read_only(jp_fetch: Any) -> None:
    jobs = json.loads((await jp_fetch("vlab", "nomad", "v1", "jobs")).body)
    assert jobs[0]["ID"] == "vlab-bench-1"
    # The Nomad token goes to Nomad; the browser never sees it.
    assert FakeNomad.seen[-1] == ("GET", "/v1/jobs", "nomad-secret")
    for method in ("POST", "PUT", "DELETE"):
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch("vlab", "nomad", "v1", "jobs", method=method,
                           body=None if method == "DELETE" else "{}",
                           allow_nonstandard_methods=True)
        assert refused.value.code == 405
