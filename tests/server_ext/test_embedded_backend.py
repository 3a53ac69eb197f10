"""Without VLAB_URL the extension starts the embedded backend, exports its address to kernels,
and stops it with the server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from tornado.httpclient import HTTPClientError


@pytest.fixture
def jp_server_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in ("VLAB_URL", "VLAB_TOKEN", "NOMAD_ADDR"):
        monkeypatch.delenv(name, raising=False)
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
