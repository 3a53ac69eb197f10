"""`python -m vlab_backend.harness`: benchmark one model with one engine, in this process.

Everything comes from the dAIEdge pipeline environment (TARGET, RUNTIME, BENCHMARK_TYPE,
NB_INFERENCE, MODEL_FILENAME, DATASET_FILENAME, PARAMETERS_FILENAME, VERSION_TAG, TARGET_UID)
unless given as options. Outputs go to --out (report.json, raw_output.bin for TYPE2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from vlab_backend.blobstore import sha256_file
from vlab_backend.engines import create_adapter, get_spec
from vlab_backend.engines.base import EngineAdapter, TensorSpec
from vlab_backend.errors import short_message
from vlab_backend.harness import sysinfo
from vlab_backend.harness.measure import Timings, dataset_runs, timed_runs, warm_up
from vlab_backend.harness.report import build_report
from vlab_backend.jobdir import Progress as JobProgress


class HarnessError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser()
    args = parser.parse_args(argv)
    if not args.engine or not args.model:
        parser.error("an engine (RUNTIME) and a model (MODEL_FILENAME) are required")
    return args


def argument_parser() -> argparse.ArgumentParser:
    """The harness's options, their defaults read from the dAIEdge environment now."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m vlab_backend.harness")
    parser.add_argument("--engine", default=env("RUNTIME"))
    parser.add_argument("--model", default=env("MODEL_FILENAME"))
    parser.add_argument("--type", default=env("BENCHMARK_TYPE", "TYPE1"))
    parser.add_argument("--runs", type=int, default=int(env("NB_INFERENCE") or 20))
    parser.add_argument("--dataset", default=env("DATASET_FILENAME") or None)
    parser.add_argument("--params", default=env("PARAMETERS_FILENAME") or None)
    parser.add_argument("--out", default="AI_Manager/out")
    parser.add_argument("--progress", default=env("VLAB_PROGRESS_FILE") or None)
    return parser


class Progress:
    """Reports how far the run is in the job directory's progress file, which the runner
    watches."""

    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path else None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self._path is not None:
            JobProgress(phase, done, total).write(self._path)


