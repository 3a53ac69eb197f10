"""Failures and noise in plain sight, through a live server: the engine's own reason for a
failure, third-party target scripts without a shebang line, the stability verdict and jobs
that ran side by side."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_benchmarks_api import submit
from tests.kernel.test_cli import one_error_line
from tests.models import CUSTOM_DOMAIN, CUSTOM_OP, custom_op_model
from tests.server import LiveServer, wait_status, wait_terminal
from vlab_backend.targets import builtin_targets_dir

pytestmark = pytest.mark.slow

ENGINE_REASON = f"{CUSTOM_DOMAIN}:{CUSTOM_OP}(-1) is not a registered function/op"


def test_a_custom_op_failure_names_the_op(server: LiveServer, tmp_path: Path) -> None:
    model = custom_op_model(tmp_path / "fancy.onnx")
    done = server.cli("bench", str(model), "--target", "host-cpu", "--engine", "onnxruntime",
                      "--runs", "5")
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert ENGINE_REASON in line, line
    assert line.endswith("(AI_Manager/manager.sh failed with exit code 2)")
    bench_id = re.search(r"benchmark (\S+) failed", line)
    assert bench_id is not None, line
    with server.client() as client:
        status = client.get(f"/api/benchmarks/{bench_id[1]}/status").json()
        assert status["status"] == "failed"
        assert status["message"].startswith("onnxruntime could not load fancy_")
        assert ENGINE_REASON in status["message"]
        row = next(r for r in client.get("/api/results").json() if r["id"] == bench_id[1])
        assert row["message"] == status["message"]


def test_an_unstable_run_says_so_on_its_summary(server: LiveServer, small_onnx: Path) -> None:
    done = server.cli("bench", str(small_onnx), "--target", "host-cpu", "--engine", "synthetic",
                      "--runs", "40", "--param", "mean_ms=2", "--param", "std_ms=2")
    assert done.returncode == 0, done.stderr
    noise = next(line for line in done.stdout.splitlines() if line.startswith("  noise"))
    assert "UNSTABLE: high variation (CV" in noise, done.stdout


def target_copy(destination: Path, first_line_of_support: str = "") -> Path:
    """The built-in host-cpu target repository, copied; the support step may start with a
    line of the test's own."""
    shutil.copytree(builtin_targets_dir() / "host-cpu", destination)
    if first_line_of_support:
        support = destination / "AI_Support" / "support.sh"
        shebang, rest = support.read_text().split("\n", 1)
        support.write_text(f"{shebang}\n{first_line_of_support}\n{rest}")
    return destination


def without_shebangs(repository: Path) -> Path:
    for script in repository.glob("AI_*/*.sh"):
        script.write_text(script.read_text().split("\n", 1)[1])
        script.chmod(0o755)
    return repository


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    """A server with a third-party target whose scripts have no shebang line, and two
    instances on one host whose jobs wait, in their first step, for a `go` file."""
    go = tmp_path / "go"
    gated = target_copy(tmp_path / "gated",
                        f'while [[ ! -e "{go}" ]]; do sleep 0.05; done')
    engines = {"synthetic": {"supported_types": ["TYPE1"]}}
    config = {
        "third-party": [{"target_uid": "tp-0", "repository": str(
            without_shebangs(target_copy(tmp_path / "third-party"))), "engines": engines}],
        "gated": [{"target_uid": f"gated-{n}", "repository": str(gated), "engines": engines}
                  for n in range(2)],
    }
    (tmp_path / "targets.json").write_text(json.dumps(config))
    live = LiveServer(tmp_path / "data", ["--targets", str(tmp_path / "targets.json")]).start()
    yield live, go
    live.stop()


def test_a_target_without_shebang_lines_runs(lab: tuple[LiveServer, Path],
                                             small_onnx: Path) -> None:
    server, _ = lab
    with server.client() as client:
        bench_id = submit(client, small_onnx, device="third-party",
                          engine="synthetic").json()["id"]
        final = wait_terminal(client, bench_id)
    assert final["status"] == "success", final["message"]


def test_jobs_side_by_side_are_counted_and_warned_of(lab: tuple[LiveServer, Path],
                                                     small_onnx: Path) -> None:
    server, go = lab
    bench = subprocess.Popen(
        [sys.executable, "-m", "vlab_kernel.cli", "bench", str(small_onnx), "--target", "gated",
         "--engine", "synthetic", "--runs", "5"],
        env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with server.client() as client:
            other = submit(client, small_onnx, device="gated", engine="synthetic").json()["id"]
            rows = wait_two_running(client)
            go.touch()
            stdout, stderr = bench.communicate(timeout=180)
            assert bench.returncode == 0, stderr
            for bench_id in rows:
                final = wait_terminal(client, bench_id)
                assert final["metrics"]["concurrent_jobs_on_host"] == 1
            results = {r["id"]: r for r in client.get("/api/results").json()}
            assert results[other]["concurrent_jobs_on_host"] == 1
    finally:
        go.touch()
        if bench.poll() is None:
            bench.kill()
    assert "  warning  1 other job(s) ran on this host at the same time" in stdout


def wait_two_running(client: httpx.Client) -> list[str]:
    """The ids of the two gated benchmarks, once both run."""
    deadline = time.monotonic() + 60
    ids: list[str] = []
    while len(ids) < 2:  # the CLI's submission may not have arrived yet
        assert time.monotonic() < deadline, "the CLI's benchmark never arrived"
        ids = [b["id"] for b in client.get("/api/benchmarks").json()["results"]
               if b["device"] == "gated"]
    for bench_id in ids:
        wait_status(client, bench_id, "running")
    return ids
