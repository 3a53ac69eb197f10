"""The embedded VLab backend: a `vlab serve` subprocess on a free local port, started and
stopped by the Jupyter server extension."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from vlab_kernel.connection import running_server
from vlab_kernel.defaults import CREDENTIAL_FILE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBackend:
    def __init__(self, data_dir: Path, warm_workers: bool = True) -> None:
        self.data_dir = data_dir
        self.warm_workers = warm_workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def token(self) -> str:
        return self.credential.read_text().strip()

    @property
    def credential(self) -> Path:
        return self.data_dir / CREDENTIAL_FILE

    def start(self, timeout_s: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "embedded-backend.log").open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "vlab_kernel.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--log-level", "warning",
             "--warm-workers" if self.warm_workers else "--no-warm-workers",
             # Only the Jupyter server connects, and it forwards no client address: trust no
             # proxy headers, whatever $VLAB_FORWARDED_ALLOW_IPS says.
             "--forwarded-allow-ips", ""],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Its own process group: a terminal's Ctrl-C reaches Jupyter, not this backend.
            # Jupyter stops it (`stop`) when it stops itself, and keeps it when its "Shutdown
            # this Jupyter server?" prompt is declined.
            process_group=0)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the embedded VLab backend exited; see "
                                   f"{self.data_dir / 'embedded-backend.log'}")
            # It records itself in the data dir once it accepts requests (credential made).
            running = running_server(self.data_dir)
            if running is not None and running.pid == self._proc.pid:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the embedded VLab backend did not start in time")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
