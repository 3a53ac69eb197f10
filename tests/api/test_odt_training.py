"""On-device training (TYPE3) on host-cpu with onnxruntime-training, driven by the published
dAIEdge client (daiedge-vlab 1.2.12, unpatched): the digits of scikit-learn (bundled, no
download) learnt by an MLP and a small CNN, the trained model benchmarked next, and the
refusals (an operator without gradient, a config that does not fit the model).

The training environment (onnxruntime-training-cpu, onnx 1.17) is made by the first TYPE3 job
on this host, in the cache directory, and reused after (targets/host-cpu/AI_Build)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from daiedge_vlab import dAIEdgeVLabAPI
from daiedge_vlab.config import OnDeviceTrainingConfig

from tests.models import digits_cnn, digits_mlp, digits_split, untrainable_model
from tests.server import LiveServer, add_user, wait_terminal

pytestmark = pytest.mark.slow

EMAIL, PASSWORD = "trainer@lab.example", "a long password"
REPORT_KEYS = (
    "version", "date", "target", "target_id", "version_tag", "train_engine", "model_file_name",
    "benchmark_type", "ram_size", "ram_peak_usage", "flash_size", "flash_usage", "load_cpu",
    "load_accelerator", "temperature", "ambiant_temperature", "power_consumption",
    "enery_efficiency", "FLOPs", "model_size", "nb_parameters_model", "loss_train", "loss_test",
    "accuracy_train", "accuracy_test", "training_time")
# The first job on a host makes the training environment (a pip install).
FIRST_JOB_S = 900


@pytest.fixture(scope="module")
def vlab(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dAIEdgeVLabAPI:
    add_user(server, EMAIL, PASSWORD, admin=False)
    setup = tmp_path_factory.mktemp("odt-client") / "setup.yaml"
    setup.write_text(f"api:\n  url: 127.0.0.1\n  port: {server.port}\n  ssl: false\n"
                     "user:\n  email: ${VLAB_ODT_USER}\n  password: ${VLAB_ODT_PASSWORD}\n")
    os.environ.update(VLAB_ODT_USER=EMAIL, VLAB_ODT_PASSWORD=PASSWORD)
    return dAIEdgeVLabAPI(str(setup))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits as raw binary files: inputs [64] float32, targets as class indices
    ([1] int64) and one-hot ([10] float32)."""
    directory = tmp_path_factory.mktemp("digits")
    x_train, y_train, x_test, y_test = digits_split()
    arrays = {"x_train": x_train, "x_test": x_test, "y_train": y_train, "y_test": y_test,
              "onehot_train": np.eye(10, dtype=np.float32)[y_train],
              "onehot_test": np.eye(10, dtype=np.float32)[y_test]}
    files = {}
    for name, array in arrays.items():
        files[name] = directory / f"digits_{name}.bin"
        array.tofile(files[name])
    return files


def config(files: dict[str, Path], output: str, *, input_shape: list[int] | None = None,
           one_hot: bool = False, **learning: Any) -> OnDeviceTrainingConfig:
    targets = "onehot" if one_hot else "y"
    return OnDeviceTrainingConfig({
        "learning_parameters": {"batch_size": 32, "epochs": 5, "learning_rate": 0.01,
                                **learning},
        "input": {"name": "input", "shape": input_shape or [64], "dtype": "float32",
                  "train_file": str(files["x_train"]), "test_file": str(files["x_test"])},
        "output": {"name": output, "shape": [10] if one_hot else [1],
                   "dtype": "float32" if one_hot else "int64",
                   "train_file": str(files[f"{targets}_train"]),
                   "test_file": str(files[f"{targets}_test"])}})


def wait(vlab: dAIEdgeVLabAPI, server: LiveServer, bench_id: str) -> dict[str, Any]:
    """The benchmark's final description (the client's own wait has no time limit)."""
    with server.client(vlab.token) as client:
        return wait_terminal(client, bench_id, timeout=FIRST_JOB_S)


def assert_learns(curve: dict[str, Any], floor: float) -> None:
    values = curve["values"]
    assert all(v is not None for v in values), curve
    assert values[-1] > values[0] and max(values) >= floor, values
    assert curve["min"] == min(values) and curve["max"] == max(values)


