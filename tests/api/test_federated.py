"""Federated learning (TYPE4) end to end, with the published dAIEdge client (daiedge-vlab
1.2.12) unchanged: three clients on a scripted FL-capable target, Flower's FedAvg on the
server (in its own environment), scripted events, objectives, refusals and cancel."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from daiedge_vlab import dAIEdgeVLabAPI
from daiedge_vlab.fl import (
    ClientConfig,
    ClientDataset,
    FlConfig,
    FLEventDelayedResponse,
    FLEventEpochCompletion,
    FLEventFailure,
    FLEventNetworkIssue,
    FLEventReducedDataset,
    FLEventSlowResponse,
    FlExperiment,
    FlModel,
    FLTargetAccuracyObjective,
    ServerDataset,
    TrainingConfig,
)
from onnx import TensorProto, helper
from sqlalchemy import select

from tests.server import LiveServer, add_user

pytestmark = pytest.mark.slow

EMAIL, PASSWORD = "fl-researcher@lab.example", "a long password"
BOARD = "fl-board"
TERMINAL = ("success", "failed", "canceled")

# The board's manager step, a Python program run with the lab's interpreter: TYPE2 runs the
# model over the dataset (raw_output.bin); TYPE3 trains a Gemm + Softmax model (softmax
# regression, mini-batch SGD) on the ODT config's data and leaves report_odt.json (per-epoch
# {min, max, values}) and the trained model.onnx, as an FL-capable board's repository would.
TARGET_PROGRAM = r'''
import json, os, sys
import numpy as np
import onnx
from onnx import numpy_helper


def load(tensor, key):
    data = np.fromfile(tensor[key], dtype=np.dtype(tensor["dtype"]))
    return data.reshape(-1, *tensor["shape"]) if tensor["shape"] else data


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def section(values):
    return {"min": min(values), "max": max(values), "values": values}


def train():
    config = json.load(open(os.environ["ODT_CONFIG_FILENAME"]))
    params = config["learning_parameters"]
    model = onnx.load(os.environ["MODEL_FILENAME"])
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits["W"]).astype(np.float64)
    b = numpy_helper.to_array(inits["b"]).astype(np.float64)
    x = load(config["input"], "train_file").reshape(-1, w.shape[0]).astype(np.float64)
    y = load(config["output"], "train_file").reshape(len(x), -1).astype(np.float64)
    xt = load(config["input"], "test_file").reshape(-1, w.shape[0]).astype(np.float64)
    yt = load(config["output"], "test_file").reshape(len(xt), -1).astype(np.float64)
    lr, batch = float(params.get("learning_rate", 0.05)), int(params["batch_size"])
    rng = np.random.default_rng(int(params.get("seed", 0)))
    losses, accs, tlosses, taccs = [], [], [], []
    for _ in range(int(params["epochs"])):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            grad = (softmax(x[idx] @ w + b) - y[idx]) / len(idx)
            w -= lr * x[idx].T @ grad
            b -= lr * grad.sum(axis=0)
        for xs, ys, loss_list, acc_list in ((x, y, losses, accs), (xt, yt, tlosses, taccs)):
            p = softmax(xs @ w + b)
            loss_list.append(float(-np.mean(np.log(np.clip((p * ys).sum(1), 1e-12, 1)))))
            acc_list.append(float(np.mean(p.argmax(1) == ys.argmax(1))))
    inits["W"].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "W"))
    inits["b"].CopyFrom(numpy_helper.from_array(b.astype(np.float32), "b"))
    onnx.save(model, "AI_Manager/out/model.onnx")
    json.dump({"train_engine": os.environ["RUNTIME"], "benchmark_type": "TYPE3",
               "loss_train": section(losses), "accuracy_train": section(accs),
               "loss_test": section(tlosses), "accuracy_test": section(taccs),
               "nb_samples_train": len(x)}, open("AI_Manager/out/report_odt.json", "w"))


def infer():
    import onnxruntime as ort

    session = ort.InferenceSession(os.environ["MODEL_FILENAME"],
                                   providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    width = int(np.prod(spec.shape[1:]))
    x = np.fromfile(os.environ["DATASET_FILENAME"], dtype=np.float32).reshape(-1, width)
    session.run(None, {spec.name: x})[0].astype(np.float32).tofile(
        "AI_Manager/out/raw_output.bin")
    json.dump({"inference_engine": os.environ["RUNTIME"], "benchmark_type": "TYPE2",
               "nb_infernece": len(x)}, open("AI_Manager/out/report.json", "w"))


{"TYPE3": train, "TYPE2": infer}[os.environ["BENCHMARK_TYPE"]]()
'''


def board_repository(root: Path) -> Path:
    repo = root / "fl-board"
    scripts = {"AI_Support/support.sh": "true", "AI_Build/build.sh": "true",
               "AI_Deploy/deploy.sh": "true",
               "AI_Manager/manager.sh": f'"{sys.executable}" AI_Manager/board.py'}
    for relative, body in scripts.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(f'source "$FUNCTIONS_PATH/exit_functions.sh"\n{body}\n')
    (repo / "AI_Manager/board.py").write_text(TARGET_PROGRAM)
    return repo


@pytest.fixture(scope="module")
def fl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A lab with three FL-capable board instances and one that only infers."""
    root = tmp_path_factory.mktemp("fl")
    repo = str(board_repository(root))
    offer = {"onnxruntime": {"repository": repo, "supported_types": ["TYPE1", "TYPE2", "TYPE3"]}}
    infer_only = {"onnxruntime": {"repository": repo, "supported_types": ["TYPE1", "TYPE2"]}}
    targets = root / "targets.json"
    targets.write_text(json.dumps({
        BOARD: [{"target_uid": f"{BOARD}-{i}", "engines": offer} for i in range(3)],
        "infer-board": [{"target_uid": "infer-board-0", "engines": infer_only}]}))
    live = LiveServer(root / "data", ["--targets", str(targets), "--no-warm-workers"]).start()
    add_user(live, EMAIL, PASSWORD)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def cpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A lab whose targets are this machine's cores (host-cpu trains with onnxruntime)."""
    live = LiveServer(tmp_path_factory.mktemp("fl-cpu") / "data").start()
    add_user(live, EMAIL, PASSWORD)
    yield live
    live.stop()


