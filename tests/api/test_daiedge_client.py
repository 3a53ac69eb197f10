"""The published dAIEdge-VLab client (daiedge-vlab 1.2.12), unpatched, against a live server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from daiedge_vlab import dAIEdgeVLabAPI
from daiedge_vlab.resources import ResourceConfigurator

from tests.models import two_input_model
from tests.server import LiveServer, add_user, wait_status

EMAIL, PASSWORD = "researcher@lab.example", "a long password"


@pytest.fixture(scope="module")
def vlab(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dAIEdgeVLabAPI:
    add_user(server, EMAIL, PASSWORD, admin=True)
    setup = tmp_path_factory.mktemp("client") / "setup.yaml"
    setup.write_text(f"api:\n  url: 127.0.0.1\n  port: {server.port}\n  ssl: false\n"
                     "user:\n  email: ${VLAB_TEST_USER}\n  password: ${VLAB_TEST_PASSWORD}\n")
    os.environ.update(VLAB_TEST_USER=EMAIL, VLAB_TEST_PASSWORD=PASSWORD)
    return dAIEdgeVLabAPI(str(setup))


def test_configuration_and_parameters(vlab: dAIEdgeVLabAPI) -> None:
    config = vlab.getAvailableConfigurations()
    assert "host-cpu" in config["devices"]
    keys = [p["key"] for p in vlab.getAvailableParameters("onnxruntime")]
    assert "graph_optimization_level" in keys
    full = vlab.getAvailableConfigurations(full=True)
    assert full["devices"]["host-cpu"]["instance_details"]
    assert set(config["devices"]["host-cpu"]) == {"instances", "engines"}


def test_benchmark_with_a_file_then_with_a_model_ref(vlab: dAIEdgeVLabAPI, squeezenet: Path,
                                                     tmp_path: Path) -> None:
    bench_id = vlab.startBenchmark("host-cpu", "onnxruntime", str(squeezenet),
                                   inference_number=8, parameters={"threads": 1})
    result = vlab.waitBenchmarkResult(bench_id, save_path=str(tmp_path), interval=1)
    assert result["report"]["nb_infernece"] == 8
    assert result["report"]["inference_engine"] == "onnxruntime"
    assert "8 inferences" in result["user_log"]
    assert result["raw_output"] is None and result["model_output"] is None  # 204s
    assert (tmp_path / f"{bench_id}_benchmark_report.json").is_file()
    assert (tmp_path / f"{bench_id}_user_log.txt").is_file()

    ref = vlab.uploadModel(str(squeezenet))
    assert ref and ref.startswith("model-")
    assert ref in [m["model"] for m in vlab.getModels()["models"]]
    second = vlab.startBenchmark("host-cpu", "openvino", ref, inference_number=5)
    assert vlab.waitBenchmarkResult(second, interval=1)["report"]["inference_engine"] == \
        "openvino"
    info = vlab.getBenchmarkInfo(second)
    assert info["status"] == "success" and info["model"] == squeezenet.name


def test_type2_with_a_dataset(vlab: dAIEdgeVLabAPI, tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    samples = np.random.default_rng(5).standard_normal((3, 2, 1, 4)).astype(np.float32)
    dataset = tmp_path / "samples.bin"
    samples.tofile(dataset)
    bench_id = vlab.startBenchmark("host-cpu", "onnxruntime", str(model), dataset=str(dataset))
    result = vlab.waitBenchmarkResult(bench_id, interval=1)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"a": s[0], "b": s[1]})[0] for s in samples])
    np.testing.assert_allclose(np.frombuffer(result["raw_output"], dtype=np.float32),
                               expected.ravel(), rtol=1e-6)
    # Named by its content: other tests' files of the same name are other datasets.
    ref = f"samples.bin_{hashlib.sha256(dataset.read_bytes()).hexdigest()}"
    assert ref in vlab.getDatasets()
    # The client finds the dataset already there and does not upload it again.
    assert vlab.uploadDataset(str(dataset)) == ref
    assert vlab.deleteDataset(ref) is True
    assert ref not in vlab.getDatasets()


def test_history_logs_binary_and_delete(vlab: dAIEdgeVLabAPI, server: LiveServer,
                                        small_onnx: Path) -> None:
    bench_id = vlab.startBenchmark("host-cpu", "onnxruntime", str(small_onnx),
                                   inference_number=5, parameters={"min_time_s": 2})
    with server.client(vlab.token) as client:
        wait_status(client, bench_id, "running")
    # 428 while running: the client warns and returns None.
    assert vlab.getErrorLog(bench_id) is None
    assert vlab.getBinaryOutput(bench_id) is None
    vlab.waitBenchmarkResult(bench_id, interval=1)
    assert vlab.getErrorLog(bench_id) == ""
    history = vlab.getBenchmarks(engine="onnxruntime", status="success", page=1, page_length=2)
    assert history["page_length"] == 2 and len(history["results"]) <= 2
    assert history["count"] >= 1
    assert vlab.getBenchmarks(platform="nowhere")["count"] == 0
    assert vlab.getPublicBenchmarks()["count"] >= 0
    assert vlab.deleteBenchmark(bench_id) is True
    assert vlab.getBenchmarkInfo(bench_id) is None
    assert vlab.getBenchmarkStatus(bench_id) is None


def test_conversion_through_the_client(vlab: dAIEdgeVLabAPI, small_onnx: Path) -> None:
    ref = vlab.uploadModel(str(small_onnx))
    before = {m["model"] for m in vlab.getModels("user_models")["models"]}
    vlab.convertModel(ref, "user_models", "onnx", "onnx_fp16")
    after = vlab.getModels("user_models")["models"]
    new = [m for m in after if m["model"] not in before]
    assert [m["filename"] for m in new] == ["small_conv_fp16.onnx"]


def test_resource_configurator(vlab: dAIEdgeVLabAPI, small_onnx: Path) -> None:
    resources = ResourceConfigurator(vlab)
    resources.get_available_edge_device_families()
    resources.get_available_runtimes_families()
    family = resources.create_edge_device_family("rpi5", "Raspberry Pi 5", "quad A76")
    assert family["name"] == "rpi5"
    runtime = resources.create_runtime_family("tflm", "TFLite Micro", "MCU runtime", ["tflite"])
    assert runtime["supported_file_extensions"] == [".tflite"]
    instance = resources.create_edge_device_instance("rpi5", ["tflm"], "bench 3", "SN42")
    inventory_id = instance["inventory_id"]
    assert inventory_id.startswith("rpi5-")
    assert inventory_id in [i["inventory_id"] for i in resources.get_my_edge_device_instances()]
    default = resources.get_default_configuration(inventory_id)
    assert default["rpi5"][0]["target_uid"] == inventory_id
    assert "tflm" in default["rpi5"][0]["engines"]

    assert "enum" in resources.get_parameter_types()
    resources.get_parameters()
    created = resources.create_parameter("arena_size", "Arena size", "bytes of tensor arena",
                                         "integer", runtime_id="tflm", default_value=4096)
    assert created["key"] == "arena_size" and created["engines"] == ["tflm"]
    resources.create_parameter("log_level", "Log level", "verbosity", "enum",
                               default_value=["quiet", "verbose"])
    assert resources.get_parameter("log_level")["default_values"] == '["quiet", "verbose"]'
    assert resources.add_parameter_to_runtime("onnxruntime", "log_level") is True
    # The attached parameter is now accepted for onnxruntime and reaches the target.
    bench_id = vlab.startBenchmark("host-cpu", "onnxruntime", str(small_onnx),
                                   inference_number=2, parameters={"log_level": "verbose"})
    report = vlab.waitBenchmarkResult(bench_id, interval=1)["report"]
    assert report["parameters"]["log_level"] == "verbose"
    assert vlab.startBenchmark("host-cpu", "onnxruntime", str(small_onnx),
                               parameters={"log_level": "loud"}) is None
    assert resources.remove_parameter_from_runtime("onnxruntime", "log_level") is True
    assert vlab.startBenchmark("host-cpu", "onnxruntime", str(small_onnx),
                               parameters={"log_level": "verbose"}) is None
    assert resources.get_my_parameters()
    assert resources.delete_parameter("log_level") is True
    assert resources.delete_parameter("arena_size") is True
    assert resources.delete_edge_device_instance(inventory_id) is True
    assert resources.delete_runtime_family("tflm") is True
    assert resources.delete_edge_device_family("rpi5") is True
    families = resources.get_available_edge_device_families()
    assert "host-cpu" in [f["name"] for f in families]
    assert "rpi5" not in [f["name"] for f in families]
    assert "tflm" not in [e["name"] for e in resources.get_available_runtimes_families()]
