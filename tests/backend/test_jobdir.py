"""The job directory's contract: its files, the result and the progress line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlab_backend.jobdir import (
    MAX_CURVE_EPOCHS,
    JobDir,
    JobSpec,
    PipelineResult,
    Progress,
    ProgressWatch,
    StepResult,
    checked_curves,
)


def spec() -> JobSpec:
    return JobSpec(benchmark_id="b1", repository="/repo", target="host-cpu",
                   target_uid="host-cpu-0", engine="onnxruntime", benchmark_type="TYPE1",
                   nb_inference=5, model_path="/m", model_filename="m.onnx", cpuset=[0])


def test_a_job_directory_round_trips_its_spec_reference_and_result(tmp_path: Path) -> None:
    job = JobDir(tmp_path / "jobs" / "b1")
    job.create(spec())
    assert job.benchmark_id == "b1" and job.read_spec() == spec()
    assert job.recorded_reference() is None and not job.has_result()
    job.record_reference("123:4.5")
    assert job.recorded_reference() == "123:4.5"
    result = PipelineResult(steps=[StepResult("support", 0, False, 0.01)], started=1.0)
    result.fail(0, "x")  # a failure always has a non-zero code
    job.write_result(result)
    assert job.read_result() == result and result.exit_code == 1
    job.create(spec())  # a second start begins afresh
    assert job.recorded_reference() is None and job.read_result() is None


def test_platform_errors_are_marked_in_the_users_error_log(tmp_path: Path) -> None:
    job = JobDir(tmp_path / "b1")
    job.log_error("the host was lost")
    job.log_error("again")
    assert job.output("error_log").read_text() == "[vlab] the host was lost\n[vlab] again\n"


def test_progress_lines_are_written_atomically_and_decoded(tmp_path: Path) -> None:
    job = JobDir(tmp_path)
    assert job.read_progress() is None
    job.write_progress(Progress("inference", 3, 20))
    assert job.progress_file.read_text() == "inference 3 20\n"
    assert job.read_progress() == Progress("inference", 3, 20)
    assert not list(tmp_path.glob("*.tmp"))
    assert Progress.decode("inference 3") is None and Progress.decode("a b c") is None


def test_a_trainings_progress_carries_its_curves_so_far(tmp_path: Path) -> None:
    job = JobDir(tmp_path)
    curves = {"epoch": [1, 2], "loss_train": [0.9, 0.5], "accuracy_test": [0.6, None]}
    job.write_progress(Progress("train", 2, 5, curves))
    assert job.read_progress() == Progress("train", 2, 5, curves)
    assert Progress("train", 2, 5, curves).event() == {"phase": "train", "done": 2,
                                                      "total": 5, "curves": curves}
    # The line the training engine writes itself (its own environment) reads the same.
    line = 'train 2 5 {"epoch":[1,2],"loss_train":[0.9,0.5],"accuracy_test":[0.6,null]}\n'
    assert Progress.decode(line) == Progress("train", 2, 5, curves)
    # Curves that are not well formed are left out; the count stays.
    [epoch] = Progress.decode('train 1 5 {"epoch":[1.0]}').event()["curves"]["epoch"]
    assert epoch == 1 and isinstance(epoch, int)
    for bad in ('{"epoch":[1],"loss_train":[1,2]}', '{"epoch":[null]}', '{"password":[1]}',
                '{"epoch":["x"]}', '{"epoch":[true]}', "[1,2]", "{not json",
                '{"epoch":[1e999]}', '{"epoch":[1],"loss_train":[NaN]}', '{"epoch":[1.5]}',
                '{"epoch":[1' + "0" * 400 + "]}", "[" * 100_000):
        assert Progress.decode(f"train 1 5 {bad}") == Progress("train", 1, 5), bad
    too_long = {"epoch": list(range(MAX_CURVE_EPOCHS + 1))}
    assert checked_curves(too_long) is None


@pytest.mark.parametrize("data", [
    "[]", "{}", '{"exit_code": "x"}', '{"exit_code": 1e999}', "[" * 100_000 + "]" * 100_000,
    '{"exit_code": 0, "steps": [{"step": "build"}]}', "not json", b"\xff",
])
def test_anything_but_a_pipeline_result_is_refused(data: str | bytes) -> None:
    with pytest.raises(ValueError):
        PipelineResult.parse(data)


def test_what_the_job_left_is_read_without_following_links_or_blocking(tmp_path: Path) -> None:
    """The job writes in its directory: a FIFO must not hang the server's event loop, and a
    link must not make the server read a file of its own."""
    job = JobDir(tmp_path / "job")
    job.create(spec())
    secret = tmp_path / "jwt.secret"
    secret.write_text("123:4.5")
    os.mkfifo(job.progress_file)
    job.reference_file.symlink_to(secret)
    job.result_file.symlink_to(secret)
    assert job.read_progress() is None  # at once: no reader waits on the FIFO
    assert job.recorded_reference() is None and job.read_result() is None


def test_outputs_behind_a_link_are_not_the_jobs_own(tmp_path: Path) -> None:
    job = JobDir(tmp_path / "job")
    job.create(spec())
    job.out.mkdir(parents=True)
    assert job.outputs_are_own()
    elsewhere = tmp_path / "other-job-out"
    elsewhere.mkdir()
    job.out.rmdir()
    job.out.symlink_to(elsewhere)
    assert not job.outputs_are_own()


def test_a_progress_watch_reads_the_line_when_it_changes(tmp_path: Path) -> None:
    job = JobDir(tmp_path)
    watch = ProgressWatch(job)
    assert watch.changed() is None  # no line yet
    job.write_progress(Progress("inference", 1, 10))
    assert watch.changed() == Progress("inference", 1, 10)
    assert watch.changed() is None  # the same line
    job.write_progress(Progress("train", 1, 5, {"epoch": [1], "loss_train": [0.5]}))
    assert watch.changed() == Progress("train", 1, 5, {"epoch": [1], "loss_train": [0.5]})
