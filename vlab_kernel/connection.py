"""Where the backend is and which credential to use.

The URL: the one given, else `VLAB_URL`, else the server that runs for this user's data dir
(it records itself in `<data dir>/server.json` while it runs), else the default address. The
token: the one given, else `VLAB_TOKEN`, else the local admin credential of the data dir.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from vlab_kernel.defaults import CREDENTIAL_FILE, DEFAULT_URL, SERVER_FILE, data_dir

__all__ = ["Connection", "ServerRecord", "forget_server", "record_server", "resolve",
           "running_server"]


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None


@dataclass(frozen=True)
class ServerRecord:
    """A running server's address, as it records it in its data dir."""

    url: str
    pid: int
    started_at: str


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive all the same
        return True
    return True


def running_server(store: Path | None = None) -> ServerRecord | None:
    """The server recorded in the data dir (default: this user's), unless its process is gone
    (a stale record, left by a server that was killed) or the record is unreadable."""
    path = (store or data_dir()) / SERVER_FILE
    try:
        fields = json.loads(path.read_text())
        record = ServerRecord(url=str(fields["url"]), pid=int(fields["pid"]),
                              started_at=str(fields["started_at"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return record if record.pid > 0 and _alive(record.pid) else None


def record_server(path: Path, url: str) -> ServerRecord:
    """Record this process as the server listening at `url`: written whole (a temporary file
    renamed over the record), readable by this user only."""
    record = ServerRecord(url=url.rstrip("/"), pid=os.getpid(),
                          started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:  # mkstemp creates it with mode 0600
            json.dump(asdict(record), out)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return record


def forget_server(path: Path) -> None:
    """Remove the record if this process wrote it (never another server's)."""
    try:
        if json.loads(path.read_text()).get("pid") != os.getpid():
            return
    except (OSError, ValueError, AttributeError):
        return
    path.unlink(missing_ok=True)


def resolve(url: str | None = None, token: str | None = None) -> Connection:
    store = data_dir()
    if not (url := url or os.environ.get("VLAB_URL")):
        running = running_server(store)
        url = running.url if running else DEFAULT_URL
    token = token or os.environ.get("VLAB_TOKEN")
    if not token:
        credential = store / CREDENTIAL_FILE
        if credential.is_file():
            token = credential.read_text().strip() or None
    return Connection(url.rstrip("/"), token)
