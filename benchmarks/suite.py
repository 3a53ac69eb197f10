"""The performance suite (`make bench`): every figure measured side by side in one run on this
machine, written with the machine and the goals to benchmarks/RESULTS.md.

Figures: fidelity (reported mean ÷ bare engine loop) and repeatability (the same benchmark
five times: spread of medians, beside the machine's own spread), both in fidelity.py; platform
overhead (submit → terminal minus the timed inferences), notification latency (job end →
client notified) and sweep throughput (many small jobs on all instances ÷ ideal), first for
the server as `vlab serve` starts it (warm workers) and then cold (`--no-warm-workers`); API
scale (200 concurrent submissions; 10,000 results into a DataFrame); the status endpoint's p99
during a login storm beside its p99 at rest.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from benchmarks.fidelity import (
    FidelityRow,
    Repeatability,
    fidelity,
    repeatability,
    verdict,
)
from benchmarks.jobs import follow, submit
from benchmarks.login_storm import StormResult, login_storm
from tests.models import conv_model, onnx_zoo
from tests.server import LiveServer
from vlab_backend.artifacts import PIPELINE_RESULT
from vlab_backend.jobdir import PipelineResult
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.lab import Lab

RESULTS = Path(__file__).with_name("RESULTS.md")


def timed_sum(server: LiveServer, bench_id: str) -> float:
    report = json.loads((server.data_dir / "artifacts" / bench_id / "report.json").read_text())
    return float(sum(report["inference_latency"]["samples"]))


@dataclass
class Overhead:
    """Medians over small jobs, in seconds."""

    total: float  # submit → client notified, minus the timed inferences
    before: float  # submit → the pipeline process starts (API, queue, dispatch, start-up)
    pipeline: float  # the pipeline's own time beyond the timed inferences (steps, harness)
    notify: float  # the pipeline's end → client notified (collection, database, event)


def platform_overhead(server: LiveServer, model: Path, jobs: int = 8) -> Overhead:
    """Small jobs one after the other on one instance, and where their time goes."""
    parts: list[tuple[float, float, float, float]] = []
    with server.client() as client:
        for _ in range(jobs):
            submitted = time.time()
            bench_id = submit(client, model, target_uids=["host-cpu-0"],
                              parameters={"warmup_runs": 1, "warmup_min_s": 0,
                                          "profile_layers": False})
            arrived, info = follow(server, bench_id)
            assert info["status"] == "success", info
            timed = timed_sum(server, bench_id)
            result = PipelineResult.parse(
                (server.data_dir / "artifacts" / bench_id / PIPELINE_RESULT).read_bytes())
            assert result.started is not None and result.finished is not None
            parts.append((arrived - submitted - timed, result.started - submitted,
                          result.finished - result.started - timed,
                          arrived - result.finished))
    return Overhead(*(statistics.median(column) for column in zip(*parts, strict=True)))


def sweep_throughput(server: LiveServer, model: Path, jobs: int = 12) -> float:
    """Ideal time (timed work spread over all instances) ÷ actual wall time."""
    instances = len(os.sched_getaffinity(0))
    with server.client() as client:
        started = time.time()
        ids = [submit(client, model, parameters={"min_time_s": 1.0, "warmup_min_s": 0,
                                                 "profile_layers": False})
               for _ in range(jobs)]
        with ThreadPoolExecutor(len(ids)) as pool:
            finished = [arrived for arrived, _ in pool.map(lambda i: follow(server, i), ids)]
    actual = max(finished) - started
    ideal = sum(timed_sum(server, i) for i in ids) / instances
    return ideal / actual


def api_scale(server: LiveServer, model: Path, count: int = 200) -> tuple[int, float]:
    """200 concurrent submissions: how many were accepted, and the p99 request latency."""
    content = model.read_bytes()

    def one(_index: int) -> tuple[int, float, str]:
        with httpx.Client(base_url=server.url, timeout=120,
                          headers={"Authorization": f"Bearer {server.token}"}) as client:
            t0 = time.perf_counter()
            response = client.post("/api/benchmarks/run", data={
                "device": "host-cpu", "engine": "onnxruntime", "nb_inference": "1"},
                files={"model": ("scale.onnx", content)})
            return response.status_code, time.perf_counter() - t0, response.json().get("id", "")

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, range(count)))
    accepted = sum(1 for code, _, _ in outcomes if code == 200)
    latencies = sorted(t for _, t, _ in outcomes)
    with server.client() as client:  # do not run them all
        for _, _, bench_id in outcomes:
            if bench_id:
                client.post(f"/api/benchmarks/{bench_id}/cancel")
    return accepted, latencies[int(0.99 * (len(latencies) - 1))]


def results_to_dataframe(server: LiveServer, rows: int = 10_000) -> float:
    """Seconds to bring 10,000 stored results into a DataFrame through the API (the metrics of
    each row are those of a real benchmark run earlier in the suite)."""
    with sqlite3.connect(server.data_dir / "vlab.db") as db:
        owner, model_id, sha, metrics = db.execute(
            "select owner_id, model_id, model_sha256, metrics from benchmarks "
            "where status = 'success' limit 1").fetchone()
        now = datetime.now(UTC).isoformat()
        db.executemany(
            "insert into benchmarks (id, owner_id, target_type, engine, benchmark_type, "
            "nb_inference, requested_uids, parameters, model_id, model_filename, model_sha256, "
            "odt_config, status, message, progress_done, progress_total, progress_phase, "
            "artifacts, metrics, public, created_at, finished_at) values (?, ?, 'host-cpu', "
            "'onnxruntime', 'TYPE1', 100, '[]', '{}', ?, 'bulk.onnx', ?, '{}', 'success', '', "
            "100, 100, 'done', '[]', ?, 0, ?, ?)",
            [(f"bulk{i:012d}", owner, model_id, sha, metrics, now, now) for i in range(rows)])
    lab = Lab(VlabClient(Connection(server.url, server.token)))
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        frame = lab.results(limit=rows)
        timings.append(time.perf_counter() - t0)
        assert len(frame) == rows
    return statistics.median(timings)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        small = conv_model(Path(tmp) / "small_conv.onnx")
        squeezenet = onnx_zoo("squeezenet")
        figures: dict[str, Any] = {}
        # What `vlab serve` gives with no flags (warm workers) comes first.
        default = LiveServer(Path(tmp) / "default").start()
        try:
            default.wait_for_warm_workers()
            print("platform overhead (default server) ...", flush=True)
            figures["overhead_warm"] = platform_overhead(default, small)
            print("sweep throughput (default server) ...", flush=True)
            figures["sweep_warm"] = sweep_throughput(default, small)
            print("fidelity ...", flush=True)
            figures["fidelity"] = fidelity(default)
            print("repeatability ...", flush=True)
            figures["repeat"] = repeatability(default, squeezenet)
            print("API scale ...", flush=True)
            figures["accepted"], figures["p99"] = api_scale(default, small)
            figures["dataframe"] = results_to_dataframe(default)
            print("login storm ...", flush=True)
            figures["storm"] = login_storm(default)
        finally:
            default.stop()
        cold = LiveServer(Path(tmp) / "cold", ["--no-warm-workers"]).start()
        try:
            print("platform overhead (cold: --no-warm-workers) ...", flush=True)
            figures["overhead_cold"] = platform_overhead(cold, small)
            print("sweep throughput (cold: --no-warm-workers) ...", flush=True)
            figures["sweep_cold"] = sweep_throughput(cold, small)
        finally:
            cold.stop()
    write(figures)
    print(RESULTS.read_text())
    return 0


def write(f: dict[str, Any]) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())

    def mark(ok: bool) -> str:
        return "met" if ok else "not met"

    rows: list[FidelityRow] = f["fidelity"]
    cold: Overhead = f["overhead_cold"]
    warm: Overhead = f["overhead_warm"]

    def split(overhead: Overhead) -> str:
        return " / ".join(f"{part * 1e3:.0f} ms" for part in (
            overhead.before, overhead.pipeline, overhead.notify))

    repeat: Repeatability = f["repeat"]
    storm: StormResult = f["storm"]
    storm_statuses = ", ".join(f"{count}× {status}"
                               for status, count in sorted(storm.login_statuses.items()))
    lines = [
        "# Performance results", "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `make bench` on {cpu}, "
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}. Every figure comes from this one run.", "",
        "| figure | measured | goal | |", "|---|---|---|---|",
        f"| platform overhead, `vlab serve` with no flags (warm workers; median of small "
        f"jobs) | {warm.total:.3f} s | ≤ 0.1 s | {mark(warm.total <= 0.1)} |",
        f"| … before the pipeline / in the pipeline / after it | {split(warm)} | – | |",
        f"| sweep throughput, `vlab serve` with no flags (12 one-second jobs on all instances "
        f"÷ ideal) | {f['sweep_warm']:.2f} | ≥ 0.85 | {mark(f['sweep_warm'] >= 0.85)} |",
        f"| notification latency (job end → client notified) | "
        f"{warm.notify * 1e3:.1f} ms | ≤ 50 ms | {mark(warm.notify <= 0.05)} |",
        f"| platform overhead, cold (`--no-warm-workers`) | {cold.total:.3f} s | "
        f"≤ 0.5 s | {mark(cold.total <= 0.5)} |",
        f"| … before the pipeline / in the pipeline / after it | {split(cold)} | – | |",
        f"| sweep throughput, cold (each job starts its interpreters) | "
        f"{f['sweep_cold']:.2f} | ≥ 0.8 | {mark(f['sweep_cold'] >= 0.8)} |",
        f"| API scale: 200 concurrent submissions accepted | {f['accepted']} / 200, p99 "
        f"{f['p99'] * 1e3:.0f} ms | all accepted | {mark(f['accepted'] == 200)} |",
        f"| API scale: 10,000 results into a DataFrame | {f['dataframe']:.3f} s | ≤ 0.5 s | "
        f"{mark(f['dataframe'] <= 0.5)} |",
        f"| status endpoint during a login storm (200 concurrent wrong-password logins over "
        f"40 accounts, {storm.storm_s:.0f} s): p99 at rest / during the storm | "
        f"{storm.rest_p99_s * 1e3:.1f} ms / {storm.storm_p99_s * 1e3:.1f} ms "
        f"({storm.ratio:.0f}×; logins answered {storm_statuses}) | ≤ 200× | "
        f"{mark(storm.ratio <= 200 and storm.login_statuses == {401: 200})} |",
        f"| repeatability (5 runs of squeezenet on one pinned core, spread of medians) | "
        f"{repeat.medians:.1%} | ≤ 2 % | {mark(repeat.medians <= 0.02)} |",
        f"| … the machine's own spread (5 bare engine loops between those runs) | "
        f"{repeat.bare_medians:.1%} | – | noise floor |",
        f"| … spread of the fastest inference of each run (VLab / bare loops) | "
        f"{repeat.minima:.1%} / {repeat.bare_minima:.1%} | – | |", "",
        "## Fidelity: reported mean ÷ bare engine loop", "",
        "Bare loop: the engine's own API in a process of its own pinned to core 0, 1 thread, "
        "20 warm-up runs, then at least 200 timed runs and 2 s; VLab: the same on instance "
        "host-cpu-0. Run in back-to-back pairs, alternating which goes first; the ratio is the "
        "median of the pairs' ratios with its distribution-free 95 % interval (sign test), "
        "the means are medians over the rounds; the bare-loop spread is how much the bare "
        "loop's own mean moved from round to round, and the last ratio compares the fastest "
        "inference of each run, which the machine's drift barely touches. Goal: ratio of "
        "means within 2 %: `met` when the whole interval is within it, `within noise` when "
        "this machine cannot tell.", "",
        "| model | engine | bare loop mean | VLab reported mean | ratio | 95 % interval | "
        "bare-loop spread | ratio of fastest | |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.engine} | {r.bare_mean * 1e3:.3f} ms | "
              f"{r.vlab_mean * 1e3:.3f} ms | {r.ratio:.3f} | {r.ratio_low:.3f}–"
              f"{r.ratio_high:.3f} | {r.bare_spread:.1%} | {r.minimum_ratio:.3f} | "
              f"{verdict(r.ratio_low, r.ratio_high)} |" for r in rows]
    lines += ["", "This is a shared 2-core virtual machine whose latency drifts by several "
              "percent over tens of seconds (the bare-loop spreads above): repeatability is "
              "bounded by that noise floor, and the stability flags in each report say when a "
              "run was noisy."]
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
