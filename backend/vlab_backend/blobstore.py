"""Content-addressed file store: each blob once, at `<root>/<sha256[:2]>/<sha256>`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from vlab_kernel.defaults import sha256_file

__all__ = ["BlobStore", "sha256_file"]


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 digest")
        return self.root / sha256[:2] / sha256

    def put(self, source: Path, sha256: str | None = None) -> str:
        """Add `source` (a file on the same filesystem) to the store as a hard link, so that
        the caller still owns its upload until it discards it; returns the digest."""
        digest = sha256 or sha256_file(source)
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # a concurrent upload got there first
                os.link(source, target)
        return digest

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
