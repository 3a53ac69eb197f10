"""The user's model made trainable by the training engine (the support step of a TYPE3 job on
`host-cpu`), in the lab's interpreter, whose onnx reads every model a user can upload.

What it writes in its output directory:

- `model.onnx`: the user's graph, down-converted to opset 17 / IR 8 where it was saved with
  newer versions (the engine, onnx 1.17 and ORT 1.19, reads IR <= 10 and opset <= 21), float
  `Constant` weights made initializers, a trailing Softmax or LogSoftmax cut when the loss is
  cross-entropy (which takes logits), the batch dimension of its input and output made free;
- `plan.json`: the learning parameters with their defaults, the tensors and files of the ODT
  config, how the targets are given, the trainable and the frozen initializers, and what was
  cut, for `report` to put back;
- `ort_train.py`: the trainer, which the build and manager steps run in the training
  environment.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from vlab_backend.intake import ModelRejected, inspect_model
from vlab_backend.odt import ConfigError, validate_odt_config
from vlab_backend.training import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_OPTIMIZER,
    DEFAULT_SEED,
    DEFAULT_SHUFFLE,
    LOSSES,
    OPTIMIZERS,
    TRAINING_IR_VERSION,
    TRAINING_OPSET,
)
from vlab_backend.training.tensors import check_config_against_model, is_class_index_target


class PrepareError(Exception):
    """Why the model or its config cannot be trained here, in words."""


# Operators the engine cannot train, found before it is asked: the gradient of AveragePool
# kills onnxruntime-training 1.19.2 on CPU with SIGFPE, with no Python error to report.
CRASHING_OPS = {"AveragePool": "its gradient crashes onnxruntime-training 1.19.2 on CPU "
                               "(SIGFPE); GlobalAveragePool or MaxPool train"}
# Inputs of an operator that are weights (trained) wherever they are float initializers.
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
                 "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
                 "LayerNormalization": (1, 2), "PRelu": (1,)}
# Inputs that are settings, never trained: running statistics, bounds, scales, pads, ratios.
SETTING_INPUTS = {"BatchNormalization": (3, 4), "Clip": (1, 2), "Resize": (1, 2, 3),
                  "Upsample": (1,), "Pad": (1, 2, 3), "Dropout": (1, 2)}
SOFTMAX_OPS = ("Softmax", "LogSoftmax")


def _encode(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def learning_plan(params: dict[str, Any], classes: int, scalar_output: bool) -> dict[str, Any]:
    """The learning parameters with their defaults; PrepareError naming a bad one. The loss
    defaults to cross-entropy, or to MSE for a model with one output value per sample."""
    where = "learning_parameters"
    optimizer = str(params.get("optimizer", DEFAULT_OPTIMIZER)).lower()
    if optimizer not in OPTIMIZERS:
        raise PrepareError(f"{where}.optimizer {params['optimizer']!r} is not one of: AdamW, SGD")
    default_loss = "mse" if scalar_output else "cross_entropy"
    loss = str(params.get("loss", default_loss)).lower().replace("-", "_")
    loss = {"crossentropy": "cross_entropy", "ce": "cross_entropy"}.get(loss, loss)
    if loss not in LOSSES:
        raise PrepareError(f"{where}.loss {params['loss']!r} is not one of: "
                           f"{', '.join(LOSSES)}")
    if loss == "cross_entropy" and (scalar_output or classes < 2):
        raise PrepareError(f"{where}.loss cross_entropy needs a model output of shape "
                           "[N, classes] with at least 2 classes; use mse")
    return {"epochs": int(params["epochs"]), "batch_size": int(params["batch_size"]),
            "learning_rate": float(params.get("learning_rate", DEFAULT_LEARNING_RATE)),
            "optimizer": optimizer, "loss": loss,
            "shuffle": bool(params.get("shuffle", DEFAULT_SHUFFLE)),
            "seed": int(params.get("seed", DEFAULT_SEED))}


def _down_convert(model: onnx.ModelProto) -> dict[str, int] | None:
    """Opset and IR versions the engine reads; what changed, or None."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    before = {"opset": opset or 0, "ir_version": model.ir_version}
    converted = model
    if opset is not None and opset > TRAINING_OPSET:
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(model, TRAINING_OPSET)
        except Exception as exc:  # the converter raises several unrelated types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PrepareError(f"the model (opset {opset}) could not be converted to opset "
                               f"{TRAINING_OPSET}, which the training engine reads: "
                               f"{first}") from exc
        model.CopyFrom(converted)
    model.ir_version = min(model.ir_version, TRAINING_IR_VERSION)
    after = {"opset": min(before["opset"], TRAINING_OPSET), "ir_version": model.ir_version}
    if after == before:
        return None
    return {"from_opset": before["opset"], "to_opset": after["opset"],
            "from_ir_version": before["ir_version"], "to_ir_version": after["ir_version"]}


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Float `Constant` nodes become initializers, so that weights stored that way train."""
    keep = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) \
            if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if value is not None and value.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE) \
                and int(np.prod(value.dims, dtype=np.int64)) > 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def parameters(graph: onnx.GraphProto) -> tuple[list[str], list[str]]:
    """Trainable and frozen float initializers. Trained: the weights of the operators in
    WEIGHT_INPUTS, and any other float initializer of more than one element that is no
    operator's setting (SETTING_INPUTS); frozen: the rest (scalars, statistics, bounds)."""
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    weights: set[str] = set()
    settings: set[str] = set()
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name not in floats:
                continue
            if index in WEIGHT_INPUTS.get(node.op_type, ()):
                weights.add(name)
            elif index in SETTING_INPUTS.get(node.op_type, ()):
                settings.add(name)
    trainable = [name for name, tensor in floats.items()
                 if name not in settings and (name in weights or int(np.prod(
                     tensor.dims, dtype=np.int64)) > 1)]
    frozen = [name for name in floats if name not in trainable]
    return trainable, frozen


