"""`vlab lab` opens the user's own copy of the tour, made once in the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlab_kernel.cli import NOTEBOOKS, workspace_with_tour


def test_the_tour_is_copied_once_and_never_overwritten(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_DATA_DIR", str(tmp_path / "data"))
    shipped = NOTEBOOKS / "explore.ipynb"
    before = shipped.read_bytes()
    workspace = workspace_with_tour()
    copy = workspace / "explore.ipynb"
    assert workspace == tmp_path / "data" / "workspace"
    assert copy.read_bytes() == before
    copy.write_text("{}")  # the user's run of the tour, with its outputs
    workspace_with_tour()
    assert copy.read_text() == "{}"
    assert shipped.read_bytes() == before
