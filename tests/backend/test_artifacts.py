"""Collecting a finished job: outcome, artifacts and the flat metrics."""

from __future__ import annotations

import json
from pathlib import Path

from vlab_backend.artifacts import collect, failure_reason
from vlab_backend.jobdir import JobDir, PipelineResult, StepResult


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


def failed_job(root: Path, error_log: str, result: PipelineResult | None) -> JobDir:
    job = JobDir(root)
    job.out.mkdir(parents=True)
    job.output("error_log").write_text(error_log)
    if result is not None:
        job.write_result(result)
    return job


def failed_at_manager(code: int = 2, timed_out: bool = False) -> PipelineResult:
    result = PipelineResult(steps=[StepResult("manager", code, timed_out, 1.0)])
    result.fail(code, "AI_Manager/manager.sh failed with exit code 2")
    return result


ENGINE_LINE = ("onnxruntime could not load net.onnx: Load model from net.onnx failed:Fatal "
               "error: com.example:FancyCustomOp(-1) is not a registered function/op")


def test_a_failure_says_why_in_the_engines_words(tmp_path: Path) -> None:
    job = failed_job(tmp_path / "job", f"starting\nerror: {ENGINE_LINE}\n\n"
                     "[vlab] AI_Manager/manager.sh failed with exit code 2\n",
                     failed_at_manager())
    outcome = collect(job, tmp_path / "artifacts", "TYPE1")
    assert outcome.status == "failed"
    assert outcome.message == f"{ENGINE_LINE} (AI_Manager/manager.sh failed with exit code 2)"
    assert outcome.artifacts == ["error_log"]


def test_a_traceback_gives_its_exception_line(tmp_path: Path) -> None:
    error_log = ('Traceback (most recent call last):\n  File "run.py", line 3, in <module>\n'
                 "    main()\nRuntimeError: the NPU driver is not loaded\n"
                 '  File "x.py", line 1\n')
    assert failure_reason(failed_job(tmp_path / "job", error_log, None).output("error_log")) \
        == "RuntimeError: the NPU driver is not loaded"


def test_without_words_from_the_target_the_platform_message_stays(tmp_path: Path) -> None:
    job = failed_job(tmp_path / "job", "[vlab] AI_Manager/manager.sh failed with exit code 2\n",
                     failed_at_manager())
    assert collect(job, tmp_path / "a", "TYPE1").message == \
        "AI_Manager/manager.sh failed with exit code 2"
    # A time-out is its own reason; a job without a result keeps the interruption as context.
    timed_out = failed_job(tmp_path / "t", "still converting\n", failed_at_manager(124, True))
    assert collect(timed_out, tmp_path / "b", "TYPE1").message == \
        "AI_Manager/manager.sh failed with exit code 2"
    vanished = failed_job(tmp_path / "v", "out of memory\n", None)
    assert collect(vanished, tmp_path / "c", "TYPE1", interrupted="the job's process ended") \
        .message == "out of memory (the job's process ended)"


def test_a_huge_error_log_gives_the_reason_at_its_end(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    log.write_text("x" * 10**6 + "\nthe real reason\n[vlab] AI_Build/build.sh failed\n")
    assert failure_reason(log) == "the real reason"


def test_links_the_target_leaves_are_not_collected(tmp_path: Path) -> None:
    """A target that links its outputs to the server's files (or another job's) gets nothing
    collected through them: the server would otherwise move and serve what they name."""
    secret = tmp_path / "jwt.secret"
    secret.write_text("TOPSECRET")
    job = finished_job(tmp_path / "job", json.dumps({"inference_latency": {"mean": 0.002}}))
    job.output("user_log").unlink()
    job.output("user_log").symlink_to(secret)
    job.step_log("manager").unlink()
    job.step_log("manager").symlink_to(secret)
    destination = tmp_path / "artifacts"
    outcome = collect(job, destination, "TYPE1")
    assert "user_log" not in outcome.artifacts and not (destination / "user.log").exists()
    assert "TOPSECRET" not in (destination / "pipeline.log").read_text()
    assert secret.read_text() == "TOPSECRET"
