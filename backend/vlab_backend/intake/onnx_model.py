"""ONNX intake: structural check, self-containment, shapes, parameters and a FLOPs estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from vlab_backend.engines.base import TensorSpec
from vlab_backend.intake.inspect import ModelInfo, ModelRejected

Shape = tuple[int, ...]


def _dims(value_type: onnx.TypeProto) -> Shape | None:
    if not value_type.HasField("tensor_type") or not value_type.tensor_type.HasField("shape"):
        return None
    # Symbolic dimensions (batch) count as 1, as the engines benchmark them.
    return tuple(d.dim_value if d.dim_value > 0 else 1 for d in value_type.tensor_type.shape.dim)


def _dtype(value: onnx.ValueInfoProto, filename: str) -> str:
    """The NumPy name of a graph input's or output's element type, which datasets and random
    inputs are made of; ModelRejected for types NumPy has no name for."""
    elem_type = value.type.tensor_type.elem_type
    try:
        name = str(helper.tensor_dtype_to_np_dtype(elem_type))
        np.dtype(name)
    except (KeyError, TypeError) as exc:
        kind = "tensor" if value.type.HasField("tensor_type") else "non-tensor"
        raise ModelRejected(f"{filename}: {value.name[:100]!r} is a {kind} of element type "
                            f"{elem_type}, which the lab cannot benchmark") from exc
    return name


def _uses_external_data(model: onnx.ModelProto) -> bool:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    return any(t.data_location == TensorProto.EXTERNAL for t in tensors)


def inspect_onnx(path: Path, filename: str) -> ModelInfo:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise ModelRejected(f"{filename}: not a valid ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node or model.ir_version <= 0:
        raise ModelRejected(f"{filename}: not a valid ONNX model (no graph)")
    if _uses_external_data(model):
        raise ModelRejected(f"{filename}: the model references external data files; "
                            "upload a self-contained model (onnx.save with "
                            "save_as_external_data=False)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise ModelRejected(f"{filename}: ONNX check failed: {first_line}") from exc
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is best effort; FLOPs stay partial
        inferred = model

    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    shapes: dict[str, Shape] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        dims = _dims(value.type)
        if dims is not None:
            shapes[value.name] = dims
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        return TensorSpec(value.name, shapes.get(value.name, _dims(value.type) or ()),
                          _dtype(value, filename))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return ModelInfo(
        format="onnx",
        inputs=[spec(v) for v in graph_inputs],
        outputs=[spec(v) for v in model.graph.output],
        nb_parameters=_count_parameters(model, shapes),
        flops=_estimate_flops(inferred, shapes),
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
    )


def _numel(shape: Shape | None) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 0


def _count_parameters(model: onnx.ModelProto, shapes: dict[str, Shape]) -> int:
    """Weights stored in the graph: initializers and constant-producing nodes."""
    total = sum(_numel(tuple(t.dims)) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(_numel(tuple(a.t.dims)) for a in node.attribute if a.name == "value")
        elif node.op_type == "ConstantOfShape":
            total += _numel(shapes.get(node.output[0]))
    return total


def _estimate_flops(model: onnx.ModelProto, shapes: dict[str, Shape]) -> int:
    """Floating-point operations per inference (a multiply-add counts 2), from static shapes.

    Convolutions and matrix products dominate; other operators count one operation per
    output element. Operators whose shapes are unknown are skipped.
    """
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        op = node.op_type
        if op in ("Conv", "ConvTranspose") and len(node.input) > 1:
            weight = shapes.get(node.input[1])
            if weight is None:
                continue
            kernel = _numel(weight[2:]) if len(weight) > 2 else 1
            if op == "Conv":
                total += 2 * _numel(out) * weight[1] * kernel
            else:
                src = shapes.get(node.input[0])
                total += 2 * _numel(src) * weight[1] * kernel if src else 0
        elif op in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            if a is None:
                continue
            transposed = op == "Gemm" and any(
                attr.name == "transA" and attr.i for attr in node.attribute)
            k = a[0] if transposed and len(a) == 2 else a[-1]
            total += 2 * _numel(out) * k
        elif op in ("MaxPool", "AveragePool"):
            window = next((tuple(a.ints) for a in node.attribute if a.name == "kernel_shape"),
                          (1,))
            total += _numel(out) * _numel(window)
        elif op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum"):
            total += _numel(shapes.get(node.input[0]))
        elif op not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
                        "Shape", "Constant", "ConstantOfShape", "Concat", "Dropout", "Gather",
                        "Slice", "Cast"):
            total += _numel(out)
    return total
