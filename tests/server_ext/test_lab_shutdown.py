"""`vlab lab` (what `make lab` runs): the URL it prints opens the explore notebook, and a
Ctrl-C stops all of the lab: JupyterLab, the embedded backend and its warm workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.server import free_port
from vlab_backend.runners.warm import READY_LINE

pytestmark = pytest.mark.slow

SHIPPED_TOUR = Path(__file__).resolve().parents[2] / "notebooks" / "explore.ipynb"
NOTEBOOK_URL = re.compile(r"http://127\.0\.0\.1:\d+/lab/tree/explore\.ipynb\?token=\w+")


def wait_for(what: str, ready: Callable[[], object], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def backend_answers(record: Path) -> bool:
    try:
        url = json.loads(record.read_text())["url"]
        return httpx.get(url + "/api/benchmarks/status", timeout=1).status_code == 200
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return False


@dataclass
class RunningLab:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    output: Path

    @property
    def record(self) -> Path:
        return self.data_dir / "server.json"

    def printed(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[RunningLab]:
    """`vlab lab`, headless on a free port with its own data dir, in a session of its own (as
    a terminal's foreground job), once its backend answers and its warm workers are ready."""
    config_dir = tmp_path / "jupyter-config"  # no user's Jupyter config; the extension on
    config_dir.mkdir()
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"vlab_server_ext": True}}}))
    env = {k: v for k, v in os.environ.items() if k not in ("VLAB_URL", "VLAB_TOKEN")}
    env.update(VLAB_DATA_DIR=str(tmp_path / "data"), JUPYTER_CONFIG_DIR=str(config_dir),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    output = tmp_path / "lab.log"
    with output.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlab_kernel.cli", "lab", "--no-browser",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={free_port()}",
             "--ServerApp.port_retries=0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    running = RunningLab(proc, tmp_path / "data", output)

    def backend_ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"vlab lab exited: {running.printed()[-2000:]}")
        return backend_answers(running.record)

    try:
        wait_for("the lab's backend", backend_ready)
        backend_log = running.data_dir / "embedded-backend.log"
        cores = len(os.sched_getaffinity(0))
        wait_for("the warm workers", lambda: backend_log.read_text().count(READY_LINE) >= cores)
        wait_for("JupyterLab's URL", lambda: NOTEBOOK_URL.search(running.printed()))
        yield running
    finally:
        stop_tree(proc)


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """Whatever the test left running of the lab: interrupted, else killed."""
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    proc.send_signal(signal.SIGINT)
    _gone, alive = psutil.wait_procs(tree, timeout=60)
    for process in alive:
        process.kill()
    proc.wait()


def lab_environment(lab: RunningLab) -> dict[str, str]:
    """A terminal next to the lab: the same data dir, and no VLAB_URL or VLAB_TOKEN."""
    env = {k: v for k, v in os.environ.items() if k not in ("VLAB_URL", "VLAB_TOKEN")}
    env["VLAB_DATA_DIR"] = str(lab.data_dir)
    return env


def test_printed_url_opens_the_users_copy_of_the_explore_notebook(lab: RunningLab) -> None:
    match = NOTEBOOK_URL.search(lab.printed())
    assert match is not None
    base, token = match.group(0).split("/lab/tree/")[0], match.group(0).split("token=")[1]
    # Jupyter serves the user's workspace in the data dir: the path in the URL is the copy.
    contents = httpx.get(f"{base}/api/contents/explore.ipynb", params={"token": token},
                         timeout=10)
    assert contents.status_code == 200
    assert contents.json()["type"] == "notebook"
    copy = lab.data_dir / "workspace" / "explore.ipynb"
    assert copy.read_bytes() == SHIPPED_TOUR.read_bytes()
    root = httpx.get(f"{base}/api/contents/", params={"token": token}, timeout=10).json()
    assert [entry["name"] for entry in root["content"]] == ["explore.ipynb"]


def test_the_terminal_and_the_dashboard_find_the_labs_backend(lab: RunningLab) -> None:
    env = lab_environment(lab)
    targets = subprocess.run([sys.executable, "-m", "vlab_kernel.cli", "targets"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert targets.returncode == 0, targets.stderr
    assert "host-cpu" in targets.stdout
    port = free_port()
    log = lab.data_dir.parent / "dashboard.log"
    with log.open("wb") as out:
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "vlab_kernel.cli", "dashboard", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        def page() -> str | None:
            if dashboard.poll() is not None:
                raise AssertionError(f"vlab dashboard exited: {log.read_text()[-2000:]}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=120)
            except httpx.HTTPError:
                return None
            return answer.text if answer.status_code == 200 else None

        wait_for("the dashboard", page)
        body = page() or ""
        # Voila ran the notebook against the lab's backend: its widgets, no connection error.
        assert "vlab-dashboard" in body and "widget-view+json" in body
        assert "cannot reach" not in body and "Traceback" not in body
        assert "another VLab server" not in log.read_text()
        assert "VLab backend running at" not in log.read_text()  # it started none of its own
    finally:
        stop_tree(dashboard)


@pytest.mark.parametrize("to", ["terminal", "process"])
def test_ctrl_c_leaves_nothing_of_the_lab_behind(lab: RunningLab, to: str) -> None:
    root = psutil.Process(lab.proc.pid)
    tree = [root, *root.children(recursive=True)]
    backend_pid = json.loads(lab.record.read_text())["pid"]
    assert backend_pid in {p.pid for p in tree}
    assert len(tree) >= 3 + len(os.sched_getaffinity(0))  # vlab, jupyter, backend, workers

    if to == "terminal":  # Ctrl-C: the terminal interrupts its foreground process group
        os.killpg(lab.proc.pid, signal.SIGINT)
    else:  # `kill -INT`, or `make lab`'s make passing it on
        lab.proc.send_signal(signal.SIGINT)
    lab.proc.wait(timeout=60)
    _gone, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    assert not lab.record.exists()