def published_client(server: LiveServer, root: Path) -> dAIEdgeVLabAPI:
    setup = root / "setup.yaml"
    setup.write_text(f"api:\n  url: 127.0.0.1\n  port: {server.port}\n  ssl: false\n"
                     f"user:\n  email: {EMAIL}\n  password: {PASSWORD}\n")
    return dAIEdgeVLabAPI(str(setup))


def logged_in(server: LiveServer) -> httpx.Client:
    token = httpx.post(server.url + "/api/users/login",
                       json={"email": EMAIL, "password": PASSWORD}).json()["access_token"]
    return server.client(token)


@pytest.fixture(scope="module")
def vlab(fl_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dAIEdgeVLabAPI:
    return published_client(fl_server, tmp_path_factory.mktemp("client"))


@pytest.fixture(scope="module")
def user_client(fl_server: LiveServer) -> Iterator[httpx.Client]:
    with logged_in(fl_server) as client:
        yield client


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's digits, scaled to [0, 1], labels one-hot; 80/20 split with seed 0."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return x[train], onehot[train], x[test], onehot[test]


def softmax_regression(path: Path) -> Path:
    """input [N, 64] -> Gemm(W [64, 10], b [10]) -> Softmax -> output [N, 10]."""
    weights = np.random.default_rng(1).normal(0, 0.01, (64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["output"], axis=1)], "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(weights, "W"),
         onnx.numpy_helper.from_array(np.zeros(10, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def experiment(root: Path, rounds: int, *, failure: tuple[int, int] | None = None,
               objective: Any = None, server_dataset: bool = True, clients: int = 3,
               lr: float = 0.05, target: str = BOARD) -> FlExperiment:
    """An experiment built with the client's own classes, as a user writes it."""
    x, y, xt, yt = digits()
    model = softmax_regression(root / "digits.onnx")
    config = FlConfig(rounds=rounds,
                      server_dataset=ServerDataset((xt, yt)) if server_dataset else None)
    config.set_min_clients(2, 2, 2)
    fl = FlExperiment(FlModel("onnxruntime", str(model), (64,), (10,)), config, clients=[],
                      output_path=str(root / "experiment"), objective=objective)
    for index, (part, test_part) in enumerate(zip(np.array_split(np.arange(len(x)), clients),
                                                  np.array_split(np.arange(len(xt)), clients),
                                                  strict=True)):
        client = ClientConfig(target, ClientDataset((x[part], y[part]),
                                                   (xt[test_part], yt[test_part])),
                              TrainingConfig(epochs=1, batch_size=32, learning_rate=lr))
        if failure is not None and failure[0] == index:
            client.add_event(FLEventFailure(round=failure[1]))
        fl.add_client(client)
    return fl


def wait_experiment(client: httpx.Client, experiment_id: str, statuses: tuple[str, ...],
                    timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/api/benchmarks/fl/{experiment_id}/status").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"experiment {experiment_id} never reached {statuses}")


@pytest.mark.parametrize("target", [BOARD, "host-cpu"])
def test_three_clients_five_rounds_with_a_failure(target: str, request: pytest.FixtureRequest,
                                                  tmp_path: Path) -> None:
    """On the scripted board, and on host-cpu (onnxruntime-training in its own venv)."""
    server: LiveServer = request.getfixturevalue("fl_server" if target == BOARD
                                                 else "cpu_server")
    user_client = logged_in(server)
    request.addfinalizer(user_client.close)
    offers = user_client.get("/api/benchmarks/config").json()["devices"][target]["engines"]
    if "TYPE3" not in offers["onnxruntime"]["supported_types"]:
        pytest.skip(f"{target} does not train with onnxruntime here")
    vlab = published_client(server, tmp_path)
    fl = experiment(tmp_path, rounds=5, failure=(1, 2), target=target,
                    lr=0.05 if target == BOARD else 0.01)
    experiment_id = vlab.startFLExperiment(fl)
    assert experiment_id, "the client could not start the experiment"
    result = vlab.waitFLExperimentResult(experiment_id, save_path=str(tmp_path), interval=1)
    report = result["fl_report"]
    assert report["status"] == "success", report["message"]
    rounds = report["rounds_results"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert rounds[1]["participants"] == ["client_0", "client_2"]
    assert rounds[1]["dropped"] == [{"client_id": "client_1", "stage": "selection",
                                     "reason": "failure: Client failed at round 2"}]
    assert rounds[1]["clients"]["client_1"]["status"] == "absent"
    assert rounds[1]["aggregated_clients"] == ["client_0", "client_2"]
    for record in (rounds[0], *rounds[2:]):
        assert record["aggregated_clients"] == ["client_0", "client_1", "client_2"]
        assert record["dropped"] == []
    for record in rounds:
        assert record["eval_accuracy"] is not None and record["server_accuracy"] is not None
        for info in record["clients"].values():
            if info["status"] == "trained":
                assert info["num_examples"] > 0 and info["train_loss"] is not None
    accuracy = [r["global_accuracy"] for r in rounds]
    assert accuracy[-1] > accuracy[0] > report["initial"]["accuracy"], accuracy
    assert report["stop"]["type"] == "max_rounds"
    assert (tmp_path / f"{experiment_id}_fl_experiment_report.json").is_file()

    definition = vlab.getFLExperimentDefinition(experiment_id)
    assert definition["clients"][1]["events"]["2"][0]["type"] == "failure"
    history = vlab.getFLExperimentHistory()
    assert experiment_id in [e["id"] for e in history["results"]]
    # The final global model: the last round's weights, and it scores what the report says.
    model = user_client.get(f"/api/benchmarks/fl/{experiment_id}/model")
    assert model.status_code == 200
    assert model.headers["content-disposition"].endswith(f'_fl_{experiment_id}.onnx"')
    assert hashlib.sha256(model.content).hexdigest() == rounds[-1]["global_model_sha256"]
    import onnxruntime as ort

    _, _, xt, yt = digits()
    session = ort.InferenceSession(model.content, providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"input": xt})[0].argmax(1)
    assert float(np.mean(predicted == yt.argmax(1))) == pytest.approx(accuracy[-1])
    # Its client jobs are ordinary benchmarks in the history, named after the experiment.
    jobs = user_client.get("/api/benchmarks", params={"page_length": 1000}).json()["results"]
    ours = [j for j in jobs if (j.get("name") or "").startswith(f"FL {experiment_id} ")]
    assert len(ours) == 14 * 2  # 3 + 2 + 3 + 3 + 3 trainings, as many evaluations


def test_an_objective_ends_the_experiment_early(vlab: dAIEdgeVLabAPI, tmp_path: Path) -> None:
    fl = experiment(tmp_path, rounds=8, objective=FLTargetAccuracyObjective(0.5),
                    server_dataset=False)
    experiment_id = vlab.startFLExperiment(fl)
    report = vlab.waitFLExperimentResult(experiment_id, interval=1)["fl_report"]
    assert report["status"] == "success", report["message"]
    assert report["stop"]["type"] == "time_to_acc" and report["stop"]["id"] == "O2"
    assert len(report["rounds_results"]) == report["stop"]["round"] < 8
    last = report["rounds_results"][-1]
    assert last["global_accuracy"] == last["eval_accuracy"] >= 0.5
    assert report["stop"]["elapsed_s"] == last["elapsed_s"]


def test_every_scripted_event_is_honoured_and_recorded(vlab: dAIEdgeVLabAPI,
                                                       tmp_path: Path) -> None:
    x, y, xt, yt = digits()
    model = softmax_regression(tmp_path / "digits.onnx")
    config = FlConfig(rounds=3, server_dataset=ServerDataset((xt, yt)), round_timeout_s=50)
    config.set_min_clients(1, 1, 1)
    fl = FlExperiment(FlModel("onnxruntime", str(model), (64,), (10,)), config, clients=[],
                      output_path=str(tmp_path / "experiment"))
    parts = np.array_split(np.arange(len(x)), 4)
    tests = np.array_split(np.arange(len(xt)), 4)

    def client(index: int, epochs: int = 1, join: int = 0) -> ClientConfig:
        return ClientConfig(BOARD, ClientDataset((x[parts[index]], y[parts[index]]),
                                                 (xt[tests[index]], yt[tests[index]])),
                            TrainingConfig(epochs=epochs, batch_size=32, learning_rate=0.05),
                            join_at_round=join)

    first = client(0, epochs=2)
    first.add_event(FLEventReducedDataset(start_round=1, new_size=50, seed=1))
    first.add_event(FLEventEpochCompletion(start_round=2, epoch_number=1))
    first.add_temperature_profile(start_round=3, temperature_c=95)
    second = client(1)
    second.add_event(FLEventNetworkIssue(start_round=1, fail_fast=True))
    second.add_event(FLEventDelayedResponse(start_round=2, delay_seconds=100))
    second.add_event(FLEventSlowResponse(start_round=3, slow_factor=2))
    third = client(2)
    third.add_battery_profile(start_round=1, stop_round=3, initial_level_pct=30,
                              discharge_pct_per_round=15, min_level_pct=10)
    fourth = client(3, join=2)
    fourth.add_event(FLEventNetworkIssue(start_round=3, roud_timeout_s=5))
    for each in (first, second, third, fourth):
        fl.add_client(each)
    experiment_id = vlab.startFLExperiment(fl)
    report = vlab.waitFLExperimentResult(experiment_id, interval=1)["fl_report"]
    assert report["status"] == "success", report["message"]
    one, two, three = report["rounds_results"]

    def dropped(record: dict[str, Any]) -> dict[str, str]:
        return {d["client_id"]: d["reason"] for d in record["dropped"]}

    # Round 1: a subset for client_0, client_1 unreachable, client_3 not there yet.
    assert one["clients"]["client_0"]["num_examples"] == 50
    assert dropped(one) == {"client_1": "network issue: unreachable (fail_fast)",
                            "client_3": "joins at round 2"}
    assert one["aggregated_clients"] == ["client_0", "client_2"]
    assert one["fit_metrics"]["num_examples"] == 50 + len(parts[2])
    assert one["clients"]["client_2"]["device_status"] == {"power_source": "Battery",
                                                          "battery_pct": 30.0}
    assert one["clients"]["client_2"]["battery_after_pct"] == 15.0
    # Round 2: one epoch of two for client_0; client_1 answers 100 s late: past the timeout.
    assert two["clients"]["client_0"]["epochs"] == 1
    assert dropped(two)["client_1"].startswith("no update within round_timeout_s (50 s)")
    assert two["clients"]["client_1"]["response_time_s"] == 50
    assert two["time_s"] >= 50
    assert two["aggregated_clients"] == ["client_0", "client_2", "client_3"]
    # Round 3: too hot, battery flat, an update lost on the way; client_1 slow but in time.
    reasons = dropped(three)
    assert reasons["client_0"] == "temperature 95 °C over the 85 °C limit"
    assert reasons["client_2"] == "battery at 0.0 % is below its 10 % minimum"
    assert reasons["client_3"] == "network issue: its update never arrived (waited 5 s)"
    assert three["aggregated_clients"] == ["client_1"]
    slow = three["clients"]["client_1"]
    assert slow["response_time_s"] == pytest.approx(2 * slow["train_run_s"], abs=0.01)
    assert report["stop"]["elapsed_s"] == pytest.approx(sum(r["time_s"] for r in
                                                            (one, two, three)), abs=0.01)
    # The per-round subsets were the experiment's own: gone with it.
    assert not [d for d in vlab.getDatasets() if d.startswith(f"fl-{experiment_id}-")]


def upload(client: httpx.Client, path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    answer = client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                         files={"dataset": (path.name, path.read_bytes())})
    assert answer.status_code == 207, answer.text
    return f"{path.name}_{digest}"


def raw_config(refs: dict[str, str], target: str = BOARD) -> dict[str, Any]:
    odt = {"learning_parameters": {"batch_size": 8, "epochs": 1},
           "input": {"name": "input", "shape": [64], "dtype": "float32",
                     "train_file": refs["x"], "test_file": refs["x"]},
           "output": {"name": "output", "shape": [10], "dtype": "float32",
                      "train_file": refs["y"], "test_file": refs["y"]}}
    return {"experiment_path": "exp",
            "model": {"path": "m.onnx", "runtime": "onnxruntime", "input_shape": [64],
                      "output_shape": [10], "model_filename": "digits.onnx"},
            "config": {"rounds": 2, "aggregator": "FedAvg", "min_fit_clients": 1,
                       "min_available_clients": 1, "min_eval_clients": 1,
                       "server_dataset": {}},
            "clients": [{"client_id": "client_0", "target": target, "runtime": "onnxruntime",
                         "odt_config": odt, "join_at_round": 0,
                         "training_parameters": {"epochs": 1, "batch_size": 8,
                                                 "learning_rate": 0.05},
                         "events": {}}],
            "counters": {"total_clients": 1}}


def test_bad_experiments_are_refused_naming_the_field(user_client: httpx.Client,
                                                      tmp_path: Path) -> None:
    model = softmax_regression(tmp_path / "digits.onnx")
    x, y, _, _ = digits()
    (tmp_path / "x.bin").write_bytes(x[:16].tobytes())
    (tmp_path / "y.bin").write_bytes(y[:16].tobytes())
    refs = {"x": upload(user_client, tmp_path / "x.bin"),
            "y": upload(user_client, tmp_path / "y.bin")}

    def run(config: Any) -> httpx.Response:
        return user_client.post("/api/benchmarks/fl/run", files={
            "model": ("digits.onnx", model.read_bytes()),
            "fl_config": ("fl_experiment_config_updated.json", json.dumps(config))})

    def changed(path: str, value: Any) -> dict[str, Any]:
        config = raw_config(refs)
        *parents, last = path.split(".")
        node: Any = config
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value
        return config

    (tmp_path / "odd.bin").write_bytes(b"\0" * 100)
    odd = upload(user_client, tmp_path / "odd.bin")
    before = user_client.get("/api/benchmarks/fl").json()["count"]
    for config, field in [
        (changed("config.rounds", 0), "config.rounds"),
        (changed("clients.0.events", {"2": [{"type": "meteor", "round": 2}]}),
         "clients[0].events[2][0].type"),
        (changed("clients.0.events", {"1": [{"type": "slow_response", "slow_factor": -1}]}),
         "clients[0].events[1][0].slow_factor"),
        (raw_config(refs, target="infer-board"), "clients[0].target"),
        (raw_config(refs, target="nowhere"), "clients[0].target"),
        (changed("clients.0.odt_config.input.train_file", odd),
         "clients[0].odt_config.input.train_file"),
        (changed("clients.0.odt_config.input.shape", [32]), "clients[0].odt_config.input"),
        (changed("clients.0.odt_config.output", {
            "name": "output", "shape": [5], "dtype": "float64", "train_file": refs["y"],
            "test_file": refs["y"]}), "clients[0].odt_config.output.shape"),
        (changed("model.input_shape", [8, 9]), "model.input_shape"),
        (changed("config.min_fit_clients", 3), "config.min_fit_clients"),
        (changed("config.objectives", [{"type": "time_to_acc", "target_accuracy": 2}]),
         "config.objectives[0].target_accuracy"),
    ]:
        answer = run(config)
        assert answer.status_code == 400, (field, answer.text)
        assert field in answer.json()["error"], (field, answer.json()["error"])
    assert user_client.get("/api/benchmarks/fl").json()["count"] == before

    # Datasets the dAIEdge client uploaded for a refused experiment do not stay behind; the
    # ones named otherwise (uploaded by the user for other work) stay.
    (tmp_path / "client_0_train_input_d.bin").write_bytes(x[16:32].tobytes() + b"\1")
    orphan = upload(user_client, tmp_path / "client_0_train_input_d.bin")
    answer = run(changed("clients.0.odt_config.input.train_file", orphan))
    assert answer.status_code == 400 and "were deleted: " + orphan in answer.json()["error"]
    names = user_client.get("/api/benchmarks/datasets").json()
    assert orphan not in names and refs["x"] in names and odd in names


def test_cancel_stops_the_experiment_and_its_jobs(vlab: dAIEdgeVLabAPI,
                                                  user_client: httpx.Client,
                                                  tmp_path: Path) -> None:
    fl = experiment(tmp_path, rounds=200, lr=0.001)
    experiment_id = vlab.startFLExperiment(fl)
    wait_experiment(user_client, experiment_id, ("running",))
    prefix = f"FL {experiment_id} "

    def jobs() -> list[dict[str, Any]]:
        rows = user_client.get("/api/benchmarks", params={"page_length": 1000}).json()
        return [j for j in rows["results"] if (j.get("name") or "").startswith(prefix)]

    deadline = time.monotonic() + 120
    while not any(j["status"] in ("queued", "running") for j in jobs()):
        assert time.monotonic() < deadline, "no client job ever started"
        time.sleep(0.1)
    answer = user_client.post(f"/api/benchmarks/fl/{experiment_id}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "canceled"
    assert vlab.getFLExperimentStatus(experiment_id)["status"] == "canceled"
    deadline = time.monotonic() + 60
    while not all(j["status"] in TERMINAL for j in jobs()):
        assert time.monotonic() < deadline, jobs()
        time.sleep(0.1)
    assert any(j["status"] == "canceled" for j in jobs())
    # Canceling again changes nothing; the model is served for a canceled experiment too.
    assert user_client.delete(f"/api/benchmarks/fl/{experiment_id}").json()["status"] == \
        "canceled"
    assert user_client.get(f"/api/benchmarks/fl/{experiment_id}/model").status_code == 200
    # Live views: the event stream of an ended experiment gives its state and closes.
    with user_client.stream("GET", f"/api/benchmarks/fl/{experiment_id}/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert [json.loads(line[6:])["status"] for line in lines] == ["canceled"]
    assert user_client.get("/api/benchmarks/fl/nope/status").status_code == 404


def test_other_users_do_not_see_an_experiment(fl_server: LiveServer,
                                              user_client: httpx.Client) -> None:
    history = user_client.get("/api/benchmarks/fl").json()
    assert history["count"] >= 1
    experiment_id = history["results"][0]["id"]
    add_user(fl_server, "other@lab.example")
    token = httpx.post(fl_server.url + "/api/users/login",
                       json={"email": "other@lab.example",
                             "password": "a long password"}).json()["access_token"]
    with fl_server.client(token) as other:
        assert other.get(f"/api/benchmarks/fl/{experiment_id}/results").status_code == 404
        assert other.get("/api/benchmarks/fl").json()["count"] == 0


def test_an_experiment_resumes_after_a_crash(tmp_path: Path) -> None:
    """The server is killed during round 2; restarted, it runs round 2 again and ends."""
    repo = str(board_repository(tmp_path))
    offer = {"onnxruntime": {"repository": repo, "supported_types": ["TYPE2", "TYPE3"]}}
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({BOARD: [{"target_uid": f"{BOARD}-{i}", "engines": offer}
                                           for i in range(3)]}))
    live = LiveServer(tmp_path / "data", ["--targets", str(targets), "--no-warm-workers"])
    live.start()
    try:
        setup = tmp_path / "setup.yaml"
        add_user(live, EMAIL, PASSWORD)
        setup.write_text(f"api:\n  url: 127.0.0.1\n  port: {live.port}\n  ssl: false\n"
                         f"user:\n  email: {EMAIL}\n  password: {PASSWORD}\n")
        vlab = dAIEdgeVLabAPI(str(setup))
        experiment_id = vlab.startFLExperiment(experiment(tmp_path, rounds=3))
        with live.client() as admin:
            deadline = time.monotonic() + 120
            while admin.get(f"/api/benchmarks/fl/{experiment_id}/status").json()[
                    "current_round"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        live.kill9()
        live.start()
        with live.client() as admin:
            final = wait_experiment(admin, experiment_id, TERMINAL)
            assert final["status"] == "success", final["message"]
            report = admin.get(f"/api/benchmarks/fl/{experiment_id}/results").json()
        assert [r["round"] for r in report["rounds_results"]] == [1, 2, 3]
        assert all(r["aggregated_clients"] for r in report["rounds_results"])
    finally:
        live.stop()


def test_a_refused_experiment_never_deletes_a_dataset_someone_may_use(tmp_path: Path) -> None:
    """The datasets of a refused experiment go, except a public one, and one another user's
    unfinished benchmark still reads."""
    from types import SimpleNamespace

    from vlab_backend.api.routes.federated import _forget_datasets
    from vlab_backend.store.database import Database
    from vlab_backend.store.schema import Benchmark, Dataset, StoredModel, User

    db = Database(f"sqlite:///{tmp_path / 'vlab.db'}")
    db.migrate()
    names = {key: f"client_1_{key}_d1.bin_{char * 64}" for key, char in (
        ("train_input", "a"), ("train_target", "b"), ("test_input", "c"), ("test_target", "d"))}
    with db.session() as session:
        session.add_all([User(id=1, email="a@lab.example"), User(id=2, email="b@lab.example")])
        session.flush()
        session.add(StoredModel(id=1, owner_id=2, sha256="e" * 64, filename="m.onnx",
                                format="onnx", size=1))
        session.flush()
        for key, name in names.items():
            session.add(Dataset(owner_id=1, name=name, sha256=name[-64:], size=4,
                                public=key == "train_target"))
        session.add(Benchmark(id="theirs", owner_id=2, target_type="t", engine="e",
                              benchmark_type="TYPE2", nb_inference=1, model_id=1,
                              model_filename="m.onnx", model_sha256="e" * 64,
                              dataset_name=names["test_input"], status="running"))
    raw = {"clients": [{"odt_config": {
        "input": {"train_file": names["train_input"], "test_file": names["test_input"]},
        "output": {"train_file": names["train_target"], "test_file": names["test_target"]}}}]}
    state = SimpleNamespace(db=db, scheduler=SimpleNamespace(
        datasets=SimpleNamespace(remove=lambda _sha: None)))
    user = SimpleNamespace(id=1)
    deleted = _forget_datasets(state, user, raw)  # type: ignore[arg-type]
    assert sorted(deleted) == sorted([names["train_input"], names["test_target"]])
    with db.session() as session:
        assert sorted(session.scalars(select(Dataset.name))) == sorted(
            [names["train_target"], names["test_input"]])
    db.dispose()
