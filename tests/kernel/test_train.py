"""`lab.train`: NumPy arrays in, a Training run out, with its curves and its trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from tests.models import digits_cnn, digits_mlp, digits_split
from tests.server import LiveServer
from vlab_kernel import BadRequest, NotReady, connect
from vlab_kernel.lab import Lab, Training, training_curves

pytestmark = pytest.mark.slow


@pytest.fixture
def lab(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Lab:
    monkeypatch.setenv("VLAB_URL", server.url)
    monkeypatch.setenv("VLAB_DATA_DIR", str(server.data_dir))
    monkeypatch.delenv("VLAB_TOKEN", raising=False)
    return connect()


def test_train_from_arrays_gives_curves_and_the_model(lab: Lab, tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = digits_split()
    model = digits_mlp(tmp_path / "mlp.onnx")
    run = lab.train(model, "host-cpu", "onnxruntime", train=(x_train, y_train),
                    test=(x_test, y_test), epochs=4, batch_size=32, learning_rate=0.01,
                    optimizer="AdamW", seed=1)
    assert isinstance(run, Training)
    run.wait(progress=False)
    assert run.status == "success" and run.info()["benchmark_type"] == "TYPE3"
    report = run.report()
    assert report is run.report() and report["seed"] == 1 and report["epochs"] == 4
    assert report["train_samples"] == len(x_train) and report["targets"] == "indices"
    curves = run.curves
    assert list(curves.index) == [1, 2, 3, 4] and curves.index.name == "epoch"
    assert {"loss_train", "loss_test", "accuracy_train", "accuracy_test",
            "epoch_time_s"} <= set(curves)
    assert curves["accuracy_test"].iloc[-1] > curves["accuracy_test"].iloc[0]
    assert curves["accuracy_test"].max() >= 0.9
    assert curves["loss_train"].is_monotonic_decreasing or \
        curves["loss_train"].iloc[-1] < curves["loss_train"].iloc[0]

    saved = run.trained_model(tmp_path)
    assert saved == tmp_path / f"{run.id}_model.onnx"
    probs = ort.InferenceSession(str(saved), providers=["CPUExecutionProvider"]).run(
        None, {"input": x_test})[0]
    assert float((probs.argmax(axis=1) == y_test).mean()) >= 0.9
    named = run.trained_model(tmp_path / "mine.onnx")
    assert named.read_bytes() == saved.read_bytes()
    # The trained model benchmarks like any other.
    bench = lab.benchmark(saved, "host-cpu", "onnxruntime", runs=3, wait=True)
    assert bench.report["nb_inference"] == 3


def test_train_with_one_hot_targets_and_a_modelproto(lab: Lab, tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = digits_split()
    images_train, images_test = x_train.reshape(-1, 1, 8, 8), x_test.reshape(-1, 1, 8, 8)
    one_hot = np.eye(10, dtype=np.float32)
    proto = onnx.load(digits_cnn(tmp_path / "cnn.onnx"))
    run = lab.train(proto, "host-cpu", "onnxruntime", train=(images_train, one_hot[y_train]),
                    test=(images_test, one_hot[y_test]), epochs=3, wait=True)
    assert run.report["targets"] == "one_hot" and len(run.curves) == 3
    assert run.curves["accuracy_test"].iloc[-1] >= 0.8


def test_train_refusals_are_typed(lab: Lab, tmp_path: Path) -> None:
    x_train, y_train, x_test, y_test = digits_split()
    model = digits_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(BadRequest, match=r"input\.shape \[32\] does not match"):
        lab.train(model, "host-cpu", "onnxruntime", train=(x_train[:, :32], y_train),
                  test=(x_test[:, :32], y_test))
    with pytest.raises(BadRequest, match="does not support TYPE3"):
        lab.train(model, "host-cpu", "openvino", train=(x_train, y_train),
                  test=(x_test, y_test))
    with pytest.raises(ValueError, match="differs from the train input"):
        lab.train(model, "host-cpu", "onnxruntime", train=(x_train, y_train),
                  test=(x_test.astype(np.float64), y_test))
    with pytest.raises(ValueError, match="give input_name and output_name"):
        lab.train(b"not a model", "host-cpu", "onnxruntime", train=(x_train, y_train),
                  test=(x_test, y_test))
    pending = lab.train(model, "host-cpu", "onnxruntime", train=(x_train, y_train),
                        test=(x_test, y_test), epochs=1)
    if not pending.done:
        with pytest.raises(NotReady):
            pending.trained_model(tmp_path)
    pending.wait(progress=False)


def test_training_curves_of_a_report() -> None:
    report = {"loss_train": {"min": 0.5, "max": 1.0, "values": [1.0, 0.5]},
              "loss_test": {"min": 0.6, "max": 0.9, "values": [0.9, 0.6]},
              "accuracy_train": {"min": None, "max": None, "values": [None, None]},
              "accuracy_test": {"min": None, "max": None, "values": [None, None]}}
    curves = training_curves(report)
    assert isinstance(curves, pd.DataFrame) and list(curves.index) == [1, 2]
    assert curves["loss_train"].tolist() == [1.0, 0.5]
    assert curves["accuracy_test"].isna().all()
    assert training_curves({}).empty
