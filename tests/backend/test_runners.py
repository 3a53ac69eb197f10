"""The runner registry: built-in runners, runners from the `vlab.runners` entry points, and a
clear refusal of an unknown name."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packages import install_package
from vlab_backend import runners
from vlab_backend.config import Settings
from vlab_backend.runners.local import LocalRunner
from vlab_backend.store.database import Database

RUNNER_MODULE = '''
class OwnRunner:
    """A lab's own runner: records how it was built."""

    def __init__(self, settings, db):
        self.settings, self.db = settings, db
'''


@pytest.fixture
def own_runner_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    site = install_package(tmp_path / "site", "vlab-own-runner",
                           {"vlab_own_runner": RUNNER_MODULE},
                           {"vlab.runners": {"own": "vlab_own_runner:OwnRunner",
                                             "local": "vlab_own_runner:OwnRunner"}})
    monkeypatch.syspath_prepend(str(site))
    runners._targets.cache_clear()
    yield
    runners._targets.cache_clear()
    sys.modules.pop("vlab_own_runner", None)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", warm_workers=False)


def test_built_in_runners_are_registered() -> None:
    assert runners.runner_names()[:2] == ["local", "nomad"]


def test_the_local_runner_follows_the_settings(settings: Settings) -> None:
    runner = runners.create_runner("local", settings, Database("sqlite://"))
    assert isinstance(runner, LocalRunner) and runner.warm is None


def test_an_installed_runner_is_chosen_by_name(own_runner_installed: None,
                                               settings: Settings) -> None:
    assert "own" in runners.runner_names()
    db = Database("sqlite://")
    runner = runners.create_runner("own", settings, db)
    assert type(runner).__name__ == "OwnRunner"
    assert runner.settings is settings and runner.db is db  # type: ignore[attr-defined]


def test_an_installed_runner_cannot_take_a_built_in_name(own_runner_installed: None,
                                                         settings: Settings) -> None:
    assert runners.runner_names().count("local") == 1
    assert isinstance(runners.create_runner("local", settings, Database("sqlite://")),
                      LocalRunner)


def test_an_unknown_runner_is_refused_with_the_known_ones(settings: Settings) -> None:
    with pytest.raises(runners.UnknownRunner, match="unknown runner 'k8s'; known runners: "
                                                    "local, nomad"):
        runners.create_runner("k8s", settings, Database("sqlite://"))
