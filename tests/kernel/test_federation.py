"""`lab.federate`: NumPy arrays in, a Federation out, with its rounds, its clients, the global
model and the history; on the scripted FL board of tests/api/test_federated.py (softmax
regression trained with NumPy on the target)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from tests.api.test_federated import BOARD, board_repository, digits, softmax_regression
from tests.server import LiveServer
from vlab_kernel import BadRequest, BenchmarkFailed, NotReady
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.federation import (
    Federation,
    FLClient,
    battery,
    build_config,
    clients_table,
    events_by_round,
    failure,
    network_issue,
    objective_met,
    rounds_table,
    target_accuracy,
)
from vlab_kernel.lab import Lab

pytestmark = pytest.mark.slow


BROKEN = "broken-board"
BROKEN_REASON = "the board lost power during training"


def board_server(root: Path) -> LiveServer:
    """A lab with three instances of the scripted FL-capable board, and a board whose every
    job fails with `BROKEN_REASON`."""
    repo = str(board_repository(root))
    broken = root / BROKEN
    for step in ("AI_Support/support.sh", "AI_Build/build.sh", "AI_Deploy/deploy.sh",
                 "AI_Manager/manager.sh"):
        body = f'error_log_print "{BROKEN_REASON}"\nexit 3' if "Manager" in step else "true"
        (broken / step).parent.mkdir(parents=True, exist_ok=True)
        (broken / step).write_text(f'source "$FUNCTIONS_PATH/exit_functions.sh"\n{body}\n')
    types = ["TYPE1", "TYPE2", "TYPE3"]
    offer = {"onnxruntime": {"repository": repo, "supported_types": types}}
    targets = root / "targets.json"
    targets.write_text(json.dumps({
        BOARD: [{"target_uid": f"{BOARD}-{i}", "engines": offer} for i in range(3)],
        BROKEN: [{"target_uid": f"{BROKEN}-0", "engines": {"onnxruntime": {
            "repository": str(broken), "supported_types": types}}}]}))
    return LiveServer(root / "data", ["--targets", str(targets), "--no-warm-workers"]).start()


@pytest.fixture(scope="module")
def fl_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    live = board_server(tmp_path_factory.mktemp("fl-kernel"))
    lab = Lab(VlabClient(Connection(live.url, live.token)))
    yield lab
    lab.client.close()
    live.stop()


def split_clients(count: int, learning_rate: float) -> list[FLClient]:
    """The digits split between `count` clients (one-hot targets: what the board takes)."""
    x, y, xt, yt = digits()
    return [FLClient(train=(x[part], y[part]), test=(xt[test], yt[test]),
                     learning_rate=learning_rate)
            for part, test in zip(np.array_split(np.arange(len(x)), count),
                                  np.array_split(np.arange(len(xt)), count), strict=True)]


def test_events_by_round_takes_helpers_and_mappings() -> None:
    assert events_by_round([failure(2), network_issue(3, fail_fast=True)]) == {
        "2": [{"type": "failure", "description": ""}],
        "3": [{"type": "network_issue", "fail_fast": True}]}
    assert events_by_round({1: [{"type": "failure"}]}) == {"1": [{"type": "failure"}]}
    profile = events_by_round([battery([1, 2], initial_pct=30, discharge_pct_per_round=15,
                                       min_pct=10)])
    assert sorted(profile) == ["1", "2"]
    assert profile["1"][0]["status_update"]["initial_level_pct"] == 30
    assert "initial_level_pct" not in profile["2"][0]["status_update"]
    with pytest.raises(ValueError, match="has no round"):
        events_by_round([{"type": "failure"}])


def test_tables_of_results() -> None:
    results = {"status": "success", "stop": {"type": "time_to_acc"}, "rounds_results": [
        {"round": 1, "participants": ["client_0", "client_1"], "aggregated_clients": ["client_0"],
         "dropped": [{"client_id": "client_1", "reason": "network issue: unreachable",
                      "stage": "training"}],
         "fit_metrics": {"train_loss": 1.5, "train_accuracy": 0.5}, "global_accuracy": 0.6,
         "global_loss": 1.2, "time_s": 3.0, "elapsed_s": 3.0, "wall_time_s": 4.0, "note": "",
         "clients": {"client_0": {"status": "trained", "num_examples": 10, "train_loss": 1.5,
                                  "events": [], "device_status": {"battery_pct": 50.0}},
                     "client_1": {"status": "dropped", "events": [
                         {"type": "network_issue", "effect": "unreachable"}]}}}]}
    rounds = rounds_table(results)
    assert rounds.loc[0, "dropped"] == ["client_1"]
    assert rounds.loc[0, "dropped_reasons"] == "client_1: network issue: unreachable"
    assert rounds.loc[0, "global_accuracy"] == 0.6 and rounds.loc[0, "train_loss"] == 1.5
    clients = clients_table(results).set_index("client")
    assert clients.loc["client_1", "reason"] == "network issue: unreachable"
    assert clients.loc["client_1", "events"] == "network_issue: unreachable"
    assert clients.loc["client_0", "battery_pct"] == 50.0
    assert objective_met(results) is True
    assert objective_met({"status": "success", "stop": {"type": "max_rounds"}}) is False
    assert objective_met({"status": "running"}) is None
    assert rounds_table({}).empty and clients_table({}).empty


def test_federate_three_clients_with_a_failure(fl_lab: Lab, tmp_path: Path) -> None:
    model = softmax_regression(tmp_path / "digits.onnx")
    _, _, xt, yt = digits()
    fl = fl_lab.federate(model, split_clients(3, learning_rate=0.05), rounds=2,
                         target=BOARD, server_dataset=(xt, yt), min_fit_clients=2,
                         events={1: [failure(round=2, description="unplugged")]})
    assert isinstance(fl, Federation)
    fl.wait(progress=True)
    assert fl.status == "success" and fl.done
    rounds = fl.rounds
    assert rounds["round"].tolist() == [1, 2]
    assert rounds.loc[1, "participants"] == ["client_0", "client_2"]
    assert rounds.loc[1, "dropped"] == ["client_1"]
    assert "unplugged" in rounds.loc[1, "dropped_reasons"]
    results = fl.results()
    assert rounds["global_accuracy"].tolist() == [r["global_accuracy"]
                                                  for r in results["rounds_results"]]
    assert rounds["global_accuracy"].notna().all() and rounds["wall_time_s"].gt(0).all()
    clients = fl.clients
    assert len(clients) == 6 and set(clients["client"]) == {"client_0", "client_1",
                                                              "client_2"}
    absent = clients[(clients["round"] == 2) & (clients["client"] == "client_1")].iloc[0]
    assert absent["status"] == "absent" and absent["events"].startswith("failure")
    trained = clients[clients["status"] == "trained"]
    assert trained["num_examples"].gt(0).all() and trained["train_loss"].notna().all()

    saved = fl.model(tmp_path)
    assert saved.name == f"digits_fl_{fl.id}.onnx"
    session = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"input": xt})[0].argmax(1)
    assert float(np.mean(predicted == yt.argmax(1))) == pytest.approx(
        rounds["global_accuracy"].iloc[-1])
    assert fl.summary()["rounds_done"] == 2

    history = fl_lab.experiments()
    assert isinstance(history, pd.DataFrame) and fl.id in history["id"].tolist()
    row = history.set_index("id").loc[fl.id]
    assert row["status"] == "success" and row["rounds_done"] == 2 and row["clients"] == 3
    assert fl_lab.experiment(fl.id).rounds.equals(rounds)


def test_federate_with_an_objective_and_labels(fl_lab: Lab, tmp_path: Path) -> None:
    """No server dataset: the clients' aggregated evaluation is the global accuracy."""
    model = softmax_regression(tmp_path / "digits.onnx")
    fl = fl_lab.federate(model, split_clients(2, learning_rate=0.05), rounds=6, target=BOARD,
                         objectives=[target_accuracy(0.5)], wait=True)
    results = fl.results()
    assert results["stop"]["type"] == "time_to_acc" and objective_met(results)
    assert len(fl.rounds) == results["stop"]["round"] < 6
    assert fl.rounds["global_accuracy"].iloc[-1] >= 0.5


