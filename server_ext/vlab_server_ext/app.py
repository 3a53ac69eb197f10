"""The `ExtensionApp`: configuration, handlers, and the embedded backend's lifetime.

Every setting is a trait (`c.VLabExtension.<name>` in a Jupyter config file, or
`--VLabExtension.<name>=...`); where none is given, its `@default` reads the environment when
the extension starts, not when it is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Unicode, default

from vlab_kernel import defaults
from vlab_kernel.connection import running_server
from vlab_kernel.defaults import CREDENTIAL_FILE
from vlab_server_ext.backend import EmbeddedBackend
from vlab_server_ext.handlers import BackendProxyHandler, NomadProxyHandler

# The spellings pydantic (the server's settings) reads as false.
FALSE_WORDS = ("0", "off", "f", "false", "n", "no")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/benchmarks/status", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


class VLabExtension(ExtensionApp):
    name = "vlab_server_ext"
    load_other_extensions = True

    backend_url = Unicode(
        config=True, help="URL of the VLab backend (default: $VLAB_URL); empty starts the "
                          "embedded backend.")
    backend_token = Unicode(
        config=True, help="Token the server uses towards the backend (default: $VLAB_TOKEN, "
                          "else the local credential).")
    data_dir = Unicode(
        config=True, help="Data dir of the embedded backend (default: $VLAB_DATA_DIR, else "
                          "~/.local/share/vlab).")
    warm_workers = Bool(
        config=True, help="Start the embedded backend with warm workers (default: on, unless "
                          "$VLAB_WARM_WORKERS=0); off starts every job cold.")
    nomad_addr = Unicode(
        config=True, help="Nomad HTTP API address for the read-only /vlab/nomad proxy "
                          "(default: $NOMAD_ADDR).")
    nomad_token = Unicode(
        config=True, help="ACL token sent to Nomad, never to the browser (default: "
                          "$NOMAD_TOKEN).")

    @default("backend_url")
    def _backend_url_default(self) -> str:
        return os.environ.get("VLAB_URL", "")

    @default("backend_token")
    def _backend_token_default(self) -> str:
        return os.environ.get("VLAB_TOKEN", "")

    @default("data_dir")
    def _data_dir_default(self) -> str:
        return str(defaults.data_dir())

    @default("warm_workers")
    def _warm_workers_default(self) -> bool:
        return os.environ.get("VLAB_WARM_WORKERS", "").strip().lower() not in FALSE_WORDS

    @default("nomad_addr")
    def _nomad_addr_default(self) -> str:
        return os.environ.get("NOMAD_ADDR", "")

    @default("nomad_token")
    def _nomad_token_default(self) -> str:
        return os.environ.get("NOMAD_TOKEN", "")

    _embedded: EmbeddedBackend | None = None

    def initialize_settings(self) -> None:
        url, token = self.backend_url.rstrip("/"), self.backend_token
        store = Path(self.data_dir)
        running = None if url else running_server(store)
        if running is not None and _answers(running.url):
            url = running.url  # a server of this data dir (`vlab serve`, another lab) runs
            self.log.info("using the VLab backend already running for %s", store)
        if not url:
            self._embedded = EmbeddedBackend(store, warm_workers=self.warm_workers)
            self.log.info("starting the embedded VLab backend in %s", self._embedded.data_dir)
            self._embedded.start()
            url, token = self._embedded.url, self._embedded.token
        elif not token:
            credential = store / CREDENTIAL_FILE
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
