"""`python -m vlab_backend.mcu {deploy,run}`: the host side of an MCU target's steps.

- `deploy`: the flash budget, checked before anything is sent to the board.
- `run`: power the board on (its firmware under the TFLite Micro environment's interpreter),
  send the model (the simulated board's flash), load it on a tensor arena of the board's
  SRAM, run the warm-up and the timed inferences over the link, and write `report.json`
  (the dAIEdge keys and the host-cpu report's own, plus the board's figures) and, for TYPE2,
  `raw_output.bin`.

Everything comes from the dAIEdge environment (TARGET, TARGET_UID, RUNTIME, BENCHMARK_TYPE,
NB_INFERENCE, MODEL_FILENAME, DATASET_FILENAME, PARAMETERS_FILENAME, VERSION_TAG) and the
board's profile (VLAB_MCU_PROFILE, VLAB_MCU_FLASH_BYTES, VLAB_MCU_SRAM_BYTES,
VLAB_MCU_CLOCK_MHZ, VLAB_MCU_CORES). A failure prints `error: <reason>` and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from vlab_backend.mcu.profiles import (
    CLOCK_VAR,
    CORES_VAR,
    FLASH_VAR,
    PROFILE_VAR,
    PROFILES,
    SRAM_VAR,
    BoardProfile,
    flash_message,
)

ENGINE = "tflite-micro"
PROGRESS_INTERVAL_S = 0.25


class McuError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def board_profile() -> BoardProfile:
    """The board's profile: the VLAB_MCU_* variables, else the named built-in profile."""
    env = os.environ.get
    name = env(PROFILE_VAR) or ""
    known = PROFILES.get(name)
    try:
        flash = int(env(FLASH_VAR) or (known.flash_bytes if known else 0))
        sram = int(env(SRAM_VAR) or (known.sram_bytes if known else 0))
        clock = int(float(env(CLOCK_VAR) or (known.clock_mhz if known else 0)))
        cores = int(env(CORES_VAR) or (known.cores if known else 1))
    except ValueError as exc:
        raise McuError(f"the board profile's variables are not numbers: {exc}") from exc
    if not flash or not sram:
        raise McuError(f"no board profile: set {PROFILE_VAR} (one of {', '.join(PROFILES)}) "
                       f"or {FLASH_VAR} and {SRAM_VAR}")
    return BoardProfile(name or "board", known.description if known else "", flash, sram,
                        clock, cores)


def argument_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m vlab_backend.mcu")
    parser.add_argument("step", choices=("deploy", "run"))
    parser.add_argument("--model", default=env("MODEL_FILENAME"))
    parser.add_argument("--type", default=env("BENCHMARK_TYPE", "TYPE1"))
    parser.add_argument("--runs", type=int, default=int(env("NB_INFERENCE") or 20))
    parser.add_argument("--dataset", default=env("DATASET_FILENAME") or None)
    parser.add_argument("--params", default=env("PARAMETERS_FILENAME") or None)
    parser.add_argument("--out", default="AI_Manager/out")
    parser.add_argument("--board-python", default=env("VLAB_TFLM_PYTHON") or None,
                        help="the TFLite Micro environment's interpreter (the build step's)")
    parser.add_argument("--firmware", default="AI_Project/board.py")
    parser.add_argument("--progress", default=env("VLAB_PROGRESS_FILE") or None)
    return parser


def deploy(args: argparse.Namespace, profile: BoardProfile) -> None:
    model = Path(args.model or "")
    if not model.is_file():
        raise McuError(f"model {args.model} was not delivered to the target")
    size = model.stat().st_size
    if size > profile.flash_bytes:
        raise McuError(flash_message(size, profile.flash_bytes, profile.name))
    print(f"{model.name}: {size:,} bytes of {profile.name}'s {profile.flash_bytes:,} bytes "
          "of flash")