def test_refusals_are_typed_and_cancel_works(fl_lab: Lab, tmp_path: Path) -> None:
    model = softmax_regression(tmp_path / "digits.onnx")
    x, y, xt, yt = digits()
    # Refused: the datasets uploaded for it (named as the dAIEdge client names them) go too.
    with pytest.raises(BadRequest, match=r"does not match the model's input.*were deleted"):
        fl_lab.federate(model, [((x[:, :32], y), (xt[:, :32], yt))], target=BOARD)
    with pytest.raises(BadRequest, match=r"clients\[0\].target"):
        fl_lab.federate(model, [((x, y), (xt, yt))], target="nowhere")
    with pytest.raises(ValueError, match="differs from the train input"):
        fl_lab.federate(model, [((x, y), (xt.astype(np.float64), yt))], target=BOARD)
    fl = fl_lab.federate(model, split_clients(2, learning_rate=0.001), rounds=200,
                         target=BOARD)
    if not fl.done:
        with pytest.raises(NotReady):
            fl.model(tmp_path)
    assert fl.cancel() == "canceled"
    with pytest.raises(BenchmarkFailed, match="canceled"):
        fl.wait(progress=False)
    assert fl.status == "canceled"


def test_build_config_matches_the_schema(fl_lab: Lab, tmp_path: Path) -> None:
    model = softmax_regression(tmp_path / "digits.onnx")
    x, y, xt, yt = digits()
    config = build_config(fl_lab, model, [((x[:20], y[:20]), (xt[:10], yt[:10])),
                                          {"train": (x[20:40], y[20:40]),
                                           "test": (xt[10:20], yt[10:20]), "epochs": 2,
                                           "join_at_round": 2}],
                          rounds=3, directory=tmp_path, target=BOARD, learning_rate=0.1,
                          objectives=[target_accuracy(0.9)],
                          events={"client_0": [failure(3)]})
    assert config["model"]["input_shape"] == [64] and config["model"]["output_shape"] == [10]
    first, second = config["clients"]
    assert first["odt_config"]["input"] == {
        "name": "input", "shape": [64], "dtype": "float32",
        "train_file": first["odt_config"]["input"]["train_file"],
        "test_file": first["odt_config"]["input"]["test_file"]}
    assert first["odt_config"]["input"]["train_file"].startswith("client_0_train_input_d")
    assert first["events"] == {"3": [{"type": "failure", "description": ""}]}
    assert second["training_parameters"] == {"epochs": 2, "batch_size": 32,
                                             "learning_rate": 0.1}
    assert second["join_at_round"] == 2
    assert config["config"]["objectives"] == [
        {"id": "O1", "type": "max_rounds", "max_rounds": 3},
        {"id": "O2", "type": "time_to_acc", "target_accuracy": 0.9}]
    assert config["config"]["min_fit_clients"] == 1


