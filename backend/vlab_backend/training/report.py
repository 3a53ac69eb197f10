"""The end of a TYPE3 job on `host-cpu` (manager step, in the lab's interpreter): the trained
model finished and checked, and `report_odt.json` written.

The trained graph comes from the trainer as it was trained; a Softmax cut for cross-entropy
is put back, the opset domains the training engine adds (ai.onnx.training, com.microsoft, ...)
are dropped where no node uses them, and the model must load in the lab's onnxruntime (the
engine that benchmarks it next, as TYPE1 or TYPE2).
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import onnx

from vlab_backend.harness import sysinfo
from vlab_backend.training import TRAIN_ENGINE
from vlab_backend.training.prepare import decode_node, decode_value_info

REPORT_VERSION = "1.0"
# Keys of the dAIEdge `report_odt.json`, in the published spelling; null where unknown here.
DAIEDGE_ODT_KEYS = (
    "version", "date", "target", "target_id", "version_tag", "train_engine", "model_file_name",
    "benchmark_type", "ram_size", "ram_peak_usage", "flash_size", "flash_usage", "load_cpu",
    "load_accelerator", "temperature", "ambiant_temperature", "power_consumption",
    "enery_efficiency", "FLOPs", "model_size", "nb_parameters_model", "loss_train", "loss_test",
    "accuracy_train", "accuracy_test", "training_time",
)


class FinishError(Exception):
    """The trained model is not usable, in words."""


def finish_model(trained: Path, plan: dict[str, Any], out: Path) -> onnx.ModelProto:
    """The trained inference model, its Softmax back, saved to `out` and loaded once by the
    lab's onnxruntime."""
    model = onnx.load(str(trained))
    cut = plan.get("cut")
    if cut:
        model.graph.node.append(decode_node(cut["node"]))
        original = decode_value_info(cut["output"])
        dims = original.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
        del model.graph.output[:]
        model.graph.output.append(original)
    used = {node.domain for node in model.graph.node}
    kept = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise FinishError(f"the trained model is not valid ONNX: {str(exc).splitlines()[0]}") \
            from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise FinishError(f"onnxruntime {ort.__version__} cannot load the trained model: "
                          f"{str(exc).splitlines()[0]}") from exc
    return model


def _model_facts() -> dict[str, Any]:
    path = os.environ.get("VLAB_MODEL_FACTS")
    if not path:
        return {}
    try:
        facts = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _count_parameters(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= int(dim)
        total += count
    return total


def build_odt_report(plan: dict[str, Any], history: dict[str, Any], model: onnx.ModelProto,
                     model_path: Path) -> dict[str, Any]:
    """Every dAIEdge key of report_odt.json (published spelling, null where unknown), then
    ours: the learning parameters, per-epoch times, samples, memory, engine version."""
    env = os.environ.get
    ram_size = sysinfo.total_ram_bytes()
    peak = history.get("peak_memory_bytes")
    facts = _model_facts()
    report: dict[str, Any] = dict.fromkeys(DAIEDGE_ODT_KEYS)
    report.update({
        "version": REPORT_VERSION,
        "date": datetime.now().strftime("%y-%m-%d %H:%M:%S"),
        "target": env("TARGET", ""),
        "target_id": env("TARGET_UID", ""),
        "version_tag": env("VERSION_TAG", ""),
        "train_engine": TRAIN_ENGINE,
        "model_file_name": env("MODEL_FILENAME", ""),
        "benchmark_type": env("BENCHMARK_TYPE", "TYPE3"),
        "ram_size": ram_size,
        "ram_peak_usage": round(100.0 * peak / ram_size, 3) if peak and ram_size else None,
        "load_cpu": history.get("load_cpu"),
        "temperature": sysinfo.temperature_c(),
        # Operations per second are not measured while training: null, as the report allows.
        "FLOPs": None,
        "model_size": model_path.stat().st_size,
        "nb_parameters_model": facts.get("nb_parameters") or _count_parameters(model),
        "loss_train": history["loss_train"],
        "loss_test": history["loss_test"],
        "accuracy_train": history["accuracy_train"],
        "accuracy_test": history["accuracy_test"],
        "training_time": history["training_time"],
    })
    report.update({
        "epochs": plan["epochs"], "batch_size": plan["batch_size"],
        "learning_rate": plan["learning_rate"], "optimizer": plan["optimizer"],
        "loss": plan["loss"], "shuffle": plan["shuffle"], "seed": plan["seed"],
        "targets": plan["targets"], "train_samples": history.get("train_samples"),
        "test_samples": history.get("test_samples"),
        "epoch_time_s": history.get("epoch_time_s"),
        "cpu_time_s": history.get("cpu_time_s"),
        "peak_memory_bytes": peak,
        "threads": history.get("threads"),
        "cpuset": sysinfo.pinned_cpus(),
        "engine_version": history.get("engine_version"),
        "nb_trainable_parameters": plan.get("nb_trainable_parameters"),
        "trained_output": plan.get("trained_output"),
        "softmax_cut": (plan.get("cut") or {}).get("op_type"),
        "converted": plan.get("converted"),
        "flops": facts.get("flops"),
        "host": sysinfo.host_info(),
    })
    return report


def finish(prepared: Path, work: Path, out_dir: Path) -> dict[str, Any]:
    """`out_dir`/model.onnx and `out_dir`/report_odt.json from the trainer's `work`."""
    plan = json.loads((prepared / "plan.json").read_text())
    try:
        history = json.loads((work / "history.json").read_text())
    except (OSError, ValueError) as exc:
        raise FinishError("the trainer left no training history") from exc
    model_path = out_dir / "model.onnx"
    model = finish_model(work / "trained.onnx", plan, model_path)
    report = _finite(build_odt_report(plan, history, model, model_path))
    (out_dir / "report_odt.json").write_text(json.dumps(report, indent=1))
    return report


def _finite(value: Any) -> Any:
    """NaN and infinities (a diverged loss) as null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
