"""The benchmark progress bar: count, ETA, a full bar at the end, nothing for finished runs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from tests.server import LiveServer
from vlab_kernel import connect
from vlab_kernel.progress import ProgressPrinter, epoch_figures


def status(state: str, phase: str = "", done: int = 0, total: int = 0) -> dict[str, object]:
    return {"event": "status", "id": "b-1", "status": state,
            "progress": {"phase": phase, "done": done, "total": total}}


def progress(done: int, total: int = 300) -> dict[str, object]:
    return {"event": "progress", "id": "b-1", "status": "running",
            "progress": {"phase": "inference", "done": done, "total": total}}


def follow(*events: dict[str, object]) -> str:
    out = io.StringIO()
    printer = ProgressPrinter("b-1", file=out, leave=True)
    for event in events:
        printer.update(event)
    printer.close()
    return out.getvalue()


def last_line(text: str) -> str:
    return re.split(r"[\r\n]+", text.strip())[-1]


def test_the_bar_shows_the_count_and_the_time_left() -> None:
    text = follow(status("running", "warmup"), progress(0), progress(150))
    assert "150/300" in text
    assert re.search(r"\[\d\d:\d\d<(\d\d:\d\d|\?)", text)  # elapsed<remaining


def test_a_success_ends_full_with_the_whole_count() -> None:
    text = follow(status("running", "warmup"), progress(0), progress(287),
                  status("success", "done", 300, 300))
    assert re.match(r"b-1 done: 100%\|.*\| 300/300", last_line(text))
    assert "96%" not in last_line(text)


def test_a_training_shows_its_epochs_and_the_last_epochs_figures() -> None:
    curves = {"epoch": [1, 2], "loss_train": [0.9, 0.4123], "loss_test": [1.0, 0.45],
              "accuracy_test": [0.5, 0.864]}
    epoch = {"event": "progress", "id": "b-1", "status": "running",
             "progress": {"phase": "train", "done": 2, "total": 5, "curves": curves}}
    text = follow(status("running", "train", 0, 5), epoch)
    assert re.search(r"2/5 \[.*epoch.*loss 0.412 \(test 0.45\), test accuracy 86.4 %\]",
                     last_line(text)), last_line(text)
    assert epoch_figures(None) == "" and epoch_figures({"epoch": []}) == ""
    assert epoch_figures({"epoch": [1], "loss_train": [None]}) == ""


def test_a_fast_run_seen_only_at_its_end_shows_its_count() -> None:
    text = follow(status("pending"), status("success", "done", 20, 20))
    assert re.match(r"b-1 done: 100%\|.*\| 20/20", last_line(text))


def test_a_run_found_half_way_has_no_absurd_first_rate() -> None:
    """The count found is the baseline: no rate before the bar has seen one advance."""
    text = follow(status("running", "inference", 200, 300))
    assert last_line(text).endswith("200/300 [00:00<?, ?inference/s]")


def test_before_the_timed_phase_there_is_no_count() -> None:
    text = follow(status("pending"), status("running", "warmup"))
    assert last_line(text).startswith("b-1 warmup [") and "0/1" not in text


def test_a_failure_keeps_the_count_and_says_so() -> None:
    text = follow(progress(0), progress(12), status("failed", "inference", 12, 300))
    assert last_line(text).startswith("b-1 failed:") and "12/300" in last_line(text)


def test_a_run_already_finished_draws_no_bar() -> None:
    assert follow(status("success", "done", 300, 300)) == ""
    assert follow(status("failed")) == ""


@pytest.mark.slow
def test_waiting_on_a_finished_benchmark_draws_nothing(server: LiveServer, small_onnx: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    lab = connect(server.url, server.token)
    bench = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=5)
    bench.wait()
    assert re.search(r"done: 100%.*5/5", capsys.readouterr().err)
    lab.get(bench.id).wait()
    assert capsys.readouterr().err == ""