def test_federate_on_host_cpu(server: LiveServer, tmp_path: Path) -> None:
    """The real thing: two clients training the digits MLP with onnxruntime-training on this
    machine's cores (class indices as targets), the server scoring the global model."""
    from tests.models import digits_mlp, digits_split

    lab = Lab(VlabClient(Connection(server.url, server.token)))
    offers = lab.client.config()["devices"]["host-cpu"]["engines"]
    if "TYPE3" not in offers["onnxruntime"]["supported_types"]:
        pytest.skip("host-cpu does not train with onnxruntime here")
    x, y, xt, yt = digits_split()
    halves = zip(np.array_split(np.arange(len(x)), 2), np.array_split(np.arange(len(xt)), 2),
                 strict=True)
    fl = lab.federate(digits_mlp(tmp_path / "mlp.onnx"),
                      [((x[p], y[p]), (xt[t], yt[t])) for p, t in halves], rounds=2,
                      learning_rate=0.01, server_dataset=(xt, yt), wait=True)
    rounds = fl.rounds
    assert rounds["round"].tolist() == [1, 2]
    assert rounds["aggregated_clients"].tolist() == [["client_0", "client_1"]] * 2
    assert rounds["global_accuracy"].iloc[-1] > fl.results()["initial"]["accuracy"]
    trained = fl.clients
    assert (trained["status"] == "trained").all() and trained["train_loss"].notna().all()
    session = ort.InferenceSession(str(fl.model(tmp_path)), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"input": xt})[0].argmax(1)
    assert float(np.mean(predicted == yt)) == pytest.approx(rounds["global_accuracy"].iloc[-1])
    lab.client.close()
