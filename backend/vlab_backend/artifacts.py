"""Collecting a finished job: its outcome, its artifacts and the flat metrics kept in the DB."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from vlab_backend.jobdir import (
    ERROR_PREFIX,
    OUTPUT_FILES,
    STEPS,
    JobDir,
    PipelineResult,
    is_regular_file,
)
from vlab_backend.store.schema import Status

# Artifact name -> its file in the artifact directory (as the target wrote it).
ARTIFACT_FILES = OUTPUT_FILES
PIPELINE_LOG = "pipeline.log"
PIPELINE_RESULT = "pipeline.json"
# The longest failure reason taken from an error.log, in characters, and how much of the
# log's end is read for it (a target may write gigabytes there).
REASON_LENGTH = 500
REASON_TAIL_BYTES = 64 * 1024
# error.log lines that say where a failure happened, not what it was: Python's traceback
# frames (header, `File ...`, indented source).
_NOT_A_REASON = re.compile(r"Traceback \(most recent call last\):|File \".*|\s.*")
# The harness's label in front of its reason.
_LABEL = re.compile(r"^error:\s*", re.IGNORECASE)


@dataclass
class Outcome:
    status: Status
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


def collect(job: JobDir, destination: Path, benchmark_type: str, canceled: bool = False,
            interrupted: str = "") -> Outcome:
    """Move the job's outputs to `destination` and decide its terminal status."""
    destination.mkdir(parents=True, exist_ok=True)
    present = []
    # Only regular files inside the job's own output folder: a target could leave links to
    # the server's files (or another job's) for the server to move and serve.
    own = job.outputs_are_own()
    for name, filename in ARTIFACT_FILES.items():
        source = job.output(name)
        if own and is_regular_file(source):
            _move(source, destination / filename)
            present.append(name)
        elif (destination / filename).is_file():
            present.append(name)  # moved by a collection that a crash interrupted
    if benchmark_type == "TYPE3" and own:
        for trained in sorted(job.out.glob("model.*")):
            if is_regular_file(trained):
                _move(trained, destination / trained.name)
                present.append("trained_model")
                break
    _write_pipeline_log(job, destination)

    result = job.read_result()
    if result is not None:  # kept for administrators, with the step timings
        (destination / PIPELINE_RESULT).write_text(result.to_json())
    metrics: dict[str, Any] = {}
    if "report" in present:
        metrics = _report_metrics(destination / ARTIFACT_FILES["report"])
    elif "report_odt" in present:
        metrics = _report_metrics(destination / ARTIFACT_FILES["report_odt"], odt_metrics)
    if canceled:
        return Outcome(Status.CANCELED, "canceled by the user", present, metrics)
    if result is None or not result.succeeded:
        reason = failure_reason(destination / ARTIFACT_FILES["error_log"])
        return Outcome(Status.FAILED, _failure_message(result, reason, interrupted), present,
                       metrics)
    expected = "report_odt" if benchmark_type == "TYPE3" else "report"
    if expected not in present:
        return Outcome(Status.FAILED, f"the target produced no {ARTIFACT_FILES[expected]}",
                       present, metrics)
    if benchmark_type == "TYPE2" and "binary" not in present:
        return Outcome(Status.FAILED, "the target produced no raw_output.bin", present, metrics)
    return Outcome(Status.SUCCESS, "", present, metrics)


def failure_reason(error_log: Path) -> str:
    """The target's or engine's own words for a failure: the last meaningful line of the job's
    error.log that the platform did not write (its `[vlab]` lines come after them), without a
    leading `error:` label. Empty when there is none."""
    try:
        with error_log.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - REASON_TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    for line in reversed(text.splitlines()):
        if not line.strip() or line.startswith(ERROR_PREFIX) or _NOT_A_REASON.fullmatch(line):
            continue
        return _LABEL.sub("", line.strip())[:REASON_LENGTH]
    return ""


def _failure_message(result: PipelineResult | None, reason: str, interrupted: str) -> str:
    """The reason in words first, then what the platform saw (a step's exit code, ...)."""
    if result is None:
        context = interrupted or "the job ended without a result"
    else:
        context = result.message
        if result.steps and result.steps[-1].timed_out:
            return context  # the time limit is the reason; the step's last words are not
    return f"{reason} ({context})" if reason else context


def odt_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a results table shows of a training report (report_odt.json): the last
    epoch's losses and accuracies, the best test accuracy, time, memory and model."""
    metrics: dict[str, Any] = {}
    for key in ("loss_train", "loss_test", "accuracy_train", "accuracy_test"):
        values = (report.get(key) or {}).get("values") or []
        metrics[f"{key}_final"] = values[-1] if values else None
    metrics["accuracy_test_max"] = (report.get("accuracy_test") or {}).get("max")
    metrics["training_time_s"] = report.get("training_time")
    for key in ("epochs", "batch_size", "learning_rate", "peak_memory_bytes", "load_cpu",
                "model_size", "nb_parameters_model", "engine_version", "temperature"):
        metrics[key] = report.get(key)
    return metrics


def _report_metrics(path: Path,
                    flatten: Callable[[dict[str, Any]], dict[str, Any]] = flat_metrics
                    ) -> dict[str, Any]:
    data = path.read_bytes()
    try:
        report = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # a target's own report may hold NaN or Infinity, which only `json` reads
            report = json.loads(data)
        except ValueError:
            return {}
    try:
        return flatten(report) if isinstance(report, dict) else {}
    except AttributeError:  # a section of the wrong shape
        return {}


def _move(source: Path, target: Path) -> None:
    """A rename where the job and artifact directories share a file system (the usual case:
    both live in the data directory), a copy otherwise."""
    try:
        os.replace(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_pipeline_log(job: JobDir, destination: Path) -> None:
    """The step logs, concatenated, for administrators (never served to users)."""
    with (destination / PIPELINE_LOG).open("w") as log:
        for step, script in STEPS:
            path = job.step_log(step)
            if is_regular_file(path):
                log.write(f"===== {script}\n")
                log.write(path.read_text(errors="replace"))
