"""The page of a training run: loss and accuracy per epoch (train and test) as the report has
them, the final figures, the trained-model hint, live status and the failure reason; against a
live backend with the scripted training board of tests/api/test_federated.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.api.test_federated import BOARD, digits, softmax_regression
from tests.kernel.test_federation import BROKEN, BROKEN_REASON, board_server
from tests.server import LiveServer
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.lab import CURVES, Lab, training_curves
from vlab_widgets import TrainingView
from vlab_widgets.training import (
    curve_figures,
    curves_from_log,
    curves_from_progress,
    download_hint,
    final_figures,
)

REPORT = {"loss_train": {"values": [1.0, 0.5, 0.25]}, "loss_test": {"values": [1.1, 0.6, 0.4]},
          "accuracy_train": {"values": [0.5, 0.8, 0.9]},
          "accuracy_test": {"values": [0.45, 0.85, 0.8]},
          "epochs": 3, "train_samples": 1437, "training_time": 1.23456,
          "peak_memory_bytes": 50 * 2**20}


def wait_for(condition: Callable[[], object], timeout: float = 120) -> None:
    """Until `condition()` holds (a state, not a duration)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    live = board_server(tmp_path_factory.mktemp("training-view"))
    lab = Lab(VlabClient(Connection(live.url, live.token)))
    yield lab
    lab.client.close()
    live.stop()


def traces(figure: object) -> dict[str, list[float]]:
    return {trace.name: list(trace.y) for trace in figure.data}  # type: ignore[attr-defined]


def test_curves_figures_and_hint() -> None:
    curves = training_curves(REPORT)
    loss, accuracy = curve_figures(curves)
    assert traces(loss) == {"train loss": [1.0, 0.5, 0.25], "test loss": [1.1, 0.6, 0.4]}
    assert traces(accuracy)["test accuracy"] == pytest.approx([45, 85, 80])  # in %
    assert list(loss.data[0].x) == [1, 2, 3]
    figures = final_figures(REPORT, curves).set_index("figure")
    assert figures.loc["final test accuracy"].tolist() == ["80", "%"]
    assert figures.loc["best test accuracy"].tolist() == ["85 (epoch 2)", "%"]
    assert figures.loc["training time"].tolist() == ["1.23", "s"]
    assert figures.loc["peak memory"].tolist() == ["50", "MiB"]
    assert figures.loc["training samples", "value"] == "1,437"
    assert "run.trained_model(&quot;out/&quot;)" in download_hint("abc") or \
        'run.trained_model("out/")' in download_hint("abc")
    assert "out/abc_model.onnx" in download_hint("abc")
    # Regression: no accuracy curve, no accuracy trace.
    no_accuracy = training_curves({"loss_train": {"values": [2.0, 1.0]}})
    assert curve_figures(no_accuracy)[1].data == ()


def test_curves_from_the_engine_log() -> None:
    log = ("support done\nepoch 1/2: loss train 1.5000 test 1.6000, accuracy train 0.5000 "
           "test 0.4000 (0.120 s)\nepoch 2/2: loss train 0.5000 test 0.7000 (0.110 s)\n")
    curves = curves_from_log(log)
    assert list(curves.index) == [1, 2] and curves.index.name == "epoch"
    assert curves.loc[1].tolist() == [1.5, 1.6, 0.5, 0.4]
    assert curves.loc[2, "loss_test"] == 0.7 and pd.isna(curves.loc[2, "accuracy_test"])
    assert curves_from_log("").empty


def test_curves_from_a_progress_event() -> None:
    curves = curves_from_progress({"epoch": [3, 4], "loss_train": [0.5, 0.4],
                                   "accuracy_test": [0.8, None], "epoch_time_s": [0.1, 0.2]})
    assert list(curves.index) == [3, 4] and curves.index.name == "epoch"
    assert list(curves.columns) == [*CURVES, "epoch_time_s"]
    assert curves.loc[4, "loss_train"] == 0.4 and curves.loc[3, "accuracy_test"] == 0.8
    assert pd.isna(curves.loc[4, "accuracy_test"]) and curves["loss_test"].isna().all()
    assert curves_from_progress(None).empty and curves_from_progress({"epoch": []}).empty


