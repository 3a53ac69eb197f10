"""Model conversions offered by `/api/models/convert`.

- `onnx_opset<N>`: ONNX to another opset (onnx.version_converter);
- `onnx_fp16`: ONNX float32 weights and activations to float16, inputs and outputs kept
  float32 so that datasets stay valid (onnxconverter-common), after folding the constant
  subgraphs (weights computed in-graph, such as the `ConstantOfShape` nodes of the onnx
  package's light model zoo) into initializers;
- `openvino`: ONNX or TFLite to OpenVINO IR (ov.convert_model), packed as one `.zip` file
  holding `model.xml` and `model.bin`;
- `tflite`: ONNX to TFLite, float32 (onnx2tf);
- `tflite_int8`: ONNX to TFLite, full-integer int8 with int8 inputs and outputs (onnx2tf,
  per-channel), calibrated on a representative dataset the user uploaded (a raw dataset:
  float32 samples of the ONNX model's inputs, concatenated in model order, as for TYPE2);
- `onnx` (from TFLite): TFLite to ONNX (tf2onnx, opset 17).

onnx2tf and tf2onnx run in their own cached environment (`vlab_backend.toolenv`: onnx2tf
pins TensorFlow, numpy and onnx to versions the server does not use), created once per
machine (about 2.6 GB, a minute) on the first conversion that needs it. Each run can take
minutes and gigabytes: at most `VLAB_MAX_CONVERSIONS` of them run at once in a server
(`conversion_slot`; the in-process ONNX conversions are cheap and not counted), and they start
from the jobs' minimal environment (`tool_environment`), never the server's secrets.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlab_backend.archives import (
    ArchiveLimits,
    ArchiveRefused,
    extract,
    open_archive,
    safe_member_name,
)
from vlab_backend.errors import short_message
from vlab_backend.pipeline.job import job_environment

CONVERSIONS = ("onnx_opset<N>", "onnx_fp16", "openvino", "tflite", "tflite_int8", "onnx")
# Conversions that need a representative dataset (`dataset=` of /api/models/convert).
NEEDS_DATASET = ("tflite_int8",)
# onnx2tf reads opset >= 13 correctly (older Softmax axis semantics are mistranslated) and its
# onnx (1.19) reads IR <= 10 and opsets <= 21 safely.
ONNX2TF_MIN_OPSET = 13
ONNX2TF_MAX_OPSET = 21
ONNX2TF_MAX_IR = 10
TF2ONNX_OPSET = 17
# onnx2tf's run on a large network takes tens of seconds (light_squeezenet: 28 s).
TOOL_TIMEOUT_S = 900
# The calibration sample onnx2tf downloads from GitHub when every input looks like an image,
# even when given calibration data: placed in its working directory, nothing is fetched.
ONNX2TF_IMAGE_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
IR_XML = "model.xml"
IR_BIN = "model.bin"
# Conversions that run an external tool (onnx2tf, tf2onnx) in its own environment: minutes
# and gigabytes each, hence limited (`conversion_slot`).
EXTERNAL_TOOL_TARGETS = ("tflite", "tflite_int8", "onnx")


class ConversionError(ValueError):
    """The conversion is unknown, does not apply to this model, or failed."""


class ConverterBusy(RuntimeError):
    """Every conversion slot is taken (HTTP 503): try again shortly."""

    def __init__(self, running: int) -> None:
        super().__init__(f"the converter is busy with {running} conversion(s); try again "
                         "shortly")
        self.running = running


class ConversionSlots:
    """At most `limit` external-tool conversions at once; taken without waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphore = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.running = 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the block; ConverterBusy at once when none is free."""
        if not self._semaphore.acquire(blocking=False):
            with self._lock:
                running = self.running
            raise ConverterBusy(running or self.limit)
        with self._lock:
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._semaphore.release()


_slots: dict[int, ConversionSlots] = {}
_slots_lock = threading.Lock()


def conversion_slots(limit: int) -> ConversionSlots:
    """This server process's slots for `limit` (`VLAB_MAX_CONVERSIONS`): one set per process."""
    with _slots_lock:
        if limit not in _slots:
            _slots[limit] = ConversionSlots(limit)
        return _slots[limit]


