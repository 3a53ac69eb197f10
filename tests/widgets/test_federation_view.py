"""The view of a federated-learning experiment: accuracy and loss per round (global, with the
initial model, and per client) equal to the results, client events marked on the plot,
participants per round, the rounds table, live status, Cancel; and the list of experiments.
Against a live backend with the scripted FL board of tests/api/test_federated.py."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.api.test_federated import BOARD, digits, softmax_regression
from tests.kernel.test_federation import board_server
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.federation import Federation, FLClient, failure, network_issue
from vlab_kernel.lab import Lab
from vlab_widgets import ExperimentsView, FederationView
from vlab_widgets.federation import event_marks, experiments_overview, round_figures

pytestmark = pytest.mark.slow


def wait_for(condition: Callable[[], object], timeout: float = 180) -> None:
    """Until `condition()` holds (a state, not a duration)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    live = board_server(tmp_path_factory.mktemp("fl-view"))
    lab = Lab(VlabClient(Connection(live.url, live.token)))
    yield lab
    lab.client.close()
    live.stop()


def clients(count: int, learning_rate: float = 0.05) -> list[FLClient]:
    x, y, xt, yt = digits()
    return [FLClient(train=(x[p], y[p]), test=(xt[t], yt[t]), learning_rate=learning_rate)
            for p, t in zip(np.array_split(np.arange(len(x)), count),
                            np.array_split(np.arange(len(xt)), count), strict=True)]


def trace(figure: Any, name: str) -> Any:
    found = [t for t in figure.data if t.name == name]
    assert found, f"no trace {name!r} in {[t.name for t in figure.data]}"
    return found[0]


def test_marks_and_figures_of_results() -> None:
    results = {"initial": {"accuracy": 0.1, "loss": 2.3}, "rounds_results": [
        {"round": 1, "participants": ["a", "b"], "aggregated_clients": ["a", "b"],
         "dropped": [], "global_accuracy": 0.5, "global_loss": 1.0,
         "clients": {"a": {"status": "trained", "eval_accuracy": 0.4, "events": []},
                     "b": {"status": "trained", "eval_accuracy": 0.6, "events": [
                         {"type": "updated_status", "effect": "battery at 30.0 %"}]}}},
        {"round": 2, "participants": ["a"], "aggregated_clients": [],
         "dropped": [{"client_id": "a", "reason": "training failed: boom"},
                     {"client_id": "b", "reason": "battery at 0.0 % is below its 10 % minimum"}],
         "global_accuracy": None, "global_loss": None,
         "clients": {"a": {"status": "dropped", "events": []},
                     "b": {"status": "absent", "events": [
                         {"type": "updated_status", "effect": "unavailable: battery low"}]}}}]}
    marks = event_marks(results)
    assert marks[["round", "client", "kind"]].values.tolist() == [
        [1, "b", "battery"], [2, "a", "dropped"], [2, "b", "battery"]]
    assert "training failed: boom" in marks.loc[1, "text"]
    accuracy, loss, participants = round_figures(results)
    glob = trace(accuracy, "global")
    assert list(glob.x) == [0, 1, 2] and list(glob.y) == [10.0, 50.0, None]
    assert list(trace(accuracy, "b").y) == [60.0, None]
    assert list(trace(accuracy, "event: battery").x) == [1, 2]
    assert list(trace(loss, "global").y) == [2.3, 1.0, None]
    assert list(trace(participants, "aggregated").y) == [2, 0]
    assert list(trace(participants, "dropped").y) == [0, 2]


def test_an_experiment_with_events_is_plotted_as_its_results(lab: Lab, tmp_path: Path) -> None:
    _, _, xt, yt = digits()
    fl = lab.federate(softmax_regression(tmp_path / "digits.onnx"), clients(3), rounds=3,
                      target=BOARD, server_dataset=(xt, yt),
                      events={1: [failure(round=2, description="unplugged")],
                              2: [network_issue(round=3, fail_fast=True)]})
    view = FederationView(lab, fl)  # live from the start: it follows the experiment's events
    try:
        wait_for(view.loaded.is_set)
        results = fl.results()
        assert results["status"] == "success" and view.results["status"] == "success"
        rounds = results["rounds_results"]
        glob = trace(view.accuracy_plot, "global")
        assert list(glob.x) == [0, 1, 2, 3]
        assert list(glob.y) == pytest.approx(
            [results["initial"]["accuracy"] * 100] + [r["global_accuracy"] * 100
                                                     for r in rounds])
        assert list(trace(view.loss_plot, "global").y)[1:] == pytest.approx(
            [r["global_loss"] for r in rounds])
        client_0 = trace(view.accuracy_plot, "client_0")
        assert list(client_0.y) == pytest.approx(
            [r["clients"]["client_0"]["eval_accuracy"] * 100 for r in rounds])
        failed = trace(view.accuracy_plot, "event: failure")
        assert list(failed.x) == [2] and "client_1" in failed.text[0] and \
            "unplugged" in failed.text[0]
        assert list(failed.y) == pytest.approx([rounds[1]["global_accuracy"] * 100])
        unreachable = trace(view.accuracy_plot, "event: network issue")
        assert list(unreachable.x) == [3] and "client_2" in unreachable.text[0]
        assert list(trace(view.participants_plot, "aggregated").y) == [3, 2, 2]
        assert list(trace(view.participants_plot, "dropped").y) == [0, 1, 1]
        assert "client_1: failure: unplugged" in view.table.value
        assert "vlab-status-success" in view.status.value and "3/3 rounds" in view.status.value
        assert view.cancel.layout.display == "none" and "Ended after round 3" in \
            view.reason.value
    finally:
        view.close()


def test_cancel_stops_a_running_experiment(lab: Lab, tmp_path: Path) -> None:
    fl = lab.federate(softmax_regression(tmp_path / "digits.onnx"),
                      clients(2, learning_rate=0.001), rounds=200, target=BOARD)
    view = FederationView(lab, fl.id)
    try:
        wait_for(lambda: view.results.get("status") == "running" or view.finished)
        assert not view.finished and view.cancel.layout.display is None
        view.cancel.click()
        wait_for(lambda: view.finished)
        assert view.results["status"] == "canceled" and fl.status == "canceled"
        assert "Why it was canceled" in view.reason.value
        assert view.cancel.layout.display == "none"
    finally:
        view.close()


def test_the_list_of_experiments_opens_the_picked_one(lab: Lab, tmp_path: Path) -> None:
    fl = lab.federate(softmax_regression(tmp_path / "digits.onnx"), clients(2), rounds=2,
                      target=BOARD, wait=True)
    overview = experiments_overview(lab).set_index("id")
    assert overview.loc[fl.id, "status"] == "success"
    assert overview.loc[fl.id, "rounds done"] == "2/2"
    best = Federation(lab, fl.id).rounds["global_accuracy"].max() * 100
    assert float(overview.loc[fl.id, "best global accuracy (%)"]) == pytest.approx(best,
                                                                                  rel=1e-2)
    assert overview.loc[fl.id, "objective met"] == "no"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", overview.loc[fl.id, "created (UTC)"])
    board = ExperimentsView(lab, live=False)
    try:
        assert board.picker.value == fl.id  # the newest
        assert board.view is not None and board.view.experiment_id == fl.id
        assert fl.id in board.table.value
        older = next(value for _label, value in board.picker.options if value != fl.id)
        board.picker.value = older
        assert board.view.experiment_id == older
    finally:
        board.close()
