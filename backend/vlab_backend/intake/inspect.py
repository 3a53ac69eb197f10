"""Dispatch on the model format and describe the model."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlab_backend.engines.base import TensorSpec
from vlab_backend.errors import short_message

TFLITE_IDENTIFIER = b"TFL3"
log = logging.getLogger(__name__)


class ModelRejected(ValueError):
    """The upload is not a model this lab can run; the message says why."""


@dataclass
class ModelInfo:
    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    nb_parameters: int
    flops: int
    opset: int | None = None
    producer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_bytes(self) -> int:
        """Bytes of one sample: every input, in model order."""
        return sum(t.nbytes for t in self.inputs)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_bytes"] = self.input_bytes
        data["output_bytes"] = self.output_bytes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        def specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
            return [TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in items]

        return cls(format=data["format"], inputs=specs(data["inputs"]),
                   outputs=specs(data["outputs"]), nb_parameters=data["nb_parameters"],
                   flops=data["flops"], opset=data.get("opset"),
                   producer=data.get("producer", ""), extra=data.get("extra", {}))


def detect_format(filename: str, head: bytes) -> str:
    """'onnx' or 'tflite', from the content first and the extension second."""
    suffix = Path(filename).suffix.lower()
    if head[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    if suffix == ".tflite":
        raise ModelRejected(f"{filename}: not a TFLite model (no TFL3 identifier)")
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".zip" and head[:2] == b"PK":
        return "zip"
    raise ModelRejected(f"{filename}: unsupported model file; expected a .onnx or .tflite "
                        "model, or an OpenVINO IR .zip")


def inspect_model(path: Path, filename: str, max_model_bytes: int | None = None) -> ModelInfo:
    """Check the model at `path` (uploaded as `filename`) and describe it; an archive may
    inflate to at most `max_model_bytes` (by default the server's default model size limit).

    Raises ModelRejected with a message fit for the user, whatever the parsers raise."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head:
        raise ModelRejected(f"{filename}: the file is empty")
    fmt = detect_format(filename, head)
    try:
        return _inspect(path, filename, fmt, max_model_bytes)
    except ModelRejected:
        raise
    except UnicodeDecodeError as exc:  # protobuf and flatbuffers decode names only when read
        raise ModelRejected(f"{filename}: a name in the {fmt} model is not UTF-8") from exc
    except Exception as exc:  # a hostile model can break a parser in ways no one lists
        log.warning("intake of %s failed unexpectedly", filename, exc_info=True)
        raise ModelRejected(f"{filename}: the {fmt} model cannot be read: "
                            f"{short_message(exc)}") from exc


def _inspect(path: Path, filename: str, fmt: str, max_model_bytes: int | None) -> ModelInfo:
    if fmt == "onnx":
        from vlab_backend.intake.onnx_model import inspect_onnx

        return inspect_onnx(path, filename)
    if fmt == "zip":
        from vlab_backend.intake.openvino_model import inspect_openvino_ir

        if max_model_bytes is None:
            from vlab_backend.config import Settings

            max_model_bytes = int(Settings.model_fields["max_model_bytes"].default)
        return inspect_openvino_ir(path, filename, max_model_bytes)
    from vlab_backend.intake.tflite_model import inspect_tflite

    return inspect_tflite(path, filename)
