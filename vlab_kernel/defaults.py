"""Defaults and rules that the client and the server share, each declared once here.

The server (`vlab_backend`) imports this module; this module imports nothing of the server, so
a client-only install (`pip install vlab-workbench`) has everything it needs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

# Inferences per benchmark when the caller names none (the dAIEdge client's default too).
DEFAULT_NB_INFERENCE = 20
# The most a server accepts unless `VLAB_MAX_NB_INFERENCE` says otherwise.
DEFAULT_MAX_NB_INFERENCE = 100_000

# Where `vlab sweep` and notebooks/sweep.ipynb write their results.
DEFAULT_SWEEP_DIR = "sweep-results"

# The local administrator's API token, which the server keeps in its data dir.
CREDENTIAL_FILE = "local-admin.token"
# Where the running server of a data dir listens (url, pid, started_at): `vlab_kernel.connection`.
SERVER_FILE = "server.json"


def data_dir() -> Path:
    """`VLAB_DATA_DIR`, else the XDG data dir (`$XDG_DATA_HOME/vlab`, `~/.local/share/vlab`)."""
    explicit = os.environ.get("VLAB_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "vlab"


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks: models and datasets are named by it."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
