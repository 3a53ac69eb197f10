"""Assembly of `report.json`: every documented dAIEdge key (published spelling), then ours."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vlab_backend.harness.stats import full_statistics

REPORT_VERSION = "1.0"

# Keys of the dAIEdge report, in the published spelling; null where unknown on this target.
DAIEDGE_KEYS = (
    "version", "date", "target", "target_id", "version_tag", "inference_engine",
    "model_file_name", "benchmark_type", "nb_infernece", "ram_size", "ram_peak", "flash_size",
    "flash_usage", "load_cpu", "load_accelerator", "temperature", "ambiant_temperature",
    "power_consumption", "enery_efficiency", "FLOPs", "inference_latency",
)


def energy_keys(energy: dict[str, Any] | None, flops: float | None) -> dict[str, Any]:
    """`power_consumption` (W) and the dAIEdge `enery_efficiency` (operations per watt, i.e.
    operations per joule: the model's FLOPs per inference times inferences per joule), ours
    `energy_j` and `inferences_per_joule`, and `energy_note`: where the energy comes from, or
    why there is none. `energy`: joules and seconds measured over `inferences` inferences."""
    energy = energy or {}
    joules, seconds = energy.get("joules"), energy.get("seconds")
    inferences = energy.get("inferences") or 0
    per_joule = inferences / joules if joules and inferences else None
    return {
        "power_consumption": joules / seconds if joules is not None and seconds else None,
        "enery_efficiency": flops * per_joule if flops and per_joule else None,
        "energy_j": joules,
        "inferences_per_joule": per_joule,
        "energy_note": energy.get("note") or "this target does not measure energy",
    }


def build_report(*, context: dict[str, Any], samples_s: list[float], measured: dict[str, Any],
                 model: dict[str, Any]) -> dict[str, Any]:
    """`context`: target/engine identity; `measured`: timings and memory; `model`: intake facts."""
    latency = full_statistics(samples_s, measured.get("cpu_freq_start_mhz"),
                              measured.get("cpu_freq_end_mhz"))
    mean = latency["mean"]
    flops = model.get("flops") or None
    ram_size = measured.get("ram_size")
    peak = measured["peak_memory_bytes"]
    report: dict[str, Any] = dict.fromkeys(DAIEDGE_KEYS)
    report.update({
        "version": REPORT_VERSION,
        "date": datetime.now().strftime("%y-%m-%d %H:%M:%S"),
        "target": context["target"],
        "target_id": context["target_id"],
        "version_tag": context["version_tag"],
        "inference_engine": context["engine"],
        "model_file_name": context["model_file_name"],
        "benchmark_type": context["benchmark_type"],
        "nb_infernece": len(samples_s),
        "ram_size": ram_size,
        "ram_peak": round(100.0 * peak / ram_size, 3) if ram_size else None,
        "load_cpu": measured.get("load_cpu"),
        "temperature": measured.get("temperature"),
        # Operations per second achieved, as the dAIEdge report defines FLOPs.
        "FLOPs": (flops / mean) if flops and mean else None,
        "inference_latency": {**latency, "samples": samples_s},
    })
    report.update(energy_keys(measured.get("energy"), flops))
    report.update({
        "nb_inference": len(samples_s),
        "warmup_runs": measured["warmup_runs"],
        "init_time_s": measured["init_time_s"],
        "first_inference_s": measured["first_inference_s"],
        "cold_start": {"load_s": measured["init_time_s"],
                       "first_inference_s": measured["first_inference_s"],
                       "steady_state_s": latency["median"]},
        "stability": latency["stability"],
        "layers": measured.get("layers"),
        "cpu_freq_mhz": {"start": measured.get("cpu_freq_start_mhz"),
                         "end": measured.get("cpu_freq_end_mhz")},
        "peak_memory_bytes": peak,
        "memory_delta_bytes": measured["memory_delta_bytes"],
        "model_size": model.get("size"),
        "model_sha256": model.get("sha256"),
        "nb_parameters_model": model.get("nb_parameters"),
        "flops": flops,
        "threads": measured["threads"],
        "cpuset": measured["cpuset"],
        "engine_version": measured["engine_version"],
        "parameters": measured["parameters"],
        "inputs": model.get("inputs"),
        "outputs": model.get("outputs"),
        "host": measured["host"],
        "worker": measured.get("worker"),
    })
    return report
