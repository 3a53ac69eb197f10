"""The notebook API: Lab and Benchmark, DataFrames, model forms, sweeps, async, magics."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import onnx
import pandas as pd
import pytest

from tests.models import conv_model
from tests.server import LiveServer
from vlab_kernel import BadRequest, BenchmarkFailed, NotFound, NotReady, connect
from vlab_kernel.lab import Lab


@pytest.fixture
def lab(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Lab:
    monkeypatch.setenv("VLAB_URL", server.url)
    monkeypatch.setenv("VLAB_DATA_DIR", str(server.data_dir))
    monkeypatch.delenv("VLAB_TOKEN", raising=False)
    return connect()  # no arguments: the environment and the local credential


def test_targets_and_engines_are_dataframes(lab: Lab) -> None:
    targets = lab.targets()
    assert isinstance(targets, pd.DataFrame)
    # This machine's cores and the simulated boards.
    # (and the boards of hosts other tests registered on this shared server).
    assert {"host-cpu", "mcu-cortex-m4", "mcu-cortex-m7"} <= set(targets["target"])
    assert "state" in targets
    engines = lab.engines().set_index("engine")
    assert engines.loc["tflite", "file_extensions"] == [".tflite"]
    assert "host-cpu" in engines.loc["onnxruntime", "targets"]


def test_benchmark_from_a_path_bytes_and_a_modelproto(lab: Lab, small_onnx: Path,
                                                      tmp_path: Path) -> None:
    bench = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=12).wait(progress=False)
    assert bench.status == "success" and bench.done
    latencies = bench.latencies
    assert isinstance(latencies, pd.Series) and len(latencies) == 12
    assert latencies.mean() == pytest.approx(bench.report["inference_latency"]["mean"])
    assert "12 inferences" in bench.logs["user"]
    from_bytes = lab.benchmark(small_onnx.read_bytes(), "host-cpu", "openvino", runs=3,
                               wait=True)
    assert from_bytes.info()["model"] == "model.onnx"
    proto = onnx.load(conv_model(tmp_path / "p.onnx", channels=2))
    from_proto = lab.benchmark(proto, "host-cpu", "onnxruntime", runs=3, wait=True)
    assert from_proto.info()["model"] == "conv_net.onnx"
    with pytest.raises(TypeError):
        lab.benchmark(42, "host-cpu", "onnxruntime")


def test_typed_errors_carry_the_server_message(lab: Lab, small_onnx: Path) -> None:
    with pytest.raises(BadRequest, match="cannot run onnx models") as error:
        lab.benchmark(small_onnx, "host-cpu", "tflite")
    assert error.value.status == 400
    with pytest.raises(NotFound, match="unknown target 'mars'"):
        lab.benchmark(small_onnx, "mars", "onnxruntime")
    bench = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=3,
                          params={"min_time_s": 1})
    with pytest.raises(NotReady):
        _ = bench.report
    bench.cancel()
    with pytest.raises(BenchmarkFailed, match="canceled"):
        bench.wait(progress=False)


def test_results_are_one_row_per_benchmark(lab: Lab, small_onnx: Path) -> None:
    lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=4, wait=True)
    results = lab.results(engine="onnxruntime", status="success")
    assert {"id", "model", "engine", "latency_mean_s", "peak_memory_bytes"} <= set(results)
    assert set(results["engine"]) == {"onnxruntime"}
    assert pd.api.types.is_datetime64_any_dtype(results["created_at"])
    # head() shows the labels, the metrics (ms, MiB) and stability before hashes and
    # timestamps.
    assert list(results.columns[:16]) == [
        "id", "model", "target", "target_uid", "engine", "benchmark_type", "status",
        "name", "tags", "notes",
        "latency_median_ms", "latency_mean_ms", "latency_p99_ms", "peak_memory_mib",
        "unstable", "latency_cv"]
    first = results.iloc[0]
    assert first["latency_median_ms"] == pytest.approx(first["latency_median_s"] * 1e3)
    assert first["peak_memory_mib"] == pytest.approx(first["peak_memory_bytes"] / 2**20)
    assert list(results.columns).index("model_sha256") > list(results.columns).index("message")


def test_runs_carry_names_tags_and_notes(lab: Lab, small_onnx: Path, tmp_path: Path) -> None:
    unique = uuid.uuid4().hex[:8]  # the session's server is shared with other tests
    first = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=3, wait=True,
                          name=f"baseline {unique}", tags=[f"fp32-{unique}", "cpu"],
                          notes="defaults")
    assert (first.name, first.tags, first.notes) == (f"baseline {unique}",
                                                     [f"fp32-{unique}", "cpu"], "defaults")
    second = lab.benchmark(small_onnx, "host-cpu", "openvino", runs=3, wait=True,
                           tags=f"ov-{unique}")  # one tag as a string, not its letters
    assert second.tags == [f"ov-{unique}"]
    assert second.label(name=f"OpenVINO {unique}", tags=[f"ov-{unique}", "cpu"]) is second
    assert (second.name, second.tags, second.notes) == (f"OpenVINO {unique}",
                                                        [f"ov-{unique}", "cpu"], "")
    with pytest.raises(BadRequest, match="tags: 'not a tag' is not a tag"):
        second.label(tags=["not a tag"])
    assert second.tags == [f"ov-{unique}", "cpu"]

    both = lab.results(name=unique)
    assert set(both["id"]) == {first.id, second.id}
    assert both.set_index("id").loc[first.id, "tags"] == [f"fp32-{unique}", "cpu"]
    assert list(lab.results(tags=["CPU", f"ov-{unique}"])["id"]) == [second.id]
    assert list(lab.results(tags=f"fp32-{unique}", engine="onnxruntime")["id"]) == [first.id]
    assert lab.results(tags=[f"fp32-{unique}", f"ov-{unique}"]).empty

    csv_file = lab.export(both, tmp_path / "runs.csv")
    assert csv_file == tmp_path / "runs.csv"
    rows = pd.read_csv(csv_file).set_index("id")
    assert rows.loc[first.id, "tags"] == f"fp32-{unique};cpu"
    assert rows.loc[second.id, "name"] == f"OpenVINO {unique}"
    parquet = pd.read_parquet(lab.export(both, tmp_path / "runs.parquet")).set_index("id")
    assert list(parquet.loc[second.id, "tags"]) == [f"ov-{unique}", "cpu"]
    assert parquet.loc[first.id, "latency_mean_ms"] == pytest.approx(
        both.set_index("id").loc[first.id, "latency_mean_ms"])
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        lab.export(both, tmp_path / "runs.xlsx")


def test_sweep_runs_the_grid(lab: Lab, small_onnx: Path, face_tflite: Path) -> None:
    tag = f"sweep-{uuid.uuid4().hex[:8]}"
    frame = lab.sweep([small_onnx, face_tflite], ["host-cpu"], ["onnxruntime", "tflite"],
                      runs=5, progress=False, tags=iter([tag]))  # any iterable, used once
    assert len(frame) == 4
    by = frame.set_index(["model", "engine"])["status"]
    assert by[("small_conv.onnx", "onnxruntime")] == "success"
    assert by[("face_detection_short_range.tflite", "tflite")] == "success"
    assert by[("small_conv.onnx", "tflite")] == "rejected"  # wrong format: one row, a reason
    ok = frame[frame["status"] == "success"]
    assert ok["latency_mean_s"].notna().all()
    assert set(lab.results(tags=[tag])["id"]) == set(ok["id"])  # every run has the tag


def test_async_variants(lab: Lab, small_onnx: Path) -> None:
    async def main() -> list[str]:
        benches = await asyncio.gather(*[
            lab.benchmark_async(small_onnx, "host-cpu", "onnxruntime", runs=3)
            for _ in range(2)])
        return [b.status for b in benches]

    assert asyncio.run(main()) == ["success", "success"]


def test_magics(lab: Lab, small_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    assert ip is not None
    ip.run_line_magic("load_ext", "vlab_kernel")
    targets = ip.run_line_magic("vlab", "targets")
    assert isinstance(targets, pd.DataFrame) and not targets.empty
    bench = ip.run_line_magic(
        "vlab", f"bench {small_onnx} --target host-cpu --engine onnxruntime --runs 3 "
                "--param threads=1")
    assert bench.status == "success"
    assert ip.run_line_magic("vlab", "bench") is None
    assert "the following arguments are required" in capsys.readouterr().out
    assert ip.run_line_magic("vlab", f"bench {small_onnx} --target host-cpu --engine tflite") \
        is None
    assert "cannot run onnx models" in capsys.readouterr().out


def test_compare_and_layers(lab: Lab, small_onnx: Path, face_tflite: Path) -> None:
    a = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=60, wait=True)
    b = lab.benchmark(small_onnx, "host-cpu", "onnxruntime", runs=60, wait=True)
    result = lab.compare(a, b.id)
    assert result["a"] == a.id and result["b"] == b.id
    assert {"median_a_s", "median_b_s", "ci95_difference_s", "p_value", "significant",
            "verdict"} <= set(result)
    layers = a.layers
    assert list(layers.columns) == ["name", "type", "mean_s", "share"]
    assert set(layers["type"]) >= {"Conv", "Gemm"}
    tflite = lab.benchmark(face_tflite, "host-cpu", "tflite", runs=3, wait=True)
    assert tflite.layers.empty  # LiteRT's Python API has no per-layer profiler
    report = a.report
    assert report["stability"]["cv"] is not None
    assert len(report["inference_latency"]["ci95_median"]) == 2