@contextmanager
def conversion_slot(target: str, limit: int) -> Iterator[None]:
    """Hold one of the server's `limit` slots while a conversion to `target` runs, when it
    runs an external tool (the in-process ONNX conversions take none). ConverterBusy when
    every slot is taken: never waits."""
    if target not in EXTERNAL_TOOL_TARGETS:
        yield
        return
    with conversion_slots(limit).hold():
        yield


@dataclass
class Conversion:
    """What a conversion did, for the converted model's lineage: the tool and its options."""

    tool: str
    options: dict[str, Any] = field(default_factory=dict)


def converted_name(filename: str, target: str) -> str:
    stem = Path(filename).stem
    if target == "openvino":
        return f"{stem}_openvino.zip"
    if target in ("tflite", "tflite_int8"):
        return f"{stem}_{'int8' if target == 'tflite_int8' else 'float32'}.tflite"
    if target == "onnx":
        return f"{stem}.onnx"
    return f"{stem}_{target.removeprefix('onnx_')}.onnx"


def check_conversion(source_format: str, target: str, dataset: Path | None = None) -> None:
    """ConversionError unless `target` is a known conversion that applies to `source_format`
    models and has the dataset it needs: checked before any tool starts."""
    opset = re.fullmatch(r"onnx_opset(\d{1,2})", target)
    if target not in CONVERSIONS and opset is None:
        raise ConversionError(f"unknown conversion {target!r}; available: "
                              f"{', '.join(CONVERSIONS)}")
    if target == "openvino":
        if source_format not in ("onnx", "tflite"):
            raise ConversionError(f"cannot convert {source_format} models to OpenVINO IR")
    elif target == "onnx":
        if source_format != "tflite":
            raise ConversionError(f"conversion to onnx applies to TFLite models, not "
                                  f"{source_format} (ONNX models convert with onnx_opset<N>)")
    elif source_format != "onnx":
        raise ConversionError(f"{target} applies to ONNX models, not {source_format}")
    if target in NEEDS_DATASET and dataset is None:
        raise ConversionError(f"{target} needs a representative dataset: upload one "
                              "(POST /api/benchmarks/datasets/upload: float32 samples of the "
                              "model's inputs) and name it with dataset=")


def convert_traced(source: Path, source_format: str, target: str, out_dir: Path,
                   dataset: Path | None = None) -> tuple[Path, Conversion]:
    """`convert`, and what it did (tool and options) for the converted model's lineage."""
    check_conversion(source_format, target, dataset)
    if target in ("tflite", "tflite_int8"):
        return _onnx_to_tflite(source, out_dir, dataset if target == "tflite_int8" else None)
    if target == "onnx":
        return _tflite_to_onnx(source, out_dir)
    path = convert(source, source_format, target, out_dir)
    if target == "openvino":
        from importlib.metadata import version

        return path, Conversion(f"openvino {version('openvino')}")
    if target == "onnx_fp16":
        from importlib.metadata import version

        return path, Conversion(f"onnxconverter-common {version('onnxconverter-common')}",
                                {"keep_io_types": True, "fold_constants": True})
    from importlib.metadata import version

    return path, Conversion(f"onnx {version('onnx')}",
                            {"opset": int(target.removeprefix("onnx_opset"))})


def convert(source: Path, source_format: str, target: str, out_dir: Path,
            dataset: Path | None = None) -> Path:
    """Write the converted model into `out_dir` and return its path."""
    opset = re.fullmatch(r"onnx_opset(\d{1,2})", target)
    check_conversion(source_format, target, dataset)
    if target in ("tflite", "tflite_int8", "onnx"):
        return convert_traced(source, source_format, target, out_dir, dataset)[0]
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

            with warnings.catch_warnings():  # one per weight truncated to float16's range
                warnings.simplefilter("ignore")
                converted = float16.convert_float_to_float16(fold_constants(model),
                                                             keep_io_types=True)
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

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: not a warning per old-style initializer
    ort.InferenceSession(model.SerializeToString(),  # type: ignore[attr-defined]
                         sess_options=options, providers=["CPUExecutionProvider"])


# Operators whose output is not a function of their inputs: never folded.
_NOT_FOLDED = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                         "RandomUniformLike", "Multinomial", "Bernoulli"})


