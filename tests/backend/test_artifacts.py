"""Collecting a finished job: outcome, artifacts and the flat metrics."""

from __future__ import annotations

import json
from pathlib import Path

from vlab_backend.artifacts import collect
from vlab_backend.jobdir import JobDir, PipelineResult


def finished_job(root: Path, report: str) -> JobDir:
    job = JobDir(root)
    job.out.mkdir(parents=True)
    job.output("report").write_text(report)
    job.output("user_log").write_text("done\n")
    job.steps_dir.mkdir()
    job.step_log("manager").write_text("manager output\n")
    job.write_result(PipelineResult())
    return job


def test_artifacts_move_and_a_second_collection_finds_them(tmp_path: Path) -> None:
    job = finished_job(tmp_path / "job", json.dumps(
        {"inference_latency": {"mean": 0.002}, "nb_inference": 10}))
    destination = tmp_path / "artifacts"
    first = collect(job, destination, "TYPE1")
    assert first.status == "success" and first.metrics["latency_mean_s"] == 0.002
    assert not job.output("report").exists()
    assert "manager output" in (destination / "pipeline.log").read_text()
    # A crash after the move but before the database knew: the next collection agrees.
    again = collect(job, destination, "TYPE1")
    assert again.status == "success" and set(again.artifacts) == set(first.artifacts)
    assert again.metrics == first.metrics


def test_a_target_report_with_nan_keeps_its_metrics(tmp_path: Path) -> None:
    job = finished_job(tmp_path / "job", '{"inference_latency": {"mean": 0.004, '
                                             '"std": NaN}, "nb_inference": 3}')
    outcome = collect(job, tmp_path / "artifacts", "TYPE1")
    assert outcome.status == "success"
    assert outcome.metrics["latency_mean_s"] == 0.004 and outcome.metrics["nb_inference"] == 3
