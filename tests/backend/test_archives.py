"""Archive extraction within limits: zip bombs, forged sizes, member counts, path traversal."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from tests.models import ir_bomb, zip_of
from vlab_backend.archives import ArchiveLimits, ArchiveRefused, extract, safe_member_name
from vlab_backend.convert import extract_ir

MIB = 1 << 20


def test_small_archives_may_compress_well(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "a.zip", {"model.bin": bytes(32 * MIB)})  # about 32 KiB
    assert extract(archive, ["model.bin"], tmp_path, ArchiveLimits(MIB * 64))[0].stat().st_size \
        == 32 * MIB


def test_members_are_extracted_whole(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "a.zip", {"model.xml": b"<net/>", "model.bin": b"\x01" * 1000})
    out = tmp_path / "out"
    out.mkdir()
    written = extract(archive, ["model.xml", "model.bin"], out, ArchiveLimits(MIB))
    assert [p.read_bytes() for p in written] == [b"<net/>", b"\x01" * 1000]


def test_a_zip_bomb_is_refused_by_its_ratio_before_anything_is_written(tmp_path: Path) -> None:
    archive = ir_bomb(tmp_path / "bomb.zip", b"<net/>", 96 * MIB)  # about 96 KiB
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveRefused, match="more than 100 times its size"):
        extract(archive, ["model.xml", "model.bin"], out, ArchiveLimits(1024 * MIB))
    assert not any(out.iterdir())


def test_the_total_limit_names_the_model_size_limit(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "big.zip", {"model.bin": bytes(3 * MIB)}, zipfile.ZIP_STORED)
    with pytest.raises(ArchiveRefused, match="more than 2 MiB, the model size limit"):
        extract(archive, ["model.bin"], tmp_path, ArchiveLimits(2 * MIB))


def _forge_sizes(archive: Path, size: int) -> None:
    """Declare `size` as every member's inflated size, in local and central headers."""
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.find(signature)
        while start >= 0:
            struct.pack_into("<I", data, start + offset, size)
            start = data.find(signature, start + 4)
    archive.write_bytes(bytes(data))


def test_a_forged_size_cannot_raise_the_budget(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "forged.zip", {"model.bin": bytes(8 * MIB)})
    _forge_sizes(archive, 10)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveRefused):
        extract(archive, ["model.bin"], out, ArchiveLimits(MIB, max_ratio=10_000))
    # Whatever was written stays within what the header declared.
    assert sum(p.stat().st_size for p in out.iterdir()) <= 10


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "many.zip", {f"f{i}": b"x" for i in range(65)})
    with pytest.raises(ArchiveRefused, match="65 entries; the limit is 64"):
        extract(archive, ["f0"], tmp_path, ArchiveLimits(MIB))


@pytest.mark.parametrize("name", ["../evil.bin", "/etc/evil.bin", "a/../../evil.bin",
                                  "..\\evil.bin", "C:evil.bin", ""])
def test_member_names_that_leave_the_destination_are_refused(tmp_path: Path,
                                                             name: str) -> None:
    assert not safe_member_name(name)
    archive = zip_of(tmp_path / "t.zip", {"ok": b"x"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveRefused, match="would leave"):
        extract(archive, [name], out, ArchiveLimits(MIB))
    assert not (tmp_path / "evil.bin").exists()


def test_a_file_that_is_no_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ArchiveRefused, match="not a readable zip archive"):
        extract(path, ["a"], tmp_path, ArchiveLimits(MIB))


def test_extract_ir_takes_the_top_level_pair_only(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "ir.zip", {"m.xml": b"<net/>", "m.bin": b"",
                                           "sub/other.xml": b"<net/>"})
    out = tmp_path / "out"
    out.mkdir()
    assert extract_ir(archive, out, ArchiveLimits(MIB)) == (out / "m.xml").resolve()
    assert sorted(p.name for p in out.iterdir()) == ["m.bin", "m.xml"]
    with pytest.raises(ArchiveRefused, match=r"exactly one \.xml and one \.bin"):
        extract_ir(zip_of(tmp_path / "no_bin.zip", {"m.xml": b""}), out, ArchiveLimits(MIB))
