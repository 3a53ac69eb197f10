"""ONNX weights in and out of a model, and scores of a model's outputs against targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def trainable_names(model: onnx.ModelProto) -> list[str]:
    """The model's floating-point initializers, in graph order: what FedAvg averages."""
    return [init.name for init in model.graph.initializer if init.data_type in FLOAT_TYPES]


def read_weights(path: Path, names: list[str], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The arrays named `names` in a trained model, checked against the global shapes."""
    model = onnx.load(str(path))
    found = {init.name: init for init in model.graph.initializer}
    arrays = []
    for name, shape in zip(names, shapes, strict=True):
        if name not in found:
            raise ValueError(f"the trained model has no weight {name!r}")
        array = numpy_helper.to_array(found[name])
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"the trained weight {name!r} has shape {list(array.shape)}, "
                             f"the global model {list(shape)}")
        arrays.append(array)
    return arrays


def global_weights(model: onnx.ModelProto) -> tuple[list[str], list[np.ndarray]]:
    names = trainable_names(model)
    by_name = {init.name: init for init in model.graph.initializer}
    return names, [numpy_helper.to_array(by_name[n]) for n in names]


def with_weights(model: onnx.ModelProto, names: list[str], arrays: list[np.ndarray]) -> bytes:
    """The model's bytes with the named initializers replaced (dtypes kept)."""
    replaced = onnx.ModelProto()
    replaced.CopyFrom(model)
    index = {init.name: i for i, init in enumerate(replaced.graph.initializer)}
    for name, array in zip(names, arrays, strict=True):
        old = replaced.graph.initializer[index[name]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
        replaced.graph.initializer[index[name]].CopyFrom(
            numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
    return replaced.SerializeToString()


def load_samples(path: Path, tensor: dict[str, Any]) -> np.ndarray:
    """A raw dataset (§3.6) as `[N, *shape]` of the tensor's dtype."""
    dtype = np.dtype(tensor["dtype"])
    shape = [int(d) for d in tensor["shape"]]
    data = np.fromfile(path, dtype=dtype)
    per_sample = int(np.prod(shape)) if shape else 1
    return data.reshape(-1, *shape) if per_sample else data.reshape(-1, 1)


def score(outputs: np.ndarray, targets: np.ndarray) -> tuple[float, float | None]:
    """Loss and accuracy of outputs `[N, C]` against targets (class indices, one-hot or
    probability rows). Outputs that are not probability rows are taken as logits. A single
    output column is a regression: mean squared error, accuracy only for 0/1 targets."""
    count = len(targets)
    outputs = np.asarray(outputs, dtype=np.float64).reshape(count, -1)
    flat = np.asarray(targets).reshape(count, -1)
    width = outputs.shape[1]
    if width == 1:
        truth = flat[:, 0].astype(np.float64)
        loss = float(np.mean((outputs[:, 0] - truth) ** 2))
        binary = bool(np.isin(truth, (0.0, 1.0)).all())
        accuracy = float(np.mean((outputs[:, 0] > 0.5) == (truth > 0.5))) if binary else None
        return loss, accuracy
    labels = flat[:, 0].astype(np.int64) if flat.shape[1] == 1 else np.argmax(flat, axis=1)
    probabilities = outputs
    rows = outputs.sum(axis=1)
    if outputs.min() < 0 or not np.allclose(rows, 1.0, atol=1e-3):
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        probabilities = exp / exp.sum(axis=1, keepdims=True)
    labels = np.clip(labels, 0, width - 1)
    picked = probabilities[np.arange(count), labels]
    loss = float(np.mean(-np.log(np.clip(picked, 1e-12, 1.0))))
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == labels))
    return loss, accuracy


def run_model(model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    """The model's first output for every sample, with onnxruntime in this process (the
    server-side evaluation). A model with a fixed batch of 1 is run sample by sample."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    dims = session.get_inputs()[0].shape
    wanted = np.dtype(inputs.dtype)
    if dims and dims[0] == 1 and len(inputs) > 1:
        return np.concatenate([session.run(None, {name: inputs[i:i + 1].astype(wanted)})[0]
                               for i in range(len(inputs))])
    return np.asarray(session.run(None, {name: inputs})[0])
