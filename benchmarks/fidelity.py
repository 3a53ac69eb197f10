"""Fidelity and repeatability of the reported latency, against the machine's own noise.

A *bare loop* is the engine's own API in a process of its own, pinned to core 0 with one
thread: load, 20 warm-up runs, then timed runs (one clock read before and after each call,
as anyone timing percentiles would) until at least `RUNS` runs and `MIN_TIME_S` seconds. The
*VLab run* is the same model and engine submitted to a live `vlab serve` on instance
host-cpu-0 (core 0) with the same warm-up, thread count, run count and minimum time.

- fidelity: VLab's reported mean ÷ the bare loop's mean, in pairs run back to back (the order
  alternates from round to round), median over the rounds with its distribution-free 95 %
  interval. On a shared machine the latency drifts by several percent over tens of seconds;
  adjacent pairs see much the same drift. The verdict is `met` only when the whole interval
  lies within ±2 %, `within noise` when the machine cannot tell.
- repeatability: the same benchmark five times, spread of the medians, beside the spread of
  five bare loops run between them: the noise floor of the machine.

Run by `make bench` (benchmarks/suite.py); alone: `.venv/bin/python benchmarks/fidelity.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jobs import follow, submit
from tests.models import onnx_zoo, tflite_zoo
from tests.server import LiveServer

RUNS = 200
WARMUP = 20
MIN_TIME_S = 2.0

BARE_LOOPS = {
    "onnxruntime": """
import onnxruntime as ort, numpy as np
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(MODEL, o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
feed = {i.name: np.random.default_rng(0).random([d if isinstance(d, int) else 1
                                                for d in i.shape], dtype=np.float32)}
call = lambda: s.run(None, feed)
""",
    "openvino": """
import openvino as ov, numpy as np
c = ov.Core().compile_model(MODEL, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                           "INFERENCE_NUM_THREADS": 1,
                                           "INFERENCE_PRECISION_HINT": "f32"})
r = c.create_infer_request()
x = np.random.default_rng(0).random(list(c.inputs[0].get_shape()), dtype=np.float32)
r.set_input_tensor(0, ov.Tensor(x))
call = r.infer
""",
    "tflite": """
from ai_edge_litert.interpreter import Interpreter
import numpy as np
it = Interpreter(model_path=MODEL, num_threads=1); it.allocate_tensors()
d = it.get_input_details()[0]
it.set_tensor(d["index"], np.random.default_rng(0).random(d["shape"], dtype=np.float32))
call = it.invoke
""",
}

TIMING = """
import json, statistics, time
clock = time.perf_counter
for _ in range(WARMUP):
    call()
samples = []
started = clock()
while len(samples) < RUNS or clock() - started < MIN_TIME_S:
    t0 = clock()
    call()
    samples.append(clock() - t0)
print(json.dumps({"mean": statistics.fmean(samples), "median": statistics.median(samples),
                  "minimum": min(samples)}))
"""


@dataclass
class Latency:
    mean: float
    median: float
    minimum: float


def bare_loop(engine: str, model: Path) -> Latency:
    code = (f"MODEL = {str(model)!r}\nRUNS = {RUNS}\nWARMUP = {WARMUP}\n"
            f"MIN_TIME_S = {MIN_TIME_S}\n" + BARE_LOOPS[engine] + TIMING)
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    return Latency(**json.loads(out.strip().splitlines()[-1]))


def vlab_run(server: LiveServer, engine: str, model: Path) -> Latency:
    params = {"threads": 1, "warmup_runs": WARMUP, "warmup_min_s": 0,
              "min_time_s": MIN_TIME_S, "profile_layers": False}
    with server.client() as client:
        bench_id = submit(client, model, engine=engine, nb_inference=str(RUNS),
                          target_uids=["host-cpu-0"], parameters=params)
    _, final = follow(server, bench_id)
    assert final["status"] == "success", final
    metrics = final["metrics"]
    return Latency(float(metrics["latency_mean_s"]), float(metrics["latency_median_s"]),
                   float(metrics["latency_min_s"]))


@dataclass
class FidelityRow:
    model: str
    engine: str
    bare_mean: float  # median over the rounds
    vlab_mean: float
    ratio: float  # median of the per-round ratios
    ratio_low: float  # distribution-free 95 % interval of that median (sign test)
    ratio_high: float
    bare_spread: float  # (max − min) ÷ mean of the bare means: the machine's noise
    minimum_ratio: float  # median over the rounds of VLab's fastest run ÷ the bare loop's


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.fmean(values)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval of the median: the order statistics x(k) and x(n+1-k)
    with the largest k whose coverage under the sign test is at least `confidence`."""
    ordered = sorted(values)
    n = len(ordered)
    k = 0
    while k + 1 <= n // 2:
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # P(B <= k)
        if 1 - 2 * tail < confidence:
            break
        k += 1
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def verdict(low: float, high: float, tolerance: float = 0.02) -> str:
    """`met` when the whole interval lies within 1 ± tolerance, `not met` when none of it
    does, `within noise` otherwise (the machine cannot tell)."""
    if 1 - tolerance <= low and high <= 1 + tolerance:
        return "met"
    if high < 1 - tolerance or low > 1 + tolerance:
        return "not met"
    return "within noise"


