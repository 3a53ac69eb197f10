"""A runner from another package runs benchmarks through `vlab serve --runner NAME`, with no
file of the project changed: the scheduler and the app know runners only by the protocol."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_benchmarks_api import submit
from tests.packages import install_package
from tests.server import LiveServer, wait_terminal

pytestmark = pytest.mark.slow

# A lab's own runner: the local one, announcing each job it starts and its shutdown.
RUNNER_MODULE = '''
import sys

from vlab_backend.runners.local import LocalRunner


class AnnouncingRunner(LocalRunner):
    @classmethod
    def from_settings(cls, settings, db):
        return cls(warm_workers=settings.warm_workers)

    async def start(self, job, spec):
        ref = await super().start(job, spec)
        print(f"announcing runner started {spec.benchmark_id}", file=sys.stderr, flush=True)
        return ref

    async def aclose(self):
        await super().aclose()
        print("announcing runner closed", file=sys.stderr, flush=True)
'''


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LiveServer]:
    site = install_package(tmp_path / "site", "vlab-announcing-runner",
                           {"vlab_announcing_runner": RUNNER_MODULE},
                           {"vlab.runners": {
                               "announcing": "vlab_announcing_runner:AnnouncingRunner."
                                             "from_settings"}})
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    live = LiveServer(tmp_path / "data", ["--runner", "announcing"],
                      env={"PYTHONPATH": pythonpath}).start()
    yield live
    live.stop()


def test_a_benchmark_runs_through_an_installed_runner(lab: LiveServer,
                                                      small_onnx: Path) -> None:
    with lab.client() as client:
        bench_id = submit(client, small_onnx, nb_inference="5").json()["id"]
        assert wait_terminal(client, bench_id)["status"] == "success"
    lab.wait_for_log(f"announcing runner started {bench_id}")
    lab.stop()
    lab.wait_for_log("announcing runner closed")


def test_an_unknown_runner_is_one_line(tmp_path: Path) -> None:
    done = LiveServer(tmp_path / "data").cli("serve", "--runner", "k8s")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("vlab serve: error: argument "
                                                           "--runner: invalid choice: 'k8s'")
