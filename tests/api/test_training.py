"""On-device training (TYPE3) and federated learning (TYPE4) submissions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.server import LiveServer, wait_terminal

pytestmark = pytest.mark.slow


def odt_config(refs: dict[str, str]) -> dict[str, Any]:
    return {"learning_parameters": {"batch_size": 2, "epochs": 1, "learning_rate": 0.01},
            "input": {"name": "x", "shape": [3, 8, 8], "dtype": "float32",
                      "train_file": refs["x_train"], "test_file": refs["x_test"]},
            "output": {"name": "y", "shape": [10], "dtype": "float32",
                       "train_file": refs["y_train"], "test_file": refs["y_test"]}}


def upload_datasets(client: Any, tmp_path: Path) -> dict[str, str]:
    refs = {}
    for name, shape in (("x_train", (4, 3, 8, 8)), ("x_test", (2, 3, 8, 8)),
                        ("y_train", (4, 10)), ("y_test", (2, 10))):
        path = tmp_path / f"{name}.bin"
        np.zeros(shape, dtype=np.float32).tofile(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                           files={"dataset": (path.name, path.read_bytes())}).status_code == 207
        refs[name] = f"{path.name}_{digest}"
    return refs


def train(client: Any, model: Path, config: Any, device: str = "host-cpu",
          engine: str = "onnxruntime") -> Any:
    return client.post("/api/benchmarks/train", data={"device": device, "engine": engine},
                       files={"model": (model.name, model.read_bytes()),
                              "config": ("config", json.dumps(config))})


def test_odt_config_is_validated(server: LiveServer, small_onnx: Path, tmp_path: Path) -> None:
    with server.client() as client:
        refs = upload_datasets(client, tmp_path)
        good = odt_config(refs)
        for broken, message in [
            ({**good, "learning_parameters": {"batch_size": 0, "epochs": 1}},
             "learning_parameters.batch_size must be a positive integer"),
            ({k: v for k, v in good.items() if k != "output"}, "output must be an object"),
            ({**good, "input": {**good["input"], "dtype": "floaty"}}, "not a numpy dtype"),
            ({**good, "input": {**good["input"], "train_file": None}},
             "input.train_file is required"),
            ({**good, "input": {**good["input"], "shape": []}},
             "input.shape must be a list of dimensions"),
            ({**good, "learning_parameters": {"batch_size": 2, "epochs": 1,
                                              "learning_rate": -1}},
             "learning_parameters.learning_rate must be a number above 0"),
            ({**good, "learning_parameters": {"batch_size": 2, "epochs": 1, "shuffle": "yes"}},
             "learning_parameters.shuffle must be true or false"),
            ({**good, "learning_parameters": {"batch_size": 2, "epochs": 1, "seed": -1}},
             "learning_parameters.seed must be an integer"),
            ({**good, "learning_parameters": {"batch_size": 2, "epochs": 1, "optimizer": 3}},
             "learning_parameters.optimizer must be a name"),
        ]:
            response = train(client, small_onnx, broken)
            assert response.status_code == 400, response.text
            assert message in response.json()["error"]
        not_json = client.post("/api/benchmarks/train",
                               data={"device": "host-cpu", "engine": "onnxruntime"},
                               files={"model": ("m.onnx", small_onnx.read_bytes()),
                                      "config": ("config", b"{oops")})
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
        # A valid config, but the host CPU trains with onnxruntime only.
        refused = train(client, small_onnx, good, engine="openvino")
        assert refused.status_code == 400
        assert "host-cpu with openvino does not support TYPE3" in refused.json()["error"]
        # The config must fit the model's tensors (checked once the model is read).
        renamed = {**good, "input": {**good["input"], "name": "image"}}
        refused = train(client, small_onnx, renamed)
        assert refused.status_code == 400
        assert "input.name 'image' is not an input of the model" in refused.json()["error"]
        # host-cpu offers TYPE3 with onnxruntime (the dAIEdge client reads these).
        config = client.get("/api/benchmarks/config").json()
        assert "TYPE3" in config["devices"]["host-cpu"]["engines"]["onnxruntime"][
            "supported_types"]


def test_training_runs_on_a_target_that_offers_it(tmp_path: Path, small_onnx: Path) -> None:
    repo = tmp_path / "trainer"
    scripts = {
        "AI_Support/support.sh": 'test -f "$ODT_CONFIG_FILENAME"',
        "AI_Build/build.sh": "true",
        "AI_Deploy/deploy.sh": "true",
        "AI_Manager/manager.sh": (
            'python3 - <<EOF\nimport json, os\n'
            'c = json.load(open(os.environ["ODT_CONFIG_FILENAME"]))\n'
            'assert os.path.getsize(c["input"]["train_file"]) == 4 * 3 * 8 * 8 * 4\n'
            'json.dump({"train_engine": os.environ["RUNTIME"], "benchmark_type": '
            'os.environ["BENCHMARK_TYPE"], "loss_train": {"min": 0.1, "max": 0.9}}, '
            'open("AI_Manager/out/report_odt.json", "w"))\nEOF\n'
            'cp "$MODEL_FILENAME" AI_Manager/out/model.onnx\ninfo_print "trained"'),
    }
    for relative, body in scripts.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(f'source "$FUNCTIONS_PATH/exit_functions.sh"\n{body}\n')
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"trainer": [{"target_uid": "trainer-1", "engines": {
        "onnxruntime": {"repository": str(repo), "supported_types": ["TYPE1", "TYPE3"]}}}]}))
    live = LiveServer(tmp_path / "data", ["--targets", str(targets)]).start()
    try:
        with live.client() as client:
            refs = upload_datasets(client, tmp_path)
            good = odt_config(refs)
            missing = {**good, "input": {**good["input"], "test_file": "nope.bin_00"}}
            refused = train(client, small_onnx, missing, device="trainer")
            assert refused.status_code == 404 and "unknown dataset" in refused.json()["error"]
            odd = {**good, "output": {**good["output"], "shape": [7]}}
            refused = train(client, small_onnx, odd, device="trainer")
            assert refused.status_code == 400
            assert "not a multiple of the output sample size (28 bytes)" in \
                refused.json()["error"]
            response = train(client, small_onnx, good, device="trainer")
            assert response.status_code == 200, response.text
            final = wait_terminal(client, response.json()["id"])
            assert final["status"] == "success", final
            assert final["benchmark_type"] == "TYPE3"
            report = client.get(f"/api/benchmarks/{final['id']}/results").json()
            assert report["train_engine"] == "onnxruntime"
            model = client.get(f"/api/benchmarks/{final['id']}/trained-model")
            assert model.status_code == 200 and model.content == small_onnx.read_bytes()
            assert model.headers["content-disposition"].endswith('filename="model.onnx"')
            assert client.get(f"/api/benchmarks/{final['id']}/binary").status_code == 204
    finally:
        live.stop()


def fl_config(model_runtime: str = "onnxruntime") -> dict[str, Any]:
    odt = odt_config({k: "x.bin_00" for k in ("x_train", "x_test", "y_train", "y_test")})
    return {"experiment_path": "exp", "model": {"path": "m.onnx", "runtime": model_runtime,
                                                "input_shape": [3, 8, 8], "output_shape": [10],
                                                "model_filename": "m.onnx"},
            "config": {"rounds": 2, "aggregator": "FedAvg", "min_fit_clients": 1},
            "clients": [{"client_id": "client_1", "target": "host-cpu",
                         "runtime": model_runtime, "odt_config": odt}],
            "counters": {"total_clients": 1}}


def test_federated_learning_is_validated_then_refused(server: LiveServer,
                                                      small_onnx: Path) -> None:
    def run(config: Any) -> Any:
        return client.post("/api/benchmarks/fl/run", files={
            "model": ("m.onnx", small_onnx.read_bytes()),
            "fl_config": ("fl_experiment_config_updated.json", json.dumps(config))})

    with server.client() as client:
        before = client.get("/api/benchmarks/fl").json()["count"]  # the server is shared
        broken = fl_config()
        broken["config"]["rounds"] = 0
        assert "config.rounds must be a positive integer" in run(broken).json()["error"]
        no_clients = {**fl_config(), "clients": []}
        assert run(no_clients).status_code == 400
        refused = run(fl_config())
        assert refused.status_code == 400
        assert "clients[0].odt_config.input.train_file: unknown dataset" in refused.json()["error"]
        assert client.get("/api/benchmarks/fl").json()["count"] == before  # none stored
        assert client.get("/api/benchmarks/fl/abc/status").status_code == 404


# -- the host-cpu target's preparation of a model for training (no server) ---------------------
def _digits_config(tmp_path: Path, output: str = "probs", **learning: Any) -> Path:
    from tests.models import digits_split

    x_train, y_train, _x, _y = digits_split()
    x_train[:64].tofile(tmp_path / "x.bin")
    y_train[:64].tofile(tmp_path / "y.bin")
    config = {"learning_parameters": {"batch_size": 8, "epochs": 1, **learning},
              "input": {"name": "input", "shape": [64], "dtype": "float32",
                        "train_file": "x.bin", "test_file": "x.bin"},
              "output": {"name": output, "shape": [1], "dtype": "int64",
                         "train_file": "y.bin", "test_file": "y.bin"}}
    path = tmp_path / "odt.json"
    path.write_text(json.dumps(config))
    return path


def test_prepare_converts_cuts_the_softmax_and_picks_the_weights(tmp_path: Path) -> None:
    import onnx

    from tests.models import digits_mlp
    from vlab_backend.training.prepare import prepare

    model = digits_mlp(tmp_path / "mlp.onnx")  # onnx's defaults: IR 14, opset 28
    plan = prepare(model, _digits_config(tmp_path), tmp_path / "out", root=tmp_path)
    assert plan["converted"] == {"from_opset": 28, "to_opset": 17, "from_ir_version": 14,
                                 "to_ir_version": 8}
    assert plan["cut"]["op_type"] == "Softmax" and plan["trained_output"] == "logits"
    assert plan["loss"] == "cross_entropy" and plan["optimizer"] == "adamw"
    assert plan["learning_rate"] == 0.01 and plan["shuffle"] is True
    assert plan["targets"] == "indices" and plan["classes"] == 10
    assert sorted(plan["trainable"]) == ["B1", "B2", "W1", "W2"] and plan["frozen"] == []
    prepared = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert prepared.ir_version == 8 and prepared.opset_import[0].version == 17
    assert [n.op_type for n in prepared.graph.node] == ["Gemm", "Relu", "Gemm"]
    assert prepared.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert (tmp_path / "out" / "ort_train.py").is_file()


def test_prepare_refuses_what_it_cannot_train(tmp_path: Path) -> None:
    from tests.models import digits_cnn, digits_mlp
    from vlab_backend.training.prepare import PrepareError, prepare

    model = digits_mlp(tmp_path / "mlp.onnx", softmax=False)
    with pytest.raises(PrepareError, match=r"learning_parameters\.optimizer 'Adam' is not one"):
        prepare(model, _digits_config(tmp_path, "logits", optimizer="Adam"), tmp_path / "o")
    with pytest.raises(PrepareError, match=r"learning_parameters\.loss 'hinge' is not one"):
        prepare(model, _digits_config(tmp_path, "logits", loss="hinge"), tmp_path / "o")
    pooled = digits_cnn(tmp_path / "avg.onnx", pool="AveragePool")
    config = json.loads(_digits_config(tmp_path, "logits").read_text())
    config["input"]["shape"] = [1, 8, 8]
    (tmp_path / "cnn.json").write_text(json.dumps(config))
    with pytest.raises(PrepareError, match=r"operator AveragePool \(node pool\)"):
        prepare(pooled, tmp_path / "cnn.json", tmp_path / "o")


def test_settings_and_statistics_are_frozen() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from vlab_backend.training.prepare import parameters

    def tensor(name: str, *shape: int) -> Any:
        return numpy_helper.from_array(np.ones(shape, np.float32), name)

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]),
         helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
         helper.make_node("Clip", ["n", "lo", "hi"], ["k"]),
         helper.make_node("Mul", ["k", "half"], ["h"]),
         helper.make_node("Add", ["h", "shift"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [tensor("w", 2, 1, 3, 3), tensor("s", 2), tensor("b", 2), tensor("m", 2),
         tensor("v", 2), tensor("lo"), tensor("hi"), tensor("half"), tensor("shift", 2, 1, 1)])
    trainable, frozen = parameters(graph)
    assert sorted(trainable) == ["b", "s", "shift", "w"]
    assert sorted(frozen) == ["half", "hi", "lo", "m", "v"]
