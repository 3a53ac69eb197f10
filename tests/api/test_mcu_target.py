"""MCU-class targets end to end, on a live `vlab serve` with the boards of
`targets/mcu/targets.json`: `vlab targets` lists them with their budgets; an ONNX model
converted in the lab to full-integer int8 (calibrated on a representative dataset the user
uploaded) benchmarks on the Cortex-M4 profile with its arena and flash figures; models that do
not fit a profile's flash or SRAM, and operators TensorFlow Lite Micro lacks, fail with the
reason in words.

The first run on a machine creates the cached environments (TFLite Micro, about 100 MB and
seconds; onnx2tf, about 2.6 GB and a minute), under ${VLAB_CACHE_DIR:-~/.cache/vlab}/envs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.models import tflite_zoo
from tests.server import LiveServer, wait_terminal
from vlab_kernel.cli import _summary
from vlab_kernel.units import sig3
from vlab_widgets.run_page import key_figures

# The first run on a machine also creates the cached environments (a minute or more).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
KIB, MIB = 1024, 1024 * 1024


def mlp(path: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A digits MLP (64 -> hidden -> 10, Gemm-Relu-Gemm), random weights, opset 17."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)
               for name, shape in (("W1", (hidden, 64)), ("B1", (hidden,)), ("W2", (10, hidden)),
                                   ("B2", (10,)))]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W1", "B1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "B2"], ["logits"], transB=1)],
        "digits_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def wide_conv(path: Path, size: int = 96, channels: int = 16) -> Path:
    """A 3x3 convolution over a 3 x size x size image to `channels` maps: few weights, large
    activations (its tensor arena is larger than a Cortex-M4's SRAM, not than an M7's)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(
        rng.standard_normal((channels, 3, 3, 3)).astype(np.float32) * 0.1, "W"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "B")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "W", "B"], ["maps"], pads=[1, 1, 1, 1],
                          kernel_shape=[3, 3]),
         helper.make_node("Relu", ["maps"], ["out"])],
        "wide_conv", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                    [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, channels, size, size])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("mcu")
    config = json.loads((REPO / "targets" / "mcu" / "targets.json").read_text())
    for entries in config.values():
        for entry in entries:
            for offer in entry["engines"].values():
                offer["repository"] = str(REPO / "targets" / "mcu")
    targets = root / "targets.json"
    targets.write_text(json.dumps(config))
    live = LiveServer(root / "data", ["--targets", str(targets)]).start()
    yield live
    live.stop()


