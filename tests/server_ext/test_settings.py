"""The extension's settings are traits: Jupyter config first, else the environment as it is
when the extension starts (not when it is imported), else the shared defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from vlab_server_ext import VLabExtension
from vlab_server_ext.backend import EmbeddedBackend


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("VLAB_URL", "VLAB_TOKEN", "VLAB_DATA_DIR", "VLAB_WARM_WORKERS", "NOMAD_ADDR",
                 "NOMAD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_defaults(tmp_path: Path) -> None:
    extension = VLabExtension()
    assert extension.warm_workers is True  # the embedded backend is fast by default
    assert extension.backend_url == extension.backend_token == extension.nomad_addr == ""
    assert extension.data_dir == str(tmp_path / "xdg" / "vlab")


def test_the_environment_is_read_when_the_extension_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_URL", "http://lab:8765")
    monkeypatch.setenv("VLAB_TOKEN", "vlab_t")
    monkeypatch.setenv("VLAB_DATA_DIR", "/srv/vlab")
    monkeypatch.setenv("VLAB_WARM_WORKERS", "0")
    monkeypatch.setenv("NOMAD_ADDR", "http://nomad:4646")
    monkeypatch.setenv("NOMAD_TOKEN", "n")
    extension = VLabExtension()
    assert (extension.backend_url, extension.backend_token, extension.data_dir) == (
        "http://lab:8765", "vlab_t", "/srv/vlab")
    assert extension.warm_workers is False
    assert (extension.nomad_addr, extension.nomad_token) == ("http://nomad:4646", "n")


def test_jupyter_config_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_WARM_WORKERS", "1")
    monkeypatch.setenv("VLAB_URL", "http://from-env:8765")
    config = Config({"VLabExtension": {"warm_workers": False, "backend_url": ""}})
    extension = VLabExtension(config=config)
    assert extension.warm_workers is False and extension.backend_url == ""


@pytest.mark.parametrize(("warm", "flag"), [(True, "--warm-workers"),
                                            (False, "--no-warm-workers")])
def test_the_embedded_backend_is_told_about_warm_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warm: bool, flag: str) -> None:
    started: list[list[str]] = []

    class Exited:
        def poll(self) -> int:
            return 1

    def popen(command: list[str], **_options: object) -> Exited:
        started.append(command)
        return Exited()

    monkeypatch.setattr("subprocess.Popen", popen)
    with pytest.raises(RuntimeError, match="exited"):
        EmbeddedBackend(tmp_path, warm_workers=warm).start()
    assert flag in started[0]
