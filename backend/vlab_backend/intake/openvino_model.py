"""OpenVINO IR intake: a `.zip` holding one `.xml` and one `.bin`."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np

from vlab_backend.engines.base import TensorSpec
from vlab_backend.intake.inspect import ModelInfo, ModelRejected


def inspect_openvino_ir(path: Path, filename: str) -> ModelInfo:
    import openvino as ov

    from vlab_backend.convert import extract_ir

    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        try:
            xml = extract_ir(path, Path(work))
            model = ov.Core().read_model(str(xml))
        except (zipfile.BadZipFile, ValueError, RuntimeError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise ModelRejected(f"{filename}: not a valid OpenVINO IR archive: {message}") from exc

        def specs(ports: list[ov.Output]) -> list[TensorSpec]:
            return [TensorSpec(p.get_any_name(),
                               tuple(d.get_length() if d.is_static else 1
                                     for d in p.get_partial_shape()),
                               str(np.dtype(p.get_element_type().to_dtype()))) for p in ports]

        parameters = sum(int(np.prod(op.get_output_shape(0), dtype=np.int64))
                         for op in model.get_ops() if op.get_type_name() == "Constant"
                         and op.get_output_element_type(0).is_real())
        return ModelInfo(format="zip", inputs=specs(model.inputs), outputs=specs(model.outputs),
                         nb_parameters=parameters, flops=0, producer="OpenVINO IR")
