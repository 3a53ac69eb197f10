"""What the external converters get: at most `VLAB_MAX_CONVERSIONS` of them at once (one more
is answered 503 at once, the in-process ONNX conversions are not counted), and the jobs'
minimal environment, as does Flower's worker: never the server's tokens or database URL."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from vlab_backend import convert, toolenv
from vlab_backend.api import create_app
from vlab_backend.config import Settings
from vlab_backend.federated import flower

SECRETS = {"VLAB_TOKEN": "vlab_secret", "NOMAD_TOKEN": "nomad-secret",
           "VLAB_DATABASE_URL": "postgresql://vlab:pw@db/vlab"}


def test_a_full_converter_refuses_at_once() -> None:
    slots = convert.ConversionSlots(2)
    with slots.hold(), slots.hold():
        assert slots.running == 2
        with pytest.raises(convert.ConverterBusy, match="busy with 2 conversion"), slots.hold():
            pass
    assert slots.running == 0
    with slots.hold():  # the slots came back
        pass


def test_only_the_external_tools_take_a_slot() -> None:
    limit = 1
    with convert.conversion_slots(limit).hold():
        for target in ("tflite", "tflite_int8", "onnx"):
            with pytest.raises(convert.ConverterBusy), convert.conversion_slot(target, limit):
                pass
        for target in ("onnx_fp16", "onnx_opset13"):
            with convert.conversion_slot(target, limit):
                pass
    with convert.conversion_slot("tflite", limit):
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", warm_workers=False, max_conversions=1)
    with TestClient(create_app(settings)) as client:
        token = (tmp_path / "data" / "local-admin.token").read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def test_the_api_answers_503_while_the_converter_is_busy(api: TestClient,
                                                         small_onnx: Path) -> None:
    with small_onnx.open("rb") as handle:
        model = api.post("/api/models/download", params={"platform": "user_models"},
                         files={"model": (small_onnx.name, handle)}).json()["model"]
    with convert.conversion_slots(1).hold():  # a conversion in progress
        busy = api.post("/api/models/convert", params={"resource_identifier": model,
                                                       "convert_to": "tflite"})
        assert busy.status_code == 503, busy.text
        assert "the converter is busy with 1 conversion(s)" in busy.json()["error"]
        assert busy.headers["Retry-After"]
        cheap = api.post("/api/models/convert", params={"resource_identifier": model,
                                                        "convert_to": "onnx_fp16"})
        assert cheap.status_code == 201, cheap.text


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", "/srv/vlab/site-packages")


def fake_run(seen: list[dict[str, str]]) -> Any:
    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(kwargs["env"])
        return subprocess.CompletedProcess(command, 1, "", "SomeError: stopped here")
    return run


def test_the_converters_get_no_secret(secrets: None, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(toolenv, "ensure", lambda _env: Path("/opt/onnx2tf/bin/python"))
    monkeypatch.setattr(convert.subprocess, "run", fake_run(seen))
    source = tmp_path / "model.tflite"
    source.write_bytes(b"TFL3")
    with pytest.raises(convert.ConversionError, match="tf2onnx failed"):
        convert._tflite_to_onnx(source, tmp_path)
    env = seen[0]
    assert not set(SECRETS) & set(env) and "PYTHONPATH" not in env
    assert not any(value in SECRETS.values() for value in env.values())
    assert env["PATH"].startswith(f"{toolenv.ONNX2TF.bin_dir}:")
    assert env["PYTHONWARNINGS"] == "ignore" and env["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert env["HOME"]


def test_the_flower_worker_gets_no_secret(secrets: None, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    seen: list[dict[str, str]] = []
    monkeypatch.setattr(flower.subprocess, "run", fake_run(seen))
    update = flower.FitUpdate("c1", [np.zeros(2, np.float32)], 1)
    with pytest.raises(flower.FlowerError):
        flower.aggregate(1, flower.StrategyParams(), [update], [], python=Path("/bin/false"))
    env = seen[0]
    assert not set(SECRETS) & set(env) and "PYTHONPATH" not in env
    assert env["PYTHONWARNINGS"] == "ignore" and env["PATH"] and env["HOME"]