def _free_batch(value: onnx.ValueInfoProto) -> None:
    dims = value.type.tensor_type.shape.dim
    if dims:
        dims[0].Clear()
        dims[0].dim_param = "batch"


def _target_kind(output: dict[str, Any], per_sample: list[int], root: Path) -> str:
    """`indices` (one class index per sample), `one_hot` (rows of 0 and one 1, read from the
    training targets file) or `values` (anything else: regression targets)."""
    if is_class_index_target(output) and per_sample != [1]:
        return "indices"
    path = root / output["train_file"]
    try:
        data = np.fromfile(path, dtype=np.dtype(output["dtype"]))
    except (OSError, ValueError):
        return "values"
    width = int(np.prod(per_sample, dtype=np.int64)) if per_sample else 1
    if width < 2 or data.size == 0 or data.size % width:
        return "values"
    rows = data.reshape(-1, width)
    one_hot = bool(np.isin(rows, (0, 1)).all() and (rows.sum(axis=1) == 1).all())
    return "one_hot" if one_hot else "values"


def prepare(model_path: Path, config_path: Path, out: Path, root: Path | None = None) -> dict[
        str, Any]:
    """Write `model.onnx`, `plan.json` and `ort_train.py` to `out`; returns the plan.
    `root`: where the dataset files of the config are (the job's root: the working
    directory)."""
    root = root or Path.cwd()
    try:
        config = validate_odt_config(json.loads(config_path.read_text()))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        raise PrepareError(f"invalid ODT config {config_path.name}: {exc}") from exc
    try:
        info = inspect_model(model_path, model_path.name)
    except ModelRejected as exc:
        raise PrepareError(str(exc)) from exc
    if info.format != "onnx":
        raise PrepareError(f"{model_path.name}: on-device training here takes ONNX models")
    try:
        check_config_against_model(config, info)
    except ConfigError as exc:
        raise PrepareError(f"the ODT config does not fit the model: {exc}") from exc
    model = onnx.load(str(model_path))
    graph = model.graph
    for index, node in enumerate(graph.node):
        if node.op_type in CRASHING_OPS:
            raise PrepareError(f"cannot train this model: operator {node.op_type} (node "
                               f"{node.name or f'#{index}'}): {CRASHING_OPS[node.op_type]}")
    if len(graph.output) != 1:
        raise PrepareError(f"on-device training takes a model with one output; this one has "
                           f"{len(graph.output)} ("
                           + ", ".join(o.name for o in graph.output) + ")")
    model_output = info.outputs[0]
    per_sample = [int(d) for d in model_output.shape[1:]]
    classes = per_sample[-1] if per_sample else 1
    plan = learning_plan(config["learning_parameters"], classes,
                         scalar_output=per_sample in ([], [1]))
    if plan["loss"] == "cross_entropy" and len(per_sample) != 1:
        raise PrepareError("learning_parameters.loss cross_entropy needs a model output of "
                           f"shape [N, classes]; this one is {list(model_output.shape)}: use mse")
    converted = _down_convert(model)
    graph = model.graph
    _constants_to_initializers(graph)

    original_output = onnx.ValueInfoProto()
    original_output.CopyFrom(graph.output[0])
    cut = None
    producer = next((n for n in graph.node if original_output.name in n.output), None)
    consumers = [n for n in graph.node if original_output.name in n.input]
    if plan["loss"] == "cross_entropy" and producer is not None \
            and producer.op_type in SOFTMAX_OPS and not consumers:
        cut = producer
        graph.node.remove(producer)
        graph.output[0].name = producer.input[0]
    for value in (*[v for v in graph.input if v.name == info.inputs[0].name], graph.output[0]):
        _free_batch(value)
    del graph.value_info[:]  # shape hints from before the changes; the engine infers them
    trainable, frozen = parameters(graph)
    if not trainable:
        raise PrepareError("the model has no trainable weights (float initializers)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise PrepareError(f"the prepared model is not valid: {str(exc).splitlines()[0]}") \
            from exc

    plan.update({
        "input": config["input"], "output": config["output"],
        "output_shape": per_sample, "output_dtype": model_output.dtype, "classes": classes,
        "targets": _target_kind(config["output"], per_sample, root),
        "trained_output": graph.output[0].name, "trainable": trainable, "frozen": frozen,
        "converted": converted,
        "cut": None if cut is None else {"op_type": cut.op_type, "node": _encode(cut),
                                         "output": _encode(original_output)},
        "nb_trainable_parameters": sum(int(np.prod(t.dims, dtype=np.int64))
                                       for t in graph.initializer if t.name in trainable),
    })
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    shutil.copyfile(Path(__file__).with_name("ort_train.py"), out / "ort_train.py")
    return plan


def decode_node(text: str) -> onnx.NodeProto:
    node = onnx.NodeProto()
    node.ParseFromString(base64.b64decode(text))
    return node


def decode_value_info(text: str) -> onnx.ValueInfoProto:
    value = onnx.ValueInfoProto()
    value.ParseFromString(base64.b64decode(text))
    return value


def numpy_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The model's initializers as arrays (tests compare weights before and after)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