def _inputs_payload(arrays: list[np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)


def run(args: argparse.Namespace, profile: BoardProfile) -> dict[str, Any]:
    from vlab_backend.engines import get_spec
    from vlab_backend.engines.base import TensorSpec
    from vlab_backend.harness import sysinfo
    from vlab_backend.harness.__main__ import (
        Progress,
        _load_parameters,
        _model_facts,
        dataset_samples,
        random_inputs,
    )
    from vlab_backend.harness.report import build_report
    from vlab_backend.harness.stats import full_statistics
    from vlab_backend.mcu.link import (
        BoardCrashed,
        BoardLink,
        BoardSpec,
        LinkError,
        explain_load_failure,
        flash,
    )

    spec = get_spec(ENGINE)
    params = spec.resolved_parameters(_load_parameters(args.params))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.progress)
    model_path = Path(args.model or "")
    if not model_path.is_file():
        raise McuError(f"model file {args.model} not found")
    if not args.board_python or not Path(args.board_python).is_file():
        raise McuError("no TFLite Micro environment: the build step creates it "
                       "(VLAB_TFLM_PYTHON)")
    model = model_path.read_bytes()
    arena = int(params.get("arena_bytes") or 0) or profile.sram_bytes
    board = BoardSpec(Path(args.board_python), Path(args.firmware).resolve(), profile.name,
                      profile.flash_bytes, profile.sram_bytes, profile.clock_mhz)
    progress("load", 0, 1)
    with BoardLink(board, out_dir / "board.log") as link:
        try:
            hello, _ = link.request({"cmd": "hello"})
            flash(link, model)
            started = time.perf_counter()
            loaded, _ = link.request({"cmd": "load", "arena": arena})
            init_time = time.perf_counter() - started
        except BoardCrashed as exc:
            raise McuError(explain_load_failure(board, model, {}, link.board_log(),
                                                out_dir / "board-probe.log",
                                                crashed=str(exc))) from exc
        except LinkError as exc:
            raise McuError(str(exc)) from exc
        if not loaded.get("ok"):
            if loaded.get("reason") == "sram":
                raise McuError(f"arena_bytes {arena:,} is more than {profile.name}'s "
                               f"{profile.sram_bytes:,} bytes of SRAM")
            raise McuError(explain_load_failure(board, model, loaded, link.board_log(),
                                                out_dir / "board-probe.log"))
        inputs_spec = [TensorSpec(f"input{i}", tuple(t["shape"]), t["dtype"])
                       for i, t in enumerate(loaded["inputs"])]
        outputs_spec = [TensorSpec(f"output{i}", tuple(t["shape"]), t["dtype"])
                        for i, t in enumerate(loaded["outputs"])]
        host_s: list[float] = []
        board_s: list[float] = []
        clock = time.perf_counter
        invoke = _Invoker(link, profile.name)
        try:
            first_s, warmup_runs = _warm_up(args, params, inputs_spec, invoke, progress,
                                            dataset_samples, random_inputs)
            if args.type == "TYPE2":
                count, samples = dataset_samples(Path(args.dataset), inputs_spec)
                reported = clock()
                with (out_dir / "raw_output.bin").open("wb") as sink:
                    for done, arrays in enumerate(samples, start=1):
                        data, on_host, on_board = invoke(_inputs_payload(arrays), True)
                        sink.write(data)
                        host_s.append(on_host)
                        board_s.append(on_board)
                        if clock() - reported >= PROGRESS_INTERVAL_S:
                            progress("inference", done, count)
                            reported = clock()
            else:
                started = reported = clock()
                done = 0
                while done < args.runs or clock() - started < params["min_time_s"]:
                    _data, on_host, on_board = invoke(b"")
                    host_s.append(on_host)
                    board_s.append(on_board)
                    done += 1
                    if clock() - reported >= PROGRESS_INTERVAL_S:
                        progress("inference", done, args.runs)
                        reported = clock()
        except BoardCrashed as exc:
            said = link.board_log().strip().splitlines()
            raise McuError(f"inference on {profile.name} failed: {exc}"
                           + (f" ({said[-1]})" if said else "")) from exc

    arena_used = loaded.get("arena_used")
    facts = _model_facts(model_path)
    facts["inputs"] = [s.__dict__ | {"shape": list(s.shape)} | _quant(t)
                       for s, t in zip(inputs_spec, loaded["inputs"], strict=True)]
    facts["outputs"] = [s.__dict__ | {"shape": list(s.shape)} | _quant(t)
                        for s, t in zip(outputs_spec, loaded["outputs"], strict=True)]
    measured = {
        "warmup_runs": warmup_runs,
        "init_time_s": init_time,
        "first_inference_s": first_s,
        "peak_memory_bytes": arena_used,
        "memory_delta_bytes": arena_used,
        "ram_size": profile.sram_bytes,
        "load_cpu": None,
        "temperature": None,
        "threads": profile.cores,
        "cpuset": sysinfo.pinned_cpus(),
        "engine_version": str(hello.get("runtime", "")).removeprefix(f"{ENGINE} "),
        "parameters": params,
        "host": sysinfo.host_info(),
        "worker": {"pid": os.getpid(), "warm": os.environ.get("VLAB_WARM_WORKER") == "1"},
        "cpu_freq_start_mhz": None,
        "cpu_freq_end_mhz": None,
        "layers": None,
    }
    context = {"target": os.environ.get("TARGET", "mcu"),
               "target_id": os.environ.get("TARGET_UID"),
               "version_tag": os.environ.get("VERSION_TAG"), "engine": ENGINE,
               "model_file_name": model_path.name, "benchmark_type": args.type}
    report = build_report(context=context, samples_s=host_s, measured=measured, model=facts)
    board_stats = full_statistics(board_s, None, None)
    board_stats.pop("stability", None)
    report.update({
        # dAIEdge units: flash_usage and ram_peak in percent of the board's budgets.
        "flash_size": profile.flash_bytes,
        "flash_usage": round(100.0 * len(model) / profile.flash_bytes, 3),
        "ram_size": profile.sram_bytes,
        "ram_peak": round(100.0 * arena_used / profile.sram_bytes, 3)
        if arena_used is not None else None,
        "flash_usage_bytes": len(model),
        "ram_peak_usage_bytes": arena_used,
        "energy_note": "a simulated board has no power monitor",
        "board": {
            "profile": profile.name, "description": profile.description,
            "flash_bytes": profile.flash_bytes, "sram_bytes": profile.sram_bytes,
            "clock_mhz": profile.clock_mhz, "cores": profile.cores,
            "runtime": hello.get("runtime"), "arena_bytes": arena,
            "arena_used_bytes": arena_used, "model_bytes": len(model),
            "simulated": True,
            "timing_note": "the board's own timing is TFLite Micro's invoke() on this host's "
                           "CPU, not scaled to the board's clock",
            "inference_latency": {**board_stats, "samples": board_s},
            "link_overhead_s": float(np.median(np.subtract(host_s, board_s)))
            if host_s else None,
        },
    })
    (out_dir / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    progress("done", len(host_s), len(host_s))
    return report


class _Invoker:
    """One inference over the link: the answer's payload (the outputs, when asked), the time
    the host waited for it and the board's own time of `invoke()`."""

    def __init__(self, link: Any, board: str) -> None:
        self.link = link
        self.board = board

    def __call__(self, payload: bytes, outputs: bool = False) -> tuple[bytes, float, float]:
        clock = time.perf_counter
        t0 = clock()
        answer, data = self.link.request({"cmd": "invoke", "outputs": outputs}, payload)
        elapsed = clock() - t0
        if not answer.get("ok"):
            log = self.link.board_log().strip().splitlines()
            raise McuError(f"inference on {self.board} failed: {answer.get('error')}"
                           + (f" ({log[-1]})" if log else ""))
        return data, elapsed, float(answer["board_s"])


def _quant(tensor: dict[str, Any]) -> dict[str, Any]:
    return {"scale": tensor.get("scale"), "zero_point": tensor.get("zero_point")}


def _warm_up(args: argparse.Namespace, params: dict[str, Any], inputs_spec: list[Any],
             invoke: _Invoker, progress: Any, dataset_samples: Any,
             random_inputs: Any) -> tuple[float, int]:
    """Bind the inputs (the first sample for TYPE2, random ones for TYPE1) and run the
    untimed inferences; returns the first inference's host-side time and the run count."""
    if args.type == "TYPE2":
        if not args.dataset:
            raise McuError("TYPE2 needs a dataset (DATASET_FILENAME)")
        count, samples = dataset_samples(Path(args.dataset), inputs_spec)
        first = next(samples)
    elif args.type == "TYPE1":
        if args.runs < 1:
            raise McuError("NB_INFERENCE must be at least 1")
        count, first = args.runs, random_inputs(inputs_spec, params["seed"])
    else:
        raise McuError(f"benchmark type {args.type} is not supported by this target")
    progress("warmup", 0, count)
    clock = time.perf_counter
    start = clock()
    _data, first_s, _board = invoke(_inputs_payload(first))
    runs = 1
    while runs < params["warmup_runs"] or clock() - start < params["warmup_min_s"]:
        invoke(b"")
        runs += 1
    return first_s, runs


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    try:
        profile = board_profile()
        if args.step == "deploy":
            deploy(args, profile)
            return 0
        report = run(args, profile)
    except (McuError, ValueError, KeyError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2
    latency = report["inference_latency"]
    board = report["board"]["inference_latency"]
    print(f"{report['nb_inference']} inferences on {profile.name}: host-side mean "
          f"{latency['mean'] * 1e3:.3f} ms, board mean {board['mean'] * 1e3:.3f} ms; arena "
          f"{report['ram_peak_usage_bytes']} of {profile.sram_bytes} bytes, flash "
          f"{report['flash_usage_bytes']} of {profile.flash_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
