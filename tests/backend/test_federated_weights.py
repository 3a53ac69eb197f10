"""Weights in and out of ONNX models, scores of outputs against targets, and Flower's FedAvg
in its own environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vlab_backend.federated import flower
from vlab_backend.federated.weights import (
    global_weights,
    load_samples,
    read_weights,
    run_model,
    score,
    with_weights,
)


def linear(path: Path, scale: float = 1.0) -> onnx.ModelProto:
    weights = np.full((4, 3), scale, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.zeros(3, np.float32),
                                                                        "b"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "ints")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return model


def test_weights_round_trip(tmp_path: Path) -> None:
    model = linear(tmp_path / "m.onnx")
    names, arrays = global_weights(model)
    assert names == ["W", "b"]  # float initializers only
    new = [a + 1 for a in arrays]
    (tmp_path / "new.onnx").write_bytes(with_weights(model, names, new))
    back = read_weights(tmp_path / "new.onnx", names, [a.shape for a in arrays])
    for got, want in zip(back, new, strict=True):
        np.testing.assert_array_equal(got, want)
    outputs = run_model((tmp_path / "new.onnx").read_bytes(), np.ones((2, 4), np.float32))
    np.testing.assert_allclose(outputs, np.full((2, 3), 9.0))
    with pytest.raises(ValueError, match="has shape"):
        read_weights(tmp_path / "new.onnx", ["W"], [(3, 4)])
    with pytest.raises(ValueError, match="no weight 'V'"):
        read_weights(tmp_path / "new.onnx", ["V"], [(4, 3)])


def test_scores() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    onehot = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    loss, accuracy = score(probabilities, onehot)
    assert accuracy == 0.5
    assert loss == pytest.approx(-(np.log(0.7) + np.log(0.1)) / 2)
    indices = np.array([0, 1], np.int64)
    assert score(probabilities, indices) == (loss, accuracy)
    logits = np.log(probabilities) + 3.0  # the same probabilities, as logits
    assert score(logits, onehot)[0] == pytest.approx(loss)
    regression = score(np.array([[0.9], [0.2]]), np.array([1.0, 0.0]))
    assert regression == (pytest.approx((0.01 + 0.04) / 2), 1.0)
    assert score(np.array([[2.0]]), np.array([3.5]))[1] is None


def test_samples_of_a_raw_dataset(tmp_path: Path) -> None:
    path = tmp_path / "d.bin"
    np.arange(12, dtype=np.float32).tofile(path)
    assert load_samples(path, {"shape": [2, 3], "dtype": "float32"}).shape == (2, 2, 3)
    np.arange(5, dtype=np.int64).tofile(path)
    assert load_samples(path, {"shape": [], "dtype": "int64"}).shape == (5,)


@pytest.mark.slow
def test_fedavg_in_flowers_environment() -> None:
    """Flower's own FedAvg (created on first use in the cache) weights by sample counts."""
    rng = np.random.default_rng(0)
    updates = [flower.FitUpdate(f"client_{i}", [rng.normal(size=(4, 3)).astype(np.float32),
                                                 rng.normal(size=3).astype(np.float32)], n,
                                {"train_loss": float(i)})
               for i, n in enumerate((100, 300, 600))]
    params = flower.StrategyParams(min_fit_clients=2, min_evaluate_clients=2,
                                   min_available_clients=2)
    result = flower.aggregate(1, params, updates, [], failures=1)
    assert result.arrays is not None
    for position in range(2):
        expected = sum(u.num_examples * u.arrays[position] for u in updates) / 1000
        np.testing.assert_allclose(result.arrays[position], expected, rtol=1e-5)
    assert result.fit_metrics == {"train_loss": pytest.approx(1.5), "num_examples": 1000}
    evaluations = [flower.Evaluation("client_0", 1.0, 100, {"accuracy": 0.5}),
                   flower.Evaluation("client_1", 2.0, 300, {"accuracy": 0.9})]
    result = flower.aggregate(1, params, [], evaluations)
    assert result.arrays is None
    assert result.eval_loss == pytest.approx(1.75)
    assert result.eval_metrics["accuracy"] == pytest.approx(0.8)
    assert (flower.env_dir() / flower.READY_MARK).is_file()


def test_the_cache_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLAB_CACHE_DIR", str(tmp_path / "c"))
    assert flower.env_dir() == tmp_path / "c" / "envs" / f"flwr-{flower.FLWR_VERSION}"
    monkeypatch.delenv("VLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert flower.cache_dir() == tmp_path / "x" / "vlab"
