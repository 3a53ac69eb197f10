"""Collecting a finished job: its outcome, its artifacts and the flat metrics kept in the DB."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from vlab_backend.pipeline.job import OUT_DIR, RESULT_FILE, STEPS

# Artifact name -> file name under AI_Manager/out.
ARTIFACT_FILES = {
    "report": "report.json",
    "report_odt": "report_odt.json",
    "user_log": "user.log",
    "error_log": "error.log",
    "binary": "raw_output.bin",
    "profile": "profile.json",
}
PIPELINE_LOG = "pipeline.log"


@dataclass
class Outcome:
    status: str
    message: str
    artifacts: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def flat_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a results table shows, one level deep, units in the names."""
    latency = report.get("inference_latency") or {}
    metrics: dict[str, Any] = {f"latency_{k}_s": latency.get(k)
                               for k in ("mean", "std", "min", "max", "median", "p90", "p95",
                                         "p99")}
    for key in ("nb_inference", "warmup_runs", "init_time_s", "first_inference_s",
                "peak_memory_bytes", "memory_delta_bytes", "model_size", "nb_parameters_model",
                "flops", "threads", "engine_version", "load_cpu", "temperature"):
        metrics[key] = report.get(key)
    mean = latency.get("mean")
    metrics["throughput_ips"] = (1.0 / mean) if mean else None
    stability = report.get("stability") or {}
    metrics["latency_cv"] = stability.get("cv")
    metrics["unstable"] = stability.get("unstable")
    for name in ("ci95_mean", "ci95_median"):
        interval = latency.get(name) or [None, None]
        metrics[f"latency_{name}_low_s"], metrics[f"latency_{name}_high_s"] = interval
    return metrics


def collect(job_dir: Path, destination: Path, benchmark_type: str, canceled: bool = False,
            interrupted: str = "") -> Outcome:
    """Move the job's outputs to `destination` and decide its terminal status."""
    destination.mkdir(parents=True, exist_ok=True)
    out = job_dir / "work" / OUT_DIR
    present = []
    for name, filename in ARTIFACT_FILES.items():
        source = out / filename
        if source.is_file():
            _move(source, destination / filename)
            present.append(name)
        elif (destination / filename).is_file():
            present.append(name)  # moved by a collection that a crash interrupted
    if benchmark_type == "TYPE3":
        for trained in sorted(out.glob("model.*")):
            _move(trained, destination / trained.name)
            present.append("trained_model")
            break
    _write_pipeline_log(job_dir, destination)

    result_path = job_dir / RESULT_FILE
    result = json.loads(result_path.read_text()) if result_path.is_file() else None
    if result is not None:  # kept for administrators, with the step timings
        shutil.copyfile(result_path, destination / RESULT_FILE)
    metrics: dict[str, Any] = {}
    if "report" in present:
        metrics = _report_metrics(destination / "report.json")
    if canceled:
        return Outcome("canceled", "canceled by the user", present, metrics)
    if result is None:
        return Outcome("failed", interrupted or "the job ended without a result", present,
                       metrics)
    if result["exit_code"] != 0:
        return Outcome("failed", result["message"], present, metrics)
    expected = "report_odt" if benchmark_type == "TYPE3" else "report"
    if expected not in present:
        return Outcome("failed", f"the target produced no {ARTIFACT_FILES[expected]}", present,
                       metrics)
    if benchmark_type == "TYPE2" and "binary" not in present:
        return Outcome("failed", "the target produced no raw_output.bin", present, metrics)
    return Outcome("success", "", present, metrics)


def _report_metrics(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    try:
        report = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # a target's own report may hold NaN or Infinity, which only `json` reads
            report = json.loads(data)
        except ValueError:
            return {}
    try:
        return flat_metrics(report) if isinstance(report, dict) else {}
    except AttributeError:  # a section of the wrong shape
        return {}


def _move(source: Path, target: Path) -> None:
    """A rename where the job and artifact directories share a file system (the usual case:
    both live in the data directory), a copy otherwise."""
    try:
        os.replace(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_pipeline_log(job_dir: Path, destination: Path) -> None:
    """The step logs, concatenated, for administrators (never served to users)."""
    with (destination / PIPELINE_LOG).open("w") as log:
        for step, script in STEPS:
            path = job_dir / "steps" / f"{step}.log"
            if path.is_file():
                log.write(f"===== {script}\n")
                log.write(path.read_text(errors="replace"))