@pytest.mark.slow
def test_a_training_shows_its_curves_figures_and_model(lab: Lab, tmp_path: Path) -> None:
    x, y, xt, yt = digits()
    run = lab.train(softmax_regression(tmp_path / "digits.onnx"), BOARD, "onnxruntime",
                    train=(x, y), test=(xt, yt), epochs=3, batch_size=32, learning_rate=0.05)
    view = TrainingView(lab, run)  # live from the start: the view follows its events
    try:
        wait_for(view.loaded.is_set)
        assert view.info["status"] == "success"
        report = run.report
        shown = traces(view.loss_plot)
        assert shown["train loss"] == pytest.approx(report["loss_train"]["values"])
        assert shown["test loss"] == pytest.approx(report["loss_test"]["values"])
        accuracy = traces(view.accuracy_plot)
        assert accuracy["test accuracy"] == pytest.approx(
            [v * 100 for v in report["accuracy_test"]["values"]])
        assert list(view.loss_plot.data[0].x) == [1, 2, 3]
        assert "final test accuracy" in view.figures.value
        assert f"{run.id}_model.onnx" in view.hint.value
        assert "vlab-status-success" in view.status.value and view.reason.value == ""
        assert view.cancel.layout.display == "none"
        assert view.progress.value == view.progress.max
    finally:
        view.close()


@pytest.mark.slow
def test_a_failed_training_says_why(lab: Lab, tmp_path: Path) -> None:
    x, y, xt, yt = digits()
    run = lab.train(softmax_regression(tmp_path / "digits.onnx"), BROKEN, "onnxruntime",
                    train=(x, y), test=(xt, yt), epochs=1)
    run.wait(progress=False, raise_on_failure=False)
    view = TrainingView(lab, run.id, live=False)
    try:
        assert view.loaded.is_set() and view.info["status"] == "failed"
        assert "Why it failed" in view.reason.value and BROKEN_REASON in view.reason.value
        assert view.loss_plot.data == () and view.hint.value == ""
        assert "vlab-status-failed" in view.status.value
    finally:
        view.close()


@pytest.mark.slow
def test_a_host_cpu_training_live(fresh_server: LiveServer, small_onnx: Path,
                                  tmp_path: Path) -> None:
    """onnxruntime-training on this machine: the view follows the run from before it starts,
    plots the curves of the epochs done while it runs (its progress events carry them), and
    ends with the report's curves, epoch times and figures. On a server of its own: every
    instance a training could take is known, and held busy until the view follows."""
    from tests.models import digits_mlp, digits_split

    lab = Lab(VlabClient(Connection(fresh_server.url, fresh_server.token)))
    x, y, xt, yt = digits_split()
    instances = lab.targets().query("target == 'host-cpu'")
    assert all("synthetic" in engines for engines in instances["engines"])
    blockers = [lab.benchmark(small_onnx, "host-cpu", "synthetic", runs=5,
                              params={"min_time_s": 600}) for _ in range(len(instances))]
    wait_for(lambda: all(blocker.status == "running" for blocker in blockers))
    run = lab.train(digits_mlp(tmp_path / "mlp.onnx"), "host-cpu", "onnxruntime",
                    train=(x, y), test=(xt, yt), epochs=5, learning_rate=0.01)
    view = TrainingView(lab, run)
    assert view.info["status"] == "pending", view.info
    plotted: list[tuple[str, list[int]]] = []
    plot = view._plot

    def recording() -> None:
        plotted.append((str(view.info.get("status")), list(view.curves.index)))
        plot()

    view._plot = recording  # type: ignore[method-assign]
    try:
        wait_for(view._follower.connected.is_set)
        for blocker in blockers:
            blocker.cancel()
        wait_for(view.loaded.is_set)
        assert view.info["status"] == "success", view.reason.value
        live = [epochs for status, epochs in plotted if status == "running"]
        assert live and all(epochs == list(range(1, len(epochs) + 1)) for epochs in live)
        assert all(0 < len(epochs) <= 5 for epochs in live)
        assert plotted[-1] == ("success", [1, 2, 3, 4, 5])
        report = run.report
        assert list(view.curves["loss_train"]) == pytest.approx(report["loss_train"]["values"])
        assert view.progress.max == 5 and view.progress.value == 5  # epochs
        assert list(view.accuracy_plot.data[1].x) == [1, 2, 3, 4, 5]
        assert list(view.curves["epoch_time_s"].notna()) == [True] * 5
        assert "training time" in view.figures.value and "peak memory" in view.figures.value
    finally:
        view.close()
        for blocker in blockers:
            blocker.cancel()
        lab.client.close()
