"""Extracting uploaded zip archives within limits (zip bombs, path traversal).

Every archive the lab opens goes through `extract`: the member count, the total inflated size
and the inflation ratio are checked from the central directory before anything is written, and
again on the bytes actually inflated (a forged header cannot raise the budget). Members are
written only under the destination, as new files.
"""

from __future__ import annotations

import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20


class ArchiveRefused(ValueError):
    """The archive is unreadable, or breaks one of its limits; the message says which."""


@dataclass(frozen=True)
class ArchiveLimits:
    # What all extracted members may inflate to, together (None: only the ratio bounds it).
    max_total_bytes: int | None
    max_members: int = 64  # entries in the archive, extracted or not
    max_ratio: int = 100  # inflated bytes per byte of archive, past `ratio_floor_bytes`
    # Below this, any ratio: small models compress well (weights made of a few values).
    ratio_floor_bytes: int = 64 << 20

    def budget(self, archive_bytes: int) -> int:
        by_ratio = max(self.ratio_floor_bytes, self.max_ratio * archive_bytes)
        return by_ratio if self.max_total_bytes is None else min(self.max_total_bytes, by_ratio)


def _size(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size} bytes"


def safe_member_name(name: str) -> bool:
    """A relative path that stays inside the destination on every platform."""
    path = PurePosixPath(name)
    return (bool(name) and "\\" not in name and "\x00" not in name and ":" not in name
            and not path.is_absolute() and ".." not in path.parts)


def open_archive(path: Path, limits: ArchiveLimits) -> zipfile.ZipFile:
    """Open a zip archive and check what its central directory declares."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveRefused(f"not a readable zip archive ({exc})") from exc
    try:
        members = archive.infolist()
        if len(members) > limits.max_members:
            raise ArchiveRefused(f"the archive holds {len(members)} entries; the limit is "
                                 f"{limits.max_members}")
        declared = sum(m.file_size for m in members)
        _check_budget(declared, path.stat().st_size, limits)
    except BaseException:
        archive.close()
        raise
    return archive


def _check_budget(inflated: int, archive_bytes: int, limits: ArchiveLimits) -> None:
    if limits.max_total_bytes is not None and inflated > limits.max_total_bytes:
        raise ArchiveRefused(f"the archive inflates to more than "
                             f"{_size(limits.max_total_bytes)}, the model size limit")
    if inflated > limits.budget(archive_bytes):
        raise ArchiveRefused(f"the archive inflates past {_size(limits.ratio_floor_bytes)} to "
                             f"more than {limits.max_ratio} times its size (a zip bomb?); "
                             "store its members uncompressed")


def extract(path: Path, names: list[str], into: Path, limits: ArchiveLimits) -> list[Path]:
    """Extract the members `names` of the archive at `path` into the directory `into`.

    Raises ArchiveRefused for a bad archive, a name that leaves `into`, or a broken limit;
    files already written are then left for the caller's temporary directory to remove."""
    archive_bytes = path.stat().st_size
    budget = limits.budget(archive_bytes)
    written: list[Path] = []
    total = 0
    with open_archive(path, limits) as archive:
        root = into.resolve()
        for name in names:
            target = (root / name).resolve()
            if not safe_member_name(name) or not target.is_relative_to(root):
                raise ArchiveRefused(f"member {name!r} would leave the extraction folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(name) as source, target.open("xb") as sink:
                    # Read at most one byte past the budget: enough to know it is broken.
                    while chunk := source.read(min(CHUNK, budget - total + 1)):
                        total += len(chunk)
                        _check_budget(total, archive_bytes, limits)
                        sink.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError,
                    NotImplementedError, EOFError, RuntimeError, KeyError, OSError) as exc:
                # RuntimeError: an encrypted member; NotImplementedError: an unknown method.
                raise ArchiveRefused(f"member {name!r} cannot be extracted ({exc})") from exc
            written.append(target)
    return written
