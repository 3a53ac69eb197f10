"""Model conversions offered by `/api/models/convert`.

- `onnx_opset<N>`: ONNX to another opset (onnx.version_converter);
- `onnx_fp16`: ONNX float32 weights and activations to float16, inputs and outputs kept
  float32 so that datasets stay valid (onnxconverter-common);
- `openvino`: ONNX or TFLite to OpenVINO IR (ov.convert_model), packed as one `.zip` file
  holding `model.xml` and `model.bin`.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from pathlib import Path

from vlab_backend.archives import (
    ArchiveLimits,
    ArchiveRefused,
    extract,
    open_archive,
    safe_member_name,
)
from vlab_backend.errors import short_message

CONVERSIONS = ("onnx_opset<N>", "onnx_fp16", "openvino")
IR_XML = "model.xml"
IR_BIN = "model.bin"


class ConversionError(ValueError):
    """The conversion is unknown, does not apply to this model, or failed."""


def converted_name(filename: str, target: str) -> str:
    stem = Path(filename).stem
    if target == "openvino":
        return f"{stem}_openvino.zip"
    return f"{stem}_{target.removeprefix('onnx_')}.onnx"


def convert(source: Path, source_format: str, target: str, out_dir: Path) -> Path:
    """Write the converted model into `out_dir` and return its path."""
    opset = re.fullmatch(r"onnx_opset(\d{1,2})", target)
    if target not in ("onnx_fp16", "openvino") and opset is None:
        raise ConversionError(f"unknown conversion {target!r}; available: "
                              f"{', '.join(CONVERSIONS)}")
    if target == "openvino":
        if source_format not in ("onnx", "tflite"):
            raise ConversionError(f"cannot convert {source_format} models to OpenVINO IR")
        return _to_openvino(source, source_format, out_dir)
    if source_format != "onnx":
        raise ConversionError(f"{target} applies to ONNX models, not {source_format}")
    import onnx

    model = onnx.load(str(source))
    try:
        if opset is not None:
            from onnx import version_converter

            converted = version_converter.convert_version(model, int(opset.group(1)))
        else:
            from onnxconverter_common import float16

            converted = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.checker.check_model(converted)
        _check_loads(converted)
    except Exception as exc:  # converters raise many unrelated types
        raise ConversionError(f"conversion to {target} failed: {short_message(exc)}") from exc
    target_path = out_dir / "converted.onnx"
    onnx.save(converted, str(target_path))
    return target_path


def _check_loads(model: object) -> None:
    """The checker accepts some models no runtime loads; make sure ONNX Runtime does."""
    import onnxruntime as ort

    ort.InferenceSession(model.SerializeToString(),  # type: ignore[attr-defined]
                         providers=["CPUExecutionProvider"])


def _to_openvino(source: Path, source_format: str, out_dir: Path) -> Path:
    import openvino as ov

    with tempfile.TemporaryDirectory(dir=out_dir) as work:
        typed = Path(work) / f"input.{source_format}"
        typed.write_bytes(source.read_bytes())
        try:
            model = ov.convert_model(str(typed))
            ov.save_model(model, str(Path(work) / IR_XML))
        except Exception as exc:  # OpenVINO raises its own exception types
            raise ConversionError(
                f"conversion to OpenVINO IR failed: {short_message(exc)}") from exc
        target_path = out_dir / "converted.zip"
        with zipfile.ZipFile(target_path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(Path(work) / IR_XML, IR_XML)
            archive.write(Path(work) / IR_BIN, IR_BIN)
    return target_path


def extract_ir(archive_path: Path, into: Path, limits: ArchiveLimits) -> Path:
    """Unpack an IR archive within `limits`; returns the path of its .xml.

    Raises ArchiveRefused (a ValueError) for a bad archive or one that breaks its limits."""
    with open_archive(archive_path, limits) as archive:
        names = archive.namelist()
    xml = [n for n in names if n.endswith(".xml") and safe_member_name(n) and "/" not in n]
    bins = [n for n in names if n.endswith(".bin") and safe_member_name(n) and "/" not in n]
    if len(xml) != 1 or len(bins) != 1:
        raise ArchiveRefused("an OpenVINO IR archive holds exactly one .xml and one .bin file "
                             "at its top level")
    return extract(archive_path, [xml[0], bins[0]], into, limits)[0]
