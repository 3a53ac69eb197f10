"""Server settings: the environment variables they read, their defaults, keyword overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vlab_backend.config import Settings
from vlab_kernel.defaults import DEFAULT_HOST, DEFAULT_PORT

VARIABLES = ("VLAB_DATA_DIR", "XDG_DATA_HOME", "VLAB_WARM_WORKERS", "VLAB_DATABASE_URL",
             "VLAB_TIMEOUT_SUPPORT_S", "VLAB_TIMEOUT_BUILD_S", "VLAB_TIMEOUT_DEPLOY_S",
             "VLAB_TIMEOUT_MANAGER_S", "VLAB_MAX_MODEL_BYTES", "VLAB_MAX_DATASET_BYTES",
             "VLAB_MAX_NB_INFERENCE", "NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_NAMESPACE",
             "VLAB_PUBLIC_URL", "VLAB_HOST", "VLAB_PORT", "VLAB_RUNNER",
             "VLAB_ACCESS_TOKEN_MINUTES", "VLAB_REFRESH_TOKEN_DAYS")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_defaults(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.warm_workers is True  # fast by default
    assert (settings.host, settings.port, settings.runner) == (DEFAULT_HOST, DEFAULT_PORT,
                                                               "local")
    assert settings.data_dir == tmp_path / "home" / ".local" / "share" / "vlab"
    assert settings.db_url == f"sqlite:///{settings.data_dir / 'vlab.db'}"
    assert settings.step_timeouts_s == {"support": 300, "build": 900, "deploy": 300,
                                        "manager": 1800}
    assert settings.nomad_addr == "http://127.0.0.1:4646" and settings.nomad_token == ""
    assert settings.max_upload_bytes == (settings.max_model_bytes + settings.max_dataset_bytes
                                         + 1024 * 1024)


def test_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLAB_WARM_WORKERS", "0")
    monkeypatch.setenv("VLAB_TIMEOUT_BUILD_S", "42")
    monkeypatch.setenv("VLAB_MAX_NB_INFERENCE", "500")
    monkeypatch.setenv("VLAB_DATABASE_URL", "postgresql+psycopg://db/vlab")
    monkeypatch.setenv("NOMAD_ADDR", "http://nomad.lab:4646")
    monkeypatch.setenv("NOMAD_TOKEN", "secret")
    monkeypatch.setenv("NOMAD_NAMESPACE", "bench")
    monkeypatch.setenv("VLAB_PUBLIC_URL", "https://vlab.lab")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = Settings()
    assert settings.warm_workers is False
    assert settings.step_timeouts_s["build"] == 42 and settings.step_timeouts_s["deploy"] == 300
    assert settings.max_nb_inference == 500
    assert settings.db_url == "postgresql+psycopg://db/vlab"
    assert (settings.nomad_addr, settings.nomad_token, settings.nomad_namespace) == (
        "http://nomad.lab:4646", "secret", "bench")
    assert settings.public_url == "https://vlab.lab"
    assert settings.data_dir == tmp_path / "xdg" / "vlab"
    monkeypatch.setenv("VLAB_DATA_DIR", "~/lab")
    assert Settings().data_dir == tmp_path / "home" / "lab"


@pytest.mark.parametrize(("value", "warm"), [("1", True), ("true", True), ("0", False),
                                             ("false", False), ("", True)])
def test_warm_workers_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str,
                                           warm: bool) -> None:
    monkeypatch.setenv("VLAB_WARM_WORKERS", value)  # empty: the default
    assert Settings().warm_workers is warm


def test_keywords_override_the_environment(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("VLAB_WARM_WORKERS", "0")
    monkeypatch.setenv("NOMAD_ADDR", "http://from-env:4646")
    settings = Settings(host="0.0.0.0", port=9000, warm_workers=True, data_dir=tmp_path,
                        nomad_addr="http://given:4646")
    assert (settings.host, settings.port, settings.warm_workers) == ("0.0.0.0", 9000, True)
    assert settings.data_dir == tmp_path and settings.nomad_addr == "http://given:4646"
    with pytest.raises(ValueError):
        Settings(warm_worker=True)  # a misspelt setting is an error, not ignored


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("VLAB_TIMEOUT_MANAGER_S", "0", "greater than or equal to 1"),
    ("VLAB_TIMEOUT_MANAGER_S", "100000000", "less than or equal to 86400"),
    ("VLAB_TIMEOUT_BUILD_S", "inf", "valid integer"),
    ("VLAB_MAX_MODEL_BYTES", "-1", "greater than or equal to 1"),
    ("VLAB_MAX_DATASET_BYTES", str(2**70), "less than or equal to"),
    ("VLAB_MAX_NB_INFERENCE", "NaN", "valid integer"),
    ("VLAB_MAX_NB_INFERENCE", str(10**10), "less than or equal to 1000000000"),
    ("VLAB_PORT", "70000", "less than or equal to 65535"),
    ("VLAB_ACCESS_TOKEN_MINUTES", "0", "greater than or equal to 1"),
    ("VLAB_REFRESH_TOKEN_DAYS", "100000", "less than or equal to 365"),
])
def test_numbers_out_of_their_bounds_are_refused(monkeypatch: pytest.MonkeyPatch,
                                                 variable: str, value: str,
                                                 message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message) as refused:
        Settings()
    assert refused.value.errors()[0]["loc"] == (variable.removeprefix("VLAB_").lower(),)