def fold_constants(model: Any) -> Any:
    """The model with every node whose inputs are all constant (initializers, or outputs of
    nodes folded before it) replaced by initializers holding its outputs, computed by ONNX's
    reference evaluator at the model's own opsets; initializers are taken out of the graph
    inputs (IR >= 4), so that converters see weights as weights. Graph outputs, nodes of
    other domains, nodes with subgraphs and random operators are kept."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    outputs = {output.name for output in graph.output}
    kept, folded = [], []
    for node in graph.node:
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NOT_FOLDED
                    and not set(node.output) & outputs
                    and all(name == "" or name in constants for name in node.input)
                    and not any(attr.type in (onnx.AttributeProto.GRAPH,
                                              onnx.AttributeProto.GRAPHS)
                                for attr in node.attribute))
        if not foldable:
            kept.append(node)
            continue
        single = helper.make_model(
            helper.make_graph([node], "fold", [],
                              [helper.make_empty_tensor_value_info(o) for o in node.output],
                              initializer=[constants[name] for name in node.input if name]),
            opset_imports=model.opset_import, ir_version=max(model.ir_version, 4))
        values = ReferenceEvaluator(single).run(None, {})
        for name, value in zip(node.output, values, strict=False):
            constants[name] = numpy_helper.from_array(np.asarray(value), name)
            folded.append(constants[name])
    if not folded:
        return model
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(folded)
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    del graph.input[:]
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    return model


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


# -- TFLite: onnx2tf and tf2onnx in their own environment ---------------------------------------


def _tool_env() -> tuple[Path, dict[str, str]]:
    """The onnx2tf environment's interpreter (created on first use) and the environment its
    tools run with: its `bin` first on PATH (onnx2tf runs `onnxsim` as a command), no
    telemetry or GPU probing, quiet TensorFlow."""
    from vlab_backend.toolenv import ONNX2TF, ToolEnvError, ensure

    try:
        python = ensure(ONNX2TF)
    except ToolEnvError as exc:
        raise ConversionError(str(exc)) from exc
    return python, tool_environment(ONNX2TF.bin_dir)


def tool_environment(bin_dir: Path) -> dict[str, str]:
    """The environment onnx2tf and tf2onnx run with: the jobs' minimal one (no token, no
    database URL: `job_environment`), the tool environment's `bin` first on PATH, without the
    server's PYTHONPATH and virtual environment (they must not shadow the tool's pins)."""
    env = job_environment()
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}",
                "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3",
                "PYTHONWARNINGS": "ignore"})
    env.setdefault("HOME", str(Path.home()))
    return env


def _run_tool(command: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"{what} took more than {TOOL_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines()
                 if line.strip() and not line.startswith((" ", "Traceback"))]
        errors = [line for line in lines if "Error" in line or "error" in line]
        raise ConversionError(f"{what} failed: {(errors or lines or ['no output'])[-1][:400]}")


def _graph_inputs(model: Any) -> list[tuple[str, list[int], Any]]:
    """The model's real inputs (not initializers): name, shape (unknown dimensions as 1, as
    onnx2tf's batch size 1 fixes them) and numpy dtype."""
    from onnx import helper

    initializers = {init.name for init in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1
                 for dim in tensor.shape.dim]
        found.append((value.name, shape, helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
    return found


def _prepare_for_onnx2tf(source: Path, target: Path) -> tuple[Any, dict[str, Any]]:
    """A copy of the model onnx2tf reads right (onnxsim rewrites its input in place, so the
    stored model is never handed over): opset raised to 13 (older Softmax semantics are
    mistranslated) or lowered to 21, IR at most 10, constants folded."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(source))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    options: dict[str, Any] = {"source_opset": opset}
    wanted = min(max(opset, ONNX2TF_MIN_OPSET), ONNX2TF_MAX_OPSET)
    try:
        model = fold_constants(model)
        if wanted != opset:
            model = version_converter.convert_version(model, wanted)
            options["opset"] = wanted
    except Exception as exc:  # converters raise many unrelated types
        raise ConversionError(f"cannot prepare the model for onnx2tf: {short_message(exc)}"
                              ) from exc
    model.ir_version = min(model.ir_version, ONNX2TF_MAX_IR)
    onnx.save(model, str(target))
    return model, options


def _calibration(model: Any, dataset: Path, work: Path) -> tuple[list[list[Any]], int]:
    """onnx2tf's calibration inputs from a raw dataset: one .npy per input (NCHW images
    turned NHWC, as the TFLite model takes them), with mean 0 and std 1 (the samples are
    already preprocessed). ConversionError if the dataset does not fit the inputs."""
    inputs = _graph_inputs(model)
    sample = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
                 for _name, shape, dtype in inputs)
    size = dataset.stat().st_size
    if any(np.dtype(dtype) != np.float32 for _name, _shape, dtype in inputs):
        raise ConversionError("int8 calibration takes models whose inputs are all float32")
    if size == 0 or size % sample:
        raise ConversionError(f"the representative dataset has {size} bytes, not a multiple "
                              f"of the model's input size ({sample} bytes per sample)")
    count = size // sample
    raw = np.fromfile(dataset, dtype=np.float32).reshape(count, -1)
    entries, offset = [], 0
    for position, (name, shape, _dtype) in enumerate(inputs):
        width = int(np.prod(shape))
        data = raw[:, offset:offset + width].reshape([count, *shape[1:]])
        offset += width
        if data.ndim == 4:
            data = data.transpose(0, 2, 3, 1)
        path = work / f"calibration_{position}.npy"
        np.save(path, np.ascontiguousarray(data))
        ones = [1] * (data.ndim - 1)
        entries.append([name, str(path), np.zeros([*ones, data.shape[-1]], np.float32),
                        np.ones([*ones, data.shape[-1]], np.float32)])
    return entries, count


# Run in the onnx2tf environment: `python -c SCRIPT SPEC.npy` (a pickled dict in an .npy, so
# that the calibration's mean and std arrays travel as numpy arrays).
_ONNX2TF_SCRIPT = """
import sys, numpy as np, onnx2tf
spec = np.load(sys.argv[1], allow_pickle=True).item()
onnx2tf.convert(non_verbose=True, **spec)
"""


def _onnx_to_tflite(source: Path, out_dir: Path,
                    dataset: Path | None) -> tuple[Path, Conversion]:
    from vlab_backend.toolenv import ONNX2TF_VERSION

    python, env = _tool_env()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp).resolve()
        model, options = _prepare_for_onnx2tf(source, work / "model.onnx")
        spec: dict[str, Any] = {"input_onnx_file_path": str(work / "model.onnx"),
                                "output_folder_path": str(work / "out"), "batch_size": 1}
        wanted = "model_float32.tflite"
        if dataset is not None:
            entries, count = _calibration(model, dataset, work)
            spec.update(output_integer_quantized_tflite=True, quant_type="per-channel",
                        input_quant_dtype="int8", output_quant_dtype="int8",
                        custom_input_op_name_np_data_path=entries)
            options.update(quantization="full-integer int8, per-channel",
                           input_output="int8", calibration_samples=count)
            wanted = "model_full_integer_quant.tflite"
        np.save(work / ONNX2TF_IMAGE_SAMPLE,
                np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        np.save(work / "spec.npy", np.array(spec, dtype=object), allow_pickle=True)
        _run_tool([str(python), "-c", _ONNX2TF_SCRIPT, str(work / "spec.npy")], env, work,
                  "onnx2tf")
        produced = work / "out" / wanted
        if not produced.is_file():
            raise ConversionError(f"onnx2tf did not write {wanted}")
        target = out_dir / "converted.tflite"
        target.write_bytes(produced.read_bytes())
    return target, Conversion(f"onnx2tf {ONNX2TF_VERSION}", options)


def _tflite_to_onnx(source: Path, out_dir: Path) -> tuple[Path, Conversion]:
    from vlab_backend.toolenv import TF2ONNX_VERSION

    python, env = _tool_env()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        work = Path(tmp).resolve()
        (work / "model.tflite").write_bytes(source.read_bytes())
        _run_tool([str(python), "-m", "tf2onnx.convert", "--tflite", "model.tflite",
                   "--output", "model.onnx", "--opset", str(TF2ONNX_OPSET)], env, work,
                  "tf2onnx")
        target = out_dir / "converted.onnx"
        target.write_bytes((work / "model.onnx").read_bytes())
    try:
        import onnx

        onnx.checker.check_model(str(target))
        _check_loads(onnx.load(str(target)))
    except Exception as exc:  # the checker and ONNX Runtime raise their own types
        raise ConversionError(f"tf2onnx wrote a model that does not load: "
                              f"{short_message(exc)}") from exc
    return target, Conversion(f"tf2onnx {TF2ONNX_VERSION}", {"opset": TF2ONNX_OPSET})