def test_digits_mlp_trains_then_benchmarks(vlab: dAIEdgeVLabAPI, server: LiveServer,
                                           digits: dict[str, Path], tmp_path: Path) -> None:
    # Saved with the installed onnx's defaults (IR 14, opset 28) and a trailing Softmax: the
    # target converts it for the engine, trains the logits and puts the Softmax back.
    model = digits_mlp(tmp_path / "digits_mlp.onnx")
    bench_id = vlab.startOdtBenchmark("host-cpu", "onnxruntime", str(model),
                                      config(digits, "probs"))
    assert bench_id is not None
    final = wait(vlab, server, bench_id)
    assert final["status"] == "success", final
    assert final["benchmark_type"] == "TYPE3"
    result = vlab.getBenchmarkResult(bench_id, save_path=str(tmp_path))
    report = result["report"]
    assert set(REPORT_KEYS) <= set(report)
    assert report["train_engine"] == "onnxruntime" and report["benchmark_type"] == "TYPE3"
    assert report["target"] == "host-cpu" and report["target_id"].startswith("host-cpu-")
    assert report["FLOPs"] is None and report["nb_parameters_model"] == 64 * 32 + 32 + 330
    assert len(report["accuracy_test"]["values"]) == 5
    assert_learns(report["accuracy_test"], floor=0.9)
    assert_learns(report["accuracy_train"], floor=0.9)
    assert report["loss_train"]["values"][-1] < report["loss_train"]["values"][0]
    assert report["training_time"] > 0 and report["converted"]["from_opset"] == 28
    assert "epoch 5/5" in result["user_log"] and result["raw_output"] is None

    name = vlab.getModelOutput(bench_id, save_path=str(tmp_path))
    assert name == f"{bench_id}_model.onnx"
    trained = tmp_path / name
    assert trained.stat().st_size == report["model_size"]
    session = ort.InferenceSession(str(trained), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probs"]
    _x, _y, x_test, y_test = digits_split()
    probs = session.run(None, {"input": x_test})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # the Softmax is back
    accuracy = float((probs.argmax(axis=1) == y_test).mean())
    # The lab's onnxruntime agrees with the training engine (a borderline sample may flip).
    assert accuracy == pytest.approx(report["accuracy_test"]["values"][-1], abs=0.01)

    # The run's flat metrics (history, results table) are the training's.
    metrics = vlab.getBenchmarkInfo(bench_id)["metrics"]
    assert metrics["accuracy_test_final"] == report["accuracy_test"]["values"][-1]
    assert metrics["epochs"] == 5 and metrics["training_time_s"] == report["training_time"]

    # The trained model benchmarks as TYPE1, and as TYPE2 on the test digits, on the same
    # engine.
    again = vlab.startBenchmark("host-cpu", "onnxruntime", str(trained), inference_number=5)
    benchmark = vlab.waitBenchmarkResult(again, interval=1)
    assert benchmark["report"]["nb_infernece"] == 5
    assert benchmark["report"]["inference_engine"] == "onnxruntime"
    samples = tmp_path / "test_digits.bin"
    x_test[:20].tofile(samples)
    with_data = vlab.startBenchmark("host-cpu", "onnxruntime", str(trained),
                                    dataset=str(samples))
    outputs = vlab.waitBenchmarkResult(with_data, interval=1)["raw_output"]
    np.testing.assert_allclose(np.frombuffer(outputs, np.float32).reshape(20, 10),
                               probs[:20], rtol=1e-5, atol=1e-6)


def test_small_cnn_trains_on_one_hot_targets(vlab: dAIEdgeVLabAPI, server: LiveServer,
                                             digits: dict[str, Path], tmp_path: Path) -> None:
    images = {**digits}
    for split in ("train", "test"):  # the same pixels as [1, 8, 8] images
        images[f"x_{split}"] = tmp_path / f"images_{split}.bin"
        np.fromfile(digits[f"x_{split}"], np.float32).tofile(images[f"x_{split}"])
    model = digits_cnn(tmp_path / "digits_cnn.onnx")
    bench_id = vlab.startOdtBenchmark(
        "host-cpu", "onnxruntime", str(model),
        config(images, "logits", input_shape=[1, 8, 8], one_hot=True, epochs=4, seed=3))
    assert bench_id is not None
    final = wait(vlab, server, bench_id)
    assert final["status"] == "success", final
    report = vlab.getBenchmarkReport(bench_id)
    assert report["targets"] == "one_hot" and report["seed"] == 3
    assert_learns(report["accuracy_test"], floor=0.85)
    assert report["softmax_cut"] is None
    trained = vlab.getModelOutput(bench_id, name_only=False)
    assert isinstance(trained, bytes)
    assert [n.op_type for n in onnx.load_from_string(trained).graph.node] == [
        "Conv", "Relu", "MaxPool", "Flatten", "Gemm"]  # the user's graph, trained


def test_an_operator_without_gradient_fails_naming_it(vlab: dAIEdgeVLabAPI, server: LiveServer,
                                                      digits: dict[str, Path],
                                                      tmp_path: Path) -> None:
    model = untrainable_model(tmp_path / "hard_sigmoid.onnx")
    bench_id = vlab.startOdtBenchmark("host-cpu", "onnxruntime", str(model),
                                      config(digits, "logits", epochs=1))
    assert bench_id is not None
    final = wait(vlab, server, bench_id)
    assert final["status"] == "failed"
    assert "no gradient for operator HardSigmoid (node gate)" in final["message"], final
    assert "AI_Build/build.sh failed" in final["message"]
    assert "HardSigmoid" in vlab.getErrorLog(bench_id)
    assert vlab.getModelOutput(bench_id) is None


def _stored(server: LiveServer) -> tuple[int, int, int]:
    """Benchmark and model rows, and files in the model store and tmp."""
    with sqlite3.connect(server.data_dir / "vlab.db") as db:
        rows = [db.execute(f"select count(*) from {t}").fetchone()[0]
                for t in ("benchmarks", "models")]
    files = sum(1 for d in ("models", "tmp") for p in (server.data_dir / d).rglob("*")
                if p.is_file())
    return rows[0], rows[1], files


@pytest.mark.parametrize(("change", "field"), [
    ({"input": {"shape": [8, 8]}}, "input.shape [8, 8] does not match the model's input"),
    ({"input": {"dtype": "int32"}}, "input.dtype int32 does not match the model's input"),
    ({"input": {"name": "pixels"}}, "input.name 'pixels' is not an input of the model"),
    ({"output": {"name": "logits"}}, "output.name 'logits' is not an output of the model"),
    ({"output": {"shape": [5, 2], "dtype": "float32"}}, "output.shape [5, 2] does not match"),
])
def test_a_config_that_does_not_fit_the_model_is_refused(
        server: LiveServer, digits: dict[str, Path], tmp_path: Path, change: dict[str, Any],
        field: str) -> None:
    model = digits_mlp(tmp_path / "digits_mlp.onnx")
    with server.client() as client:
        refs = {name: client_upload(client, path) for name, path in digits.items()}
        odt = {"learning_parameters": {"batch_size": 32, "epochs": 1},
               "input": {"name": "input", "shape": [64], "dtype": "float32",
                         "train_file": refs["x_train"], "test_file": refs["x_test"]},
               "output": {"name": "probs", "shape": [1], "dtype": "int64",
                          "train_file": refs["y_train"], "test_file": refs["y_test"]}}
        for section, values in change.items():
            odt[section] = {**odt[section], **values}
        if odt["output"]["dtype"] == "float32":
            odt["output"].update(train_file=refs["onehot_train"], test_file=refs["onehot_test"])
        before = _stored(server)
        response = client.post("/api/benchmarks/train",
                               data={"device": "host-cpu", "engine": "onnxruntime"},
                               files={"model": (model.name, model.read_bytes()),
                                      "config": ("config", json.dumps(odt))})
        assert response.status_code == 400, response.text
        assert field in response.json()["error"]
        assert _stored(server) == before


def client_upload(client: Any, path: Path) -> str:
    """Upload a dataset as the dAIEdge client does; its `<name>_<sha256>` reference."""
    import hashlib

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    response = client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                           files={"dataset": (path.name, data)})
    assert response.status_code == 207, response.text
    return f"{path.name}_{digest}"
