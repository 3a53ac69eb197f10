"""Where the backend is and which credential to use: VLAB_URL, VLAB_TOKEN, else the local
admin credential the server keeps in its data dir."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8765"
CREDENTIAL_FILE = "local-admin.token"


def data_dir() -> Path:
    explicit = os.environ.get("VLAB_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "vlab"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None


def resolve(url: str | None = None, token: str | None = None) -> Connection:
    url = (url or os.environ.get("VLAB_URL") or DEFAULT_URL).rstrip("/")
    token = token or os.environ.get("VLAB_TOKEN")
    if not token:
        credential = data_dir() / CREDENTIAL_FILE
        if credential.is_file():
            token = credential.read_text().strip() or None
    return Connection(url, token)
