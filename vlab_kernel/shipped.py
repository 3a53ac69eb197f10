"""Where the lab's data folders are: `targets/` (the built-in target repositories) and
`notebooks/`.

In a checkout (an editable install included) they are the repository's own folders. A wheel
installs copies as data files under `<prefix>/share/vlab/` (pyproject.toml,
`[tool.setuptools.data-files]`); they are found through the distribution's file list, which
holds for any install scheme (a virtual environment, `--user`, `--prefix`, a Docker image).
Standard library only: the client and the server both use it."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "vlab-workbench"
SHARE = ("share", "vlab")
REPOSITORY = Path(__file__).resolve().parents[1]


def _installed(name: str) -> Path | None:
    try:
        files = metadata.distribution(DISTRIBUTION).files or []
    except metadata.PackageNotFoundError:
        files = []
    marker = (*SHARE, name)
    for file in files:
        parts = file.parts
        for start in range(len(parts) - len(marker)):
            if tuple(parts[start:start + len(marker)]) == marker:
                folder = Path(str(file.locate())).resolve().parents[
                    len(parts) - start - len(marker) - 1]
                if folder.is_dir():
                    return folder
    for prefix in (sys.prefix, sys.base_prefix):
        candidate = Path(prefix, *marker)
        if candidate.is_dir():
            return candidate
    return None


def shipped_folder(name: str) -> Path:
    """The folder `name` (`targets` or `notebooks`): the checkout's, else the installed copy;
    the checkout's path (which does not exist) when neither is there, for the caller's
    error message."""
    own = REPOSITORY / name
    if own.is_dir():
        return own
    return _installed(name) or own