def random_inputs(specs: list[TensorSpec], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            arrays.append(rng.random(spec.shape, dtype=np.float32).astype(dtype))
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            arrays.append(rng.integers(max(info.min, 0), min(info.max, 127) + 1, spec.shape,
                                       dtype=dtype))
        elif dtype.kind == "b":
            arrays.append(rng.random(spec.shape) < 0.5)
        else:
            raise HarnessError(f"input {spec.name!r} has unsupported type {spec.dtype}")
    return arrays


def dataset_samples(path: Path, specs: list[TensorSpec]) -> tuple[int, Iterator[list[np.ndarray]]]:
    """Sample count and an iterator over samples of a raw dataset (inputs concatenated)."""
    sample_bytes = sum(s.nbytes for s in specs)
    size = path.stat().st_size
    if size == 0 or size % sample_bytes:
        raise HarnessError(
            f"dataset {path.name} has {size} bytes, not a multiple of the model's input size "
            f"({sample_bytes} bytes per sample)")
    count = size // sample_bytes
    raw = np.memmap(path, dtype=np.uint8, mode="r")

    def iterate() -> Iterator[list[np.ndarray]]:
        for index in range(count):
            offset = index * sample_bytes
            arrays = []
            for spec in specs:
                chunk = raw[offset:offset + spec.nbytes]
                arrays.append(np.frombuffer(chunk.tobytes(), dtype=spec.dtype).reshape(spec.shape))
                offset += spec.nbytes
            yield arrays

    return count, iterate()


def _load_parameters(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"cannot read the parameters file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise HarnessError("the parameters file must hold a JSON object")
    return data


def _model_facts(model_path: Path) -> dict[str, Any]:
    """Size and hash here; parameters and FLOPs from the platform's intake (VLAB_MODEL_FACTS),
    so that no model analysis runs in the measured process."""
    facts: dict[str, Any] = {"size": model_path.stat().st_size,
                             "sha256": sha256_file(model_path)}
    facts_file = os.environ.get("VLAB_MODEL_FACTS")
    if facts_file and Path(facts_file).is_file():
        known = json.loads(Path(facts_file).read_text())
        facts.update(nb_parameters=known.get("nb_parameters"), flops=known.get("flops"))
    return facts


def _measure(args: argparse.Namespace, adapter: EngineAdapter, inputs_spec: list[TensorSpec],
             params: dict[str, Any], timings: Timings, out_dir: Path,
             progress: Progress) -> None:
    if args.type == "TYPE2":
        if not args.dataset:
            raise HarnessError("TYPE2 needs a dataset (DATASET_FILENAME)")
        count, samples = dataset_samples(Path(args.dataset), inputs_spec)
        first = next(dataset_samples(Path(args.dataset), inputs_spec)[1])
        progress("warmup", 0, count)
        warm_up(adapter, first, params["warmup_runs"], params["warmup_min_s"], timings)
        with (out_dir / "raw_output.bin").open("wb") as sink_file:
            def sink(outputs: list[np.ndarray]) -> None:
                for array in outputs:
                    sink_file.write(np.ascontiguousarray(array).tobytes())

            dataset_runs(adapter, samples, count, timings, sink, progress)
    elif args.type == "TYPE1":
        if args.runs < 1:
            raise HarnessError("NB_INFERENCE must be at least 1")
        inputs = random_inputs(inputs_spec, params["seed"])
        progress("warmup", 0, args.runs)
        warm_up(adapter, inputs, params["warmup_runs"], params["warmup_min_s"], timings)
        timed_runs(adapter, args.runs, params["min_time_s"], timings, progress)
    else:
        raise HarnessError(f"benchmark type {args.type} is not supported by this target")


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = get_spec(args.engine)
    params = spec.resolved_parameters(_load_parameters(args.params))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.progress)
    model_path = Path(args.model)
    if not model_path.is_file():
        raise HarnessError(f"model file {args.model} not found")
    if model_path.suffix.lstrip(".").lower() not in spec.formats:
        raise HarnessError(f"engine {spec.name} cannot run {model_path.suffix} models "
                           f"(supported: {', '.join(spec.file_extensions)})")
    cpus = sysinfo.pinned_cpus()
    threads = int(params["threads"]) or len(cpus)

    baseline = sysinfo.current_rss_bytes()
    progress("load", 0, 1)
    adapter: EngineAdapter = create_adapter(args.engine)
    t0 = time.perf_counter()
    try:
        adapter.load(model_path, params, threads)
    except Exception as exc:  # engines raise their own exception types
        raise HarnessError(f"{args.engine} could not load {model_path.name}: "
                           f"{short_message(exc)}") from exc
    init_time = time.perf_counter() - t0
    inputs_spec = adapter.inputs()
    timings = Timings()
    freq_start = sysinfo.cpu_frequency_mhz(cpus)
    cpu_mark = sysinfo.cpu_clock()
    energy_mark, no_energy = sysinfo.energy_mark()
    try:
        _measure(args, adapter, inputs_spec, params, timings, out_dir, progress)
    except (HarnessError, ValueError):
        raise
    except Exception as exc:
        raise HarnessError(f"inference with {args.engine} failed: {short_message(exc)}") from exc

    energy = sysinfo.energy_since(energy_mark, no_energy)
    freq_end = sysinfo.cpu_frequency_mhz(cpus)
    load_cpu = sysinfo.cpu_load_percent(cpu_mark)
    peak = sysinfo.peak_rss_bytes()  # before profiling, which loads the model again
    layers = None
    if params["profile_layers"]:
        progress("profile", 0, params["profile_runs"])
        try:
            layers = adapter.profile_layers(int(params["profile_runs"]))
        except Exception as exc:  # the profile is extra information, never a failure
            print(f"per-layer profile unavailable: {short_message(exc)}", file=sys.stderr)
        if layers is not None:
            (out_dir / "profile.json").write_text(json.dumps(layers, indent=1))
    measured = {
        "warmup_runs": timings.warmup_runs,
        "init_time_s": init_time,
        "first_inference_s": timings.first_inference_s,
        "peak_memory_bytes": peak,
        "memory_delta_bytes": max(0, peak - baseline),
        "ram_size": sysinfo.total_ram_bytes(),
        "load_cpu": load_cpu,
        "temperature": sysinfo.temperature_c(),
        "threads": threads,
        "cpuset": cpus,
        "engine_version": adapter.version(),
        "parameters": params,
        "host": sysinfo.host_info(),
        "worker": {"pid": os.getpid(), "warm": os.environ.get("VLAB_WARM_WORKER") == "1"},
        "cpu_freq_start_mhz": freq_start,
        "cpu_freq_end_mhz": freq_end,
        "layers": layers[:20] if layers else None,
        "energy": {"joules": energy.joules, "seconds": energy.seconds, "note": energy.note,
                   "inferences": timings.warmup_runs + len(timings.samples_s)},
    }
    facts = _model_facts(model_path)
    facts["inputs"] = [s.__dict__ | {"shape": list(s.shape)} for s in inputs_spec]
    facts["outputs"] = [s.__dict__ | {"shape": list(s.shape)} for s in adapter.outputs()]
    adapter.close()
    context = {
        "target": os.environ.get("TARGET", "host-cpu"),
        "target_id": os.environ.get("TARGET_UID"),
        "version_tag": os.environ.get("VERSION_TAG"),
        "engine": args.engine,
        "model_file_name": model_path.name,
        "benchmark_type": args.type,
    }
    report = build_report(context=context, samples_s=timings.samples_s, measured=measured,
                          model=facts)
    # orjson: a report holds every sample (10^5 for long runs of fast models), which the
    # standard encoder would take a noticeable part of a second to write.
    (out_dir / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    progress("done", len(timings.samples_s), len(timings.samples_s))
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        report = run(args)
    except (HarnessError, ValueError, KeyError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2
    latency = report["inference_latency"]
    print(f"{report['nb_inference']} inferences, mean {latency['mean'] * 1e3:.3f} ms, "
          f"p90 {latency['p90'] * 1e3:.3f} ms, peak memory "
          f"{report['peak_memory_bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    exit_code = main()
    # Leave without the interpreter's finalisation: everything the harness wrote is closed by
    # now, and the engines' teardown would keep the step waiting (about 20 ms for ONNX Runtime,
    # 150 ms for OpenVINO on a small VM).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
