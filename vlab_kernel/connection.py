"""Where the backend is and which credential to use: VLAB_URL, VLAB_TOKEN, else the local
admin credential the server keeps in its data dir."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vlab_kernel.defaults import CREDENTIAL_FILE, DEFAULT_URL, data_dir

__all__ = ["Connection", "resolve"]


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
