"""OpenVINO IR intake: a `.zip` holding one `.xml` and one `.bin`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend.archives import ArchiveLimits
from vlab_backend.engines.base import TensorSpec
from vlab_backend.errors import short_message
from vlab_backend.intake.inspect import ModelInfo, ModelRejected


def inspect_openvino_ir(path: Path, filename: str, max_model_bytes: int) -> ModelInfo:
    """Describe the IR archive at `path`; it may inflate to at most `max_model_bytes`."""
    import openvino as ov

    from vlab_backend.convert import extract_ir

    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        try:
            xml = extract_ir(path, Path(work), ArchiveLimits(max_total_bytes=max_model_bytes))
            model = ov.Core().read_model(str(xml))
            inputs, outputs = _specs(model.inputs), _specs(model.outputs)
        except (ValueError, RuntimeError) as exc:  # ArchiveRefused is a ValueError
            message = short_message(exc)
            for prefix in {f"{work}/", f"{Path(work).resolve()}/"}:
                message = message.replace(prefix, "")
            raise ModelRejected(f"{filename}: not a valid OpenVINO IR archive: {message}") from exc
        parameters = sum(int(np.prod(op.get_output_shape(0), dtype=np.int64))
                         for op in model.get_ops() if op.get_type_name() == "Constant"
                         and op.get_output_element_type(0).is_real())
        return ModelInfo(format="zip", inputs=inputs, outputs=outputs,
                         nb_parameters=parameters, flops=0, producer="OpenVINO IR")


def _specs(ports: list[Any]) -> list[TensorSpec]:
    return [TensorSpec(p.get_any_name(),
                       tuple(d.get_length() if d.is_static else 1 for d in p.get_partial_shape()),
                       str(np.dtype(p.get_element_type().to_dtype()))) for p in ports]
