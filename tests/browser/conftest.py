"""Headless Chromium (Debian's package) driven by Playwright; JupyterLab and Voila as real
subprocesses. Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import LiveServer, free_port

CHROMIUM = os.environ.get("VLAB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync",
                  "--disable-quic"]
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """pytest-jupyter's loop fixture closes the current loop, which under Playwright's sync API
    is Playwright's own: give these tests a loop of their own instead."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps its event loop running in this thread until
    it stops, which later asyncio-based tests must not inherit."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-final.png"), full_page=True)
    context.close()


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer: {log.read_text()[-3000:]}")


class Served:
    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def kernel_env(server: LiveServer, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VLAB_TOKEN"}
    env.update(VLAB_URL=server.url, VLAB_DATA_DIR=str(server.data_dir),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), HOME=str(home))
    return env


@pytest.fixture
def jupyterlab(server: LiveServer, tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOKS / "explore.ipynb", root)
    port, token = free_port(), "browser-test-token"
    log = tmp_path / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--ServerApp.allow_unauthenticated_access=False",
             "--allow-root", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class="
             "jupyterlab.NeverCheckForUpdate"],
            env=kernel_env(server, tmp_path), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/api/status?token={token}", proc, log)
    served = Served(f"{url}/lab/tree/explore.ipynb?token={token}", proc)
    yield served
    served.stop()


@pytest.fixture
def voila(server: LiveServer, tmp_path: Path) -> Iterator[Served]:
    shutil.copy(NOTEBOOKS / "dashboard.ipynb", tmp_path)
    port = free_port()
    log = tmp_path / "voila.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voila", str(tmp_path / "dashboard.ipynb"), "--no-browser",
             f"--port={port}", "--Voila.ip=127.0.0.1", "--strip_sources=True",
             "--show_tracebacks=True"],
            env=kernel_env(server, tmp_path), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    wait_http(url.replace("/", "/", 1) + "static/voila.js", proc, log)
    served = Served(url, proc)
    yield served
    served.stop()
