"""Fidelity of the reported latency: VLab's reported mean ÷ a bare engine loop.

For each model and engine, in one run on this machine: a bare loop (the engine's own API, in a
process of its own, pinned to core 0, same thread count, same warm-up and run count) and a
benchmark through a live `vlab serve` on instance host-cpu-0 (also core 0), interleaved over
several rounds. The ratio of medians is recorded in benchmarks/RESULTS.md.

Run: `make bench` (or `.venv/bin/python benchmarks/harness_overhead.py [--rounds N]`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.models import onnx_zoo, tflite_zoo
from tests.server import LiveServer, wait_terminal

RUNS = 200
WARMUP = 20

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
import time
for _ in range(WARMUP):
    call()
t = time.perf_counter()
for _ in range(RUNS):
    call()
print((time.perf_counter() - t) / RUNS)
"""


def bare_mean(engine: str, model: Path) -> float:
    code = f"MODEL = {str(model)!r}\nRUNS = {RUNS}\nWARMUP = {WARMUP}\n" + BARE_LOOPS[engine] \
        + TIMING
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def vlab_mean(server: LiveServer, engine: str, model: Path) -> float:
    params = {"threads": 1, "warmup_runs": WARMUP, "warmup_min_s": 0}
    with server.client() as client, model.open("rb") as handle:
        response = client.post("/api/benchmarks/run", data={
            "device": "host-cpu", "engine": engine, "nb_inference": str(RUNS),
            "target_uids": json.dumps(["host-cpu-0"]), "parameters": json.dumps(params)},
            files={"model": (model.name, handle)})
        response.raise_for_status()
        final = wait_terminal(client, response.json()["id"], timeout=600)
        assert final["status"] == "success", final
        return float(final["metrics"]["latency_mean_s"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cases = [("squeezenet (onnx zoo)", "onnxruntime", onnx_zoo("squeezenet")),
             ("squeezenet (onnx zoo)", "openvino", onnx_zoo("squeezenet")),
             ("resnet50-light (onnx zoo)", "onnxruntime", onnx_zoo("resnet50")),
             ("face_detection_short_range", "tflite", tflite_zoo())]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer(Path(tmp) / "data").start()
        try:
            for label, engine, model in cases:
                bare, lab = [], []
                for _ in range(args.rounds):
                    bare.append(bare_mean(engine, model))
                    lab.append(vlab_mean(server, engine, model))
                ratio = statistics.median(lab) / statistics.median(bare)
                rows.append((label, engine, statistics.median(bare), statistics.median(lab),
                             ratio))
                print(f"{label:28s} {engine:12s} bare {rows[-1][2] * 1e3:8.3f} ms  "
                      f"vlab {rows[-1][3] * 1e3:8.3f} ms  ratio {ratio:.3f}", flush=True)
        finally:
            server.stop()
    write_results(rows, args.rounds)
    return 0


def write_results(rows: list[tuple[str, str, float, float, float]], rounds: int) -> None:
    path = Path(__file__).with_name("RESULTS.md")
    text = path.read_text() if path.exists() else "# Performance results\n"
    marker = "## Fidelity: reported mean ÷ bare engine loop"
    head = text.split(marker)[0].rstrip() + "\n\n"
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    lines = [marker, "",
             f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {cpu}, {os.cpu_count()} cores, "
             f"{platform.system()} {platform.release()}, Python {platform.python_version()}.",
             f"{RUNS} timed runs after {WARMUP} warm-up runs, 1 thread on core 0; median of "
             f"{rounds} interleaved rounds. Goal: ratio within 1.00 ± 0.02.", "",
             "| model | engine | bare loop mean | VLab reported mean | ratio |",
             "|---|---|---|---|---|"]
    lines += [f"| {label} | {engine} | {bare * 1e3:.3f} ms | {lab * 1e3:.3f} ms | {ratio:.3f} |"
              for label, engine, bare, lab, ratio in rows]
    path.write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
