from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.models import conv_model, onnx_zoo, tflite_zoo
from tests.server import LiveServer

# jp_fetch, jp_serverapp, ... for the server-extension tests.
pytest_plugins = ("pytest_jupyter.jupyter_server",)


@pytest.fixture(scope="session")
def squeezenet() -> Path:
    return onnx_zoo("squeezenet")


@pytest.fixture(scope="session")
def face_tflite() -> Path:
    return tflite_zoo()


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conv_model(tmp_path_factory.mktemp("models") / "small_conv.onnx")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server for the tests that do not restart it."""
    live = LiveServer(tmp_path_factory.mktemp("vlab") / "data").start()
    yield live
    live.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server of the test's own, for tests that kill or restart it."""
    live = LiveServer(tmp_path / "data").start()
    yield live
    live.stop()
