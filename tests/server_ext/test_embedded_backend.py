"""Without VLAB_URL the extension reuses the server running for its data dir, else starts the
embedded backend, exports its address to kernels, and stops it with the server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from tests.server import LiveServer
from vlab_server_ext import VLabExtension


@pytest.fixture
def jp_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in ("VLAB_URL", "VLAB_TOKEN", "NOMAD_ADDR"):  # restored after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return {"ServerApp": {"jpserver_extensions": {"vlab_server_ext": True},
                          "allow_unauthenticated_access": False},
            "VLabExtension": {"backend_url": "", "backend_token": "", "nomad_addr": "",
                              "data_dir": str(tmp_path / "vlab-data")}}


async def test_embedded_backend_starts_and_is_exported(jp_serverapp: Any, jp_fetch: Any,
                                                       tmp_path: Path) -> None:
    extension = jp_serverapp.extension_manager.extension_apps["vlab_server_ext"]
    embedded = next(iter(extension)) if isinstance(extension, set) else extension
    assert embedded.warm_workers is True  # the embedded backend is fast by default
    url = os.environ["VLAB_URL"]
    token = os.environ["VLAB_TOKEN"]
    assert url.startswith("http://127.0.0.1:")
    assert token == (tmp_path / "vlab-data" / "local-admin.token").read_text().strip()
    status = json.loads((await jp_fetch("vlab", "api", "benchmarks", "status")).body)
    assert status["status"] == "OK"
    # It records where it listens, for the CLI, the kernel and the dashboard.
    record = json.loads((tmp_path / "vlab-data" / "server.json").read_text())
    assert record["url"] == url
    # Kernels started by this server inherit VLAB_URL and VLAB_TOKEN.
    async with httpx.AsyncClient() as client:
        direct = await client.get(url + "/api/targets/overview",
                                  headers={"Authorization": f"Bearer {token}"})
    assert direct.status_code == 200
    with pytest.raises(HTTPClientError) as no_nomad:
        await jp_fetch("vlab", "nomad", "v1", "jobs")
    assert no_nomad.value.code == 503
    await embedded.stop_extension()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/api/benchmarks/status", timeout=2)
    assert not (tmp_path / "vlab-data" / "server.json").exists()


@pytest.mark.slow
async def test_a_server_running_for_the_data_dir_is_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VLAB_URL", "VLAB_TOKEN"):  # restored after the test, whatever it sets
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    server = LiveServer(tmp_path / "data").start()
    try:
        extension = VLabExtension(config=Config({"VLabExtension": {
            "backend_url": "", "backend_token": "", "data_dir": str(server.data_dir)}}))
        extension.initialize_settings()
        assert extension.settings["vlab_backend"] == {"url": server.url, "token": server.token}
        assert os.environ["VLAB_URL"] == server.url
        await extension.stop_extension()
        assert httpx.get(server.url + "/api/benchmarks/status").status_code == 200  # not ours
    finally:
        server.stop()