def fidelity_row(server: LiveServer, label: str, engine: str, model: Path,
                 rounds: int) -> FidelityRow:
    bare: list[Latency] = []
    lab: list[Latency] = []
    for index in range(rounds):
        if index % 2:
            lab.append(vlab_run(server, engine, model))
            bare.append(bare_loop(engine, model))
        else:
            bare.append(bare_loop(engine, model))
            lab.append(vlab_run(server, engine, model))
    ratios = [v.mean / b.mean for v, b in zip(lab, bare, strict=True)]
    minimum_ratios = [v.minimum / b.minimum for v, b in zip(lab, bare, strict=True)]
    return FidelityRow(label, engine, statistics.median(b.mean for b in bare),
                       statistics.median(v.mean for v in lab), statistics.median(ratios),
                       *median_interval(ratios), spread([b.mean for b in bare]),
                       statistics.median(minimum_ratios))


FIDELITY_CASES = [("squeezenet", "onnxruntime", lambda: onnx_zoo("squeezenet")),
                  ("squeezenet", "openvino", lambda: onnx_zoo("squeezenet")),
                  ("face_detection_short_range", "tflite", tflite_zoo)]


def fidelity(server: LiveServer, rounds: int = 9) -> list[FidelityRow]:
    return [fidelity_row(server, label, engine, model(), rounds)
            for label, engine, model in FIDELITY_CASES]


@dataclass
class Repeatability:
    medians: float  # spread of the medians of the VLab runs: the figure
    bare_medians: float  # the same for the bare loops between them: the noise floor
    minima: float  # spread of the fastest inference of each VLab run
    bare_minima: float


def repeatability(server: LiveServer, model: Path, repeats: int = 5) -> Repeatability:
    """The same benchmark run `repeats` times, with as many bare loops between them."""
    lab: list[Latency] = []
    bare: list[Latency] = []
    for _ in range(repeats):
        lab.append(vlab_run(server, "onnxruntime", model))
        bare.append(bare_loop("onnxruntime", model))
    return Repeatability(spread([r.median for r in lab]), spread([r.median for r in bare]),
                         spread([r.minimum for r in lab]), spread([r.minimum for r in bare]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp) / "data").start()
        try:
            for row in fidelity(server, args.rounds):
                print(f"{row.model:28s} {row.engine:12s} bare {row.bare_mean * 1e3:8.3f} ms  "
                      f"vlab {row.vlab_mean * 1e3:8.3f} ms  ratio {row.ratio:.3f} "
                      f"[{row.ratio_low:.3f}, {row.ratio_high:.3f}]  bare spread "
                      f"{row.bare_spread:.1%}  minimum ratio {row.minimum_ratio:.3f}",
                      flush=True)
            spreads = repeatability(server, onnx_zoo("squeezenet"))
            print(f"repeatability: spread of medians {spreads.medians:.1%} (bare loops "
                  f"{spreads.bare_medians:.1%}); of minima {spreads.minima:.1%} (bare loops "
                  f"{spreads.bare_minima:.1%})")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
