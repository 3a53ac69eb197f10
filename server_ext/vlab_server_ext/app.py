"""The `ExtensionApp`: configuration, handlers, and the embedded backend's lifetime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from jupyter_server.extension.application import ExtensionApp
from traitlets import Unicode

from vlab_kernel.connection import DEFAULT_URL
from vlab_server_ext.backend import EmbeddedBackend
from vlab_server_ext.handlers import BackendProxyHandler, NomadProxyHandler


def _default_data_dir() -> str:
    from vlab_kernel.connection import data_dir

    return str(data_dir())


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/benchmarks/status", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


class VLabExtension(ExtensionApp):
    name = "vlab_server_ext"
    load_other_extensions = True

    backend_url = Unicode(
        os.environ.get("VLAB_URL", ""), config=True,
        help="URL of the VLab backend; empty starts the embedded backend.")
    backend_token = Unicode(
        os.environ.get("VLAB_TOKEN", ""), config=True,
        help="Token the server uses towards the backend (default: the local credential).")
    data_dir = Unicode(
        config=True, help="Data dir of the embedded backend (default: VLAB_DATA_DIR or "
                          "~/.local/share/vlab).")
    nomad_addr = Unicode(os.environ.get("NOMAD_ADDR", ""), config=True,
                         help="Nomad HTTP API address for the read-only /vlab/nomad proxy.")
    nomad_token = Unicode(os.environ.get("NOMAD_TOKEN", ""), config=True,
                          help="ACL token sent to Nomad (never to the browser).")

    _embedded: EmbeddedBackend | None = None

    def initialize_settings(self) -> None:
        url, token = self.backend_url.rstrip("/"), self.backend_token
        data_dir = Path(self.data_dir or _default_data_dir())
        if not url and _answers(DEFAULT_URL) and (data_dir / "local-admin.token").is_file():
            url = DEFAULT_URL  # a `vlab serve` of this user is already running
        if not url:
            self._embedded = EmbeddedBackend(data_dir)
            self.log.info("starting the embedded VLab backend in %s", self._embedded.data_dir)
            self._embedded.start()
            url, token = self._embedded.url, self._embedded.token
        elif not token:
            credential = data_dir / "local-admin.token"
            token = credential.read_text().strip() if credential.is_file() else ""
        # Kernels inherit the server's environment: `vlab_kernel.connect()` finds the backend.
        os.environ["VLAB_URL"] = url
        if token:
            os.environ["VLAB_TOKEN"] = token
        self.settings.update(
            vlab_backend={"url": url, "token": token},
            vlab_nomad={"addr": self.nomad_addr, "token": self.nomad_token},
            vlab_http=httpx.AsyncClient(timeout=httpx.Timeout(300.0, read=None)))
        self.log.info("VLab API proxied at /vlab/api/ -> %s", url)

    def initialize_handlers(self) -> None:
        self.handlers.extend([
            (r"/vlab/api/(.*)", BackendProxyHandler),
            (r"/vlab/nomad/(.*)", NomadProxyHandler),
        ])

    async def stop_extension(self) -> None:
        client: Any = self.settings.get("vlab_http")
        if client is not None:
            await client.aclose()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