def upload_model(client: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = client.post("/api/models/download",
                               params={"platform": "user_models", "resource_identifier": ""},
                               files={"model": (path.name, handle)})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def upload_dataset(client: httpx.Client, path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with path.open("rb") as handle:
        response = client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                               files={"dataset": (path.name, handle)})
    assert response.status_code == 207, response.text
    name: str = response.json()["name"]
    return name


def convert(client: httpx.Client, ref: str, target: str, **params: str) -> dict[str, Any]:
    response = client.post("/api/models/convert", params={
        "platform": "user_models", "resource_identifier": ref, "convert_to": target, **params},
        timeout=900)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bench(client: httpx.Client, ref: str, device: str, runs: int = 20) -> dict[str, Any]:
    response = client.post("/api/benchmarks/run", data={
        "device": device, "engine": "tflite-micro", "model_ref": ref,
        "nb_inference": str(runs)})
    assert response.status_code in (200, 201), response.text
    return wait_terminal(client, response.json()["id"], timeout=600)


def report_of(client: httpx.Client, bench_id: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get(f"/api/benchmarks/{bench_id}/results").json()
    report: dict[str, Any] = body.get("report", body)
    return report


def test_vlab_targets_lists_the_boards_with_their_budgets(lab: LiveServer) -> None:
    done = lab.cli("targets")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines()[1:]}
    assert "flash 1 MiB, RAM 256 KiB" in lines["mcu-cortex-m4-0"]
    assert "flash 2 MiB, RAM 1 MiB" in lines["mcu-cortex-m7-0"]
    assert "tflite-micro (TYPE1/TYPE2)" in lines["mcu-cortex-m4-0"]
    listed = {t["target"]: t for t in json.loads(lab.cli("targets", "--json").stdout)}
    [m4] = listed["mcu-cortex-m4"]["instances"]
    assert m4["memory"] == {"storage": 1 * MIB, "ram": 256 * KIB}


def test_an_int8_model_converted_in_the_lab_runs_on_the_m4(lab: LiveServer,
                                                           tmp_path: Path) -> None:
    samples = tmp_path / "digits_calibration.bin"
    np.random.default_rng(1).random((32, 64), dtype=np.float32).tofile(samples)
    with lab.client() as client:
        source = upload_model(client, mlp(tmp_path / "digits_mlp.onnx"))
        dataset = upload_dataset(client, samples)
        refused = client.post("/api/models/convert", params={
            "resource_identifier": source["model"], "convert_to": "tflite_int8"})
        assert refused.status_code == 400 and "representative dataset" in refused.text
        int8 = convert(client, source["model"], "tflite_int8", format="onnx", dataset=dataset)
        assert int8["filename"] == "digits_mlp_int8.tflite" and int8["format"] == "tflite"
        assert int8["inputs"][0]["dtype"] == "int8"
        lineage = int8["lineage"]
        assert lineage["source"] == source["model"]
        assert lineage["source_sha256"] == source["sha256"]
        assert lineage["conversion"] == "tflite_int8"
        assert lineage["tool"] == "onnx2tf 1.29.24"
        assert lineage["options"]["dataset"] == dataset
        assert lineage["options"]["calibration_samples"] == 32
        listed = client.get("/api/models/list").json()["models"]
        assert [m["lineage"] for m in listed if m["model"] == int8["model"]] == [lineage]

        final = bench(client, int8["model"], "mcu-cortex-m4")
        assert final["status"] == "success", final
        report = report_of(client, final["id"])
    assert report["target"] == "mcu-cortex-m4" and report["inference_engine"] == "tflite-micro"
    assert report["nb_inference"] == 20 and report["inference_latency"]["mean"] > 0
    assert report["flash_size"] == 1 * MIB and report["ram_size"] == 256 * KIB
    assert report["flash_usage_bytes"] == int8["size"]
    assert report["flash_usage"] == pytest.approx(100 * int8["size"] / MIB, abs=1e-3)
    arena = report["ram_peak_usage_bytes"]
    assert 0 < arena < 256 * KIB and report["peak_memory_bytes"] == arena
    board = report["board"]
    assert board["profile"] == "cortex-m4" and board["arena_used_bytes"] == arena
    assert len(board["inference_latency"]["samples"]) == 20
    # The host's round trip holds the board's own time of the inference.
    assert report["inference_latency"]["median"] >= board["inference_latency"]["median"]
    assert report["engine_version"].startswith("0.dev")  # tflite-micro's own version
    assert report["power_consumption"] is None and report["energy_note"]
    # What a person sees: the board's figures in `vlab bench`'s summary and on the run page.
    board_line = next(line for line in _summary(report).splitlines()
                      if line.startswith("  board"))
    assert f"flash {report['flash_usage_bytes']:,} B" in board_line
    assert f"arena {arena:,} B" in board_line and "of 262,144 B" in board_line
    figures = key_figures(report).set_index("figure")["value"]
    assert figures["tensor arena used"] == sig3(arena / 1024)
    assert figures["flash used"] == sig3(report["flash_usage_bytes"] / 1024)


def test_a_model_too_big_for_a_profile_fails_naming_the_budget(lab: LiveServer,
                                                               tmp_path: Path) -> None:
    with lab.client() as client:
        # 64 x 4500 float32 weights: 1.2 MiB as TFLite, over the M4's 1 MiB of flash.
        big = convert(client, upload_model(client, mlp(tmp_path / "wide_mlp.onnx",
                                                       hidden=4500))["model"], "tflite")
        failed = bench(client, big["model"], "mcu-cortex-m4", runs=2)
        assert failed["status"] == "failed"
        assert "model needs 1.2" in failed["message"]
        assert "MiB of flash; cortex-m4 has 1 MiB" in failed["message"]
        assert bench(client, big["model"], "mcu-cortex-m7", runs=2)["status"] == "success"

        # 16 maps of 96 x 96 float32 activations: an arena of about 700 KiB.
        wide = convert(client, upload_model(client, wide_conv(tmp_path / "wide_conv.onnx"))[
            "model"], "tflite")
        failed = bench(client, wide["model"], "mcu-cortex-m4", runs=2)
        assert failed["status"] == "failed"
        assert "tensor arena needs" in failed["message"]
        assert "KiB; cortex-m4 has 256 KiB of SRAM" in failed["message"]
        fits = bench(client, wide["model"], "mcu-cortex-m7", runs=2)
        assert fits["status"] == "success", fits
        arena = report_of(client, fits["id"])["ram_peak_usage_bytes"]
    assert 256 * KIB < arena < 1 * MIB
    needed = float(failed["message"].split("tensor arena needs ")[1].split(" KiB")[0])
    assert needed == pytest.approx(arena / KIB, rel=0.01)


@pytest.mark.parametrize(("model", "op"), [
    ("face_detection_full_range_sparse", "op DENSIFY is not supported by TFLite Micro"),
    ("face_detection_short_range", "op DEQUANTIZE is not supported by TFLite Micro"),
])
def test_an_operator_tflite_micro_lacks_is_named(lab: LiveServer, model: str, op: str) -> None:
    with lab.client() as client:
        stored = upload_model(client, tflite_zoo(model))
        failed = bench(client, stored["model"], "mcu-cortex-m4", runs=2)
    assert failed["status"] == "failed"
    assert op in failed["message"]
