"""The benchmark API against a live server, through plain HTTP."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.models import external_data_model, two_input_model
from tests.server import LiveServer, wait_status, wait_terminal


def submit(client: httpx.Client, model: Path | None, **fields: Any) -> httpx.Response:
    data = {"device": "host-cpu", "engine": "onnxruntime", "nb_inference": "10"}
    data.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    if model is None:
        return client.post("/api/benchmarks/run", data=data)
    with model.open("rb") as handle:
        return client.post("/api/benchmarks/run", data=data,
                           files={"model": (model.name, handle)})


def stored_counts(server: LiveServer) -> tuple[int, int, int, int]:
    """Benchmarks, models and datasets rows, and files in the stores."""
    with sqlite3.connect(server.data_dir / "vlab.db") as db:
        rows = [db.execute(f"select count(*) from {t}").fetchone()[0]
                for t in ("benchmarks", "models", "datasets")]
    files = sum(1 for d in ("models", "datasets", "tmp") for p in (server.data_dir / d).rglob("*")
                if p.is_file())
    return rows[0], rows[1], rows[2], files


def test_status_needs_no_token_but_everything_else_does(server: LiveServer) -> None:
    status = httpx.get(server.url + "/api/benchmarks/status").json()
    assert status["status"] == "OK" and status["version"].startswith("1.")
    assert httpx.get(server.url + "/api/status").json()["version"] == "0.2.0"
    for path in ("/api/benchmarks", "/api/benchmarks/config", "/api/targets/overview",
                 "/api/results", "/api/benchmarks/datasets", "/api/benchmarks/abc/status"):
        response = httpx.get(server.url + path)
        assert response.status_code == 401, path
        assert "authentication required" in response.json()["error"]
    bad = httpx.get(server.url + "/api/benchmarks",
                    headers={"Authorization": "Bearer vlab_not-a-token"})
    assert bad.status_code == 401 and "invalid" in bad.json()["error"]
    assert httpx.post(server.url + "/api/benchmarks/run").status_code == 401


def test_config_lists_targets_engines_and_parameters(server: LiveServer) -> None:
    with server.client() as client:
        config = client.get("/api/benchmarks/config").json()
    assert {"onnxruntime", "openvino", "tflite"} <= set(config["devices"]["host-cpu"]["engines"])
    keys = [p["key"] for p in config["runtimes"]["onnxruntime"]["parameters"]]
    assert "threads" in keys and "graph_optimization_level" in keys
    assert config["runtimes"]["tflite"]["supported_file_extensions"] == [".tflite"]


def test_config_full_adds_descriptions_and_instances(server: LiveServer) -> None:
    with server.client() as client:
        compact = client.get("/api/benchmarks/config").json()
        # The dAIEdge client sends `full=False` (or `True`) spelled as Python prints it.
        assert client.get("/api/benchmarks/config", params={"full": "False"}).json() == compact
        full = client.get("/api/benchmarks/config", params={"full": "True"}).json()
    device = compact["devices"]["host-cpu"]
    assert set(device) == {"instances", "engines"}
    assert set(compact["runtimes"]["onnxruntime"]) == {"display_name", "parameters",
                                                       "supported_file_extensions"}
    # `full` only adds keys: what the compact answer says stays as it is.
    for name, entry in compact["devices"].items():
        assert {k: full["devices"][name][k] for k in entry} == entry
    for name, entry in compact["runtimes"].items():
        assert {k: full["runtimes"][name][k] for k in entry} == entry
    assert full["limits"] == compact["limits"]
    detailed = full["devices"]["host-cpu"]
    assert detailed["display_name"] == "host-cpu" and "description" in detailed
    assert [i["target_uid"] for i in detailed["instance_details"]] == device["instances"]
    first = detailed["instance_details"][0]
    assert first["host"] == "localhost"
    assert first["engines"]["onnxruntime"]["version"]
    assert first["engines"]["onnxruntime"]["supported_types"] == \
        device["engines"]["onnxruntime"]["supported_types"]
    assert full["runtimes"]["onnxruntime"]["builtin"] is True
    assert "description" in full["runtimes"]["onnxruntime"]


def test_benchmark_lifecycle_and_artifacts(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as client:
        response = submit(client, small_onnx, nb_inference="25",
                          parameters={"threads": 1, "graph_optimization_level": "basic"})
        assert response.status_code == 200, response.text
        bench_id = response.json()["id"]
        final = wait_terminal(client, bench_id)
        assert final["status"] == "success", final
        assert final["target_uid"].startswith("host-cpu-")
        report = client.get(f"/api/benchmarks/{bench_id}/results").json()
        assert report["nb_infernece"] == 25 and report["threads"] == 1
        assert report["parameters"]["graph_optimization_level"] == "basic"
        assert report["target_id"] == final["target_uid"]
        assert report["flops"] > 0 and report["nb_parameters_model"] == 2672
        user_log = client.get(f"/api/benchmarks/{bench_id}/user-log")
        assert user_log.status_code == 200 and "25 inferences" in user_log.text
        assert client.get(f"/api/benchmarks/{bench_id}/error-log").status_code == 200
        # TYPE1 has no raw output: 204.
        assert client.get(f"/api/benchmarks/{bench_id}/binary").status_code == 204
        history = client.get("/api/benchmarks", params={"engine": "onnxruntime"}).json()
        assert bench_id in [b["id"] for b in history["results"]]
        # Filters combine: other tests' OpenVINO runs of the model may be listed, not this one.
        other = client.get("/api/benchmarks", params={"engine": "openvino",
                                                      "model": "small_conv"}).json()["results"]
        assert bench_id not in [b["id"] for b in other]
        assert all(b["engine"] == "openvino" for b in other)
        rows = client.get("/api/results").json()
        row = next(r for r in rows if r["id"] == bench_id)
        assert row["latency_mean_s"] == pytest.approx(report["inference_latency"]["mean"])
        assert row["engine"] == "onnxruntime" and row["status"] == "success"
        assert row["created_at"] == final["created_at"]
        # The compact layout carries the same table, each column name once.
        table = client.get("/api/results", params={"format": "columns"}).json()
        assert len(table["data"]) == len(rows)
        as_records = [dict(zip(table["columns"], values, strict=True))
                      for values in table["data"]]
        # A metric that a row lacks (a failed run has none) is null in its column.
        assert {k: v for k, v in next(r for r in as_records if r["id"] == bench_id).items()
                if v is not None} == {k: v for k, v in row.items() if v is not None}
        assert client.get("/api/results", params={"format": "xml"}).status_code == 422


def test_artifacts_answer_428_until_the_benchmark_ends(server: LiveServer,
                                                       small_onnx: Path) -> None:
    with server.client() as client:
        bench_id = submit(client, small_onnx, nb_inference="5",
                          parameters={"min_time_s": 2}).json()["id"]
        for endpoint in ("results", "user-log", "error-log", "binary"):
            assert client.get(f"/api/benchmarks/{bench_id}/{endpoint}").status_code == 428
        assert wait_terminal(client, bench_id)["status"] == "success"


def test_type2_outputs_equal_the_engine_outputs(server: LiveServer, tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(7)
    a = rng.standard_normal((6, 1, 4)).astype(np.float32)
    b = rng.standard_normal((6, 1, 4)).astype(np.float32)
    dataset = tmp_path / "inputs.bin"
    dataset.write_bytes(b"".join(a[i].tobytes() + b[i].tobytes() for i in range(6)))
    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
    with server.client() as client:
        upload = client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                             files={"dataset": (dataset.name, dataset.read_bytes())})
        assert upload.status_code == 207, upload.text
        name = f"inputs.bin_{digest}"
        assert name in client.get("/api/benchmarks/datasets").json()
        bench_id = submit(client, model, dataset_name=name).json()["id"]
        final = wait_terminal(client, bench_id)
        assert final["status"] == "success", final
        assert final["benchmark_type"] == "TYPE2" and final["nb_inference"] == 6
        raw = client.get(f"/api/benchmarks/{bench_id}/binary")
        assert raw.status_code == 200
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"a": a[i], "b": b[i]})[0] for i in range(6)])
    np.testing.assert_allclose(np.frombuffer(raw.content, dtype=np.float32), expected.ravel(),
                               rtol=1e-6)


def test_two_run_concurrently_and_a_third_waits(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as client:
        ids = [submit(client, small_onnx, nb_inference="5", parameters={"min_time_s": 3}
                      ).json()["id"] for _ in range(3)]
        wait_status(client, ids[0], "running")
        wait_status(client, ids[1], "running")
        assert client.get(f"/api/benchmarks/{ids[2]}/status").json()["status"] == "pending"
        overview = client.get("/api/targets/overview").json()["targets"][0]
        assert overview["busy"] == 2 and overview["free"] == 0
        assert overview["queue_length"] == 1
        uids = {client.get(f"/api/benchmarks/{i}").json()["target_uid"] for i in ids[:2]}
        assert uids == {"host-cpu-0", "host-cpu-1"}
        finals = [wait_terminal(client, i) for i in ids]
    assert [f["status"] for f in finals] == ["success"] * 3
    # The third started only after one of the first two had finished.
    assert finals[2]["started_at"] >= min(finals[0]["finished_at"], finals[1]["finished_at"])


def test_cancel_a_running_benchmark(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as client:
        bench_id = submit(client, small_onnx, nb_inference="5",
                          parameters={"min_time_s": 60}).json()["id"]
        wait_status(client, bench_id, "running")
        assert client.post(f"/api/benchmarks/{bench_id}/cancel").json()["status"] == "canceled"
        final = wait_terminal(client, bench_id, timeout=30)
        assert final["status"] == "canceled"
        assert client.get(f"/api/benchmarks/{bench_id}/results").status_code == 204
        # The instance is free again.
        follow_up = submit(client, small_onnx, nb_inference="3").json()["id"]
        assert wait_terminal(client, follow_up)["status"] == "success"


def test_events_stream_progress_until_the_end(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as client:
        bench_id = submit(client, small_onnx, nb_inference="5",
                          parameters={"min_time_s": 1.5}).json()["id"]
        events = []
        with client.stream("GET", f"/api/benchmarks/{bench_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    statuses = [e["status"] for e in events if e["event"] == "status"]
    assert statuses[-1] == "success"
    assert "running" in statuses
    assert any(e["event"] == "progress" and e["progress"]["phase"] == "inference"
               for e in events)


def test_delete_removes_the_benchmark(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as client:
        bench_id = submit(client, small_onnx, nb_inference="2").json()["id"]
        wait_terminal(client, bench_id)
        assert client.delete(f"/api/benchmarks/{bench_id}").json()["deleted"] is True
        assert client.get(f"/api/benchmarks/{bench_id}").status_code == 404


def test_a_failing_target_ends_failed_with_its_logs(tmp_path: Path, small_onnx: Path) -> None:
    repo = tmp_path / "broken"
    for step in ("AI_Support/support.sh", "AI_Build/build.sh", "AI_Deploy/deploy.sh",
                 "AI_Manager/manager.sh"):
        (repo / step).parent.mkdir(parents=True, exist_ok=True)
        (repo / step).write_text('source "$FUNCTIONS_PATH/exit_functions.sh"\n'
                                 'info_print "step ok"\n')
    (repo / "AI_Build/build.sh").write_text(
        'source "$FUNCTIONS_PATH/exit_functions.sh"\necho "toolchain missing" >&2\nexit 3\n')
    config = {"board": [{"target_uid": "board-1", "engines": {
        "onnxruntime": {"repository": str(repo), "supported_types": ["TYPE1"]}}}]}
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps(config))
    live = LiveServer(tmp_path / "data", ["--targets", str(targets)]).start()
    try:
        with live.client() as client:
            bench_id = submit(client, small_onnx, device="board").json()["id"]
            final = wait_terminal(client, bench_id)
            assert final["status"] == "failed"
            # The target's own words first, then what the platform saw.
            assert final["message"] == ("toolchain missing "
                                        "(AI_Build/build.sh failed with exit code 3)")
            assert "toolchain missing" in client.get(
                f"/api/benchmarks/{bench_id}/error-log").text
            assert client.get(f"/api/benchmarks/{bench_id}/user-log").text == "step ok\n"
            assert client.get(f"/api/benchmarks/{bench_id}/results").status_code == 204
    finally:
        live.stop()


BAD_SUBMISSIONS = [
    ({"device": "nope"}, 404, "unknown target 'nope'"),
    ({"engine": "tensorrt"}, 404, "engine 'tensorrt' is not available on host-cpu"),
    ({"benchmark_type": "TYPE7"}, 400, "unknown benchmark type"),
    ({"benchmark_type": "TYPE3"}, 400, "is submitted to /api/benchmarks/train"),
    ({"nb_inference": "0"}, 400, "nb_inference must be between 1 and"),
    ({"nb_inference": "many"}, 422, "nb_inference"),
    ({"parameters": {"threads": "x"}}, 400, "must be an integer"),
    ({"parameters": {"turbo": True}}, 400, "has no parameter(s) turbo"),
    ({"parameters": "{not json"}, 400, "parameters must be JSON"),
    ({"target_uids": ["host-cpu-99"]}, 404, "unknown target instance"),
    ({"benchmark_type": "TYPE2"}, 400, "TYPE2 needs a dataset"),
    ({"dataset_name": "missing.bin_00"}, 404, "unknown dataset"),
]


@pytest.mark.parametrize(("fields", "status", "message"), BAD_SUBMISSIONS)
def test_bad_submissions_are_refused_and_nothing_is_stored(
        server: LiveServer, small_onnx: Path, fields: dict[str, Any], status: int,
        message: str) -> None:
    with server.client() as client:
        before = stored_counts(server)
        response = submit(client, small_onnx, **fields)
        assert response.status_code == status, response.text
        assert message in response.json()["error"]
        assert stored_counts(server) == before


def test_bad_models_are_refused_and_nothing_is_stored(server: LiveServer, tmp_path: Path,
                                                      face_tflite: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01garbage" * 100)
    text = tmp_path / "readme.txt"
    text.write_text("not a model")
    cases = [
        (garbage, {}, "not a valid ONNX model"),
        (text, {}, "unsupported model file"),
        (external_data_model(tmp_path), {}, "external data"),
        (face_tflite, {}, "engine onnxruntime cannot run tflite models"),
    ]
    with server.client() as client:
        for model, fields, message in cases:
            before = stored_counts(server)
            response = submit(client, model, **fields)
            assert response.status_code == 400, response.text
            assert message in response.json()["error"]
            assert stored_counts(server) == before
        no_model = submit(client, None)
        assert no_model.status_code == 400 and "model" in no_model.json()["error"]
        unknown_ref = submit(client, None, model_ref="model-999999")
        assert unknown_ref.status_code == 404


def test_dataset_that_does_not_fit_the_model_is_refused(server: LiveServer,
                                                         tmp_path: Path) -> None:
    model = two_input_model(tmp_path / "two.onnx")
    dataset = tmp_path / "odd.bin"
    dataset.write_bytes(b"\0" * 40)
    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
    with server.client() as client:
        assert client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                           files={"dataset": ("odd.bin", dataset.read_bytes())}
                           ).status_code == 207
        before = stored_counts(server)
        response = submit(client, model, dataset_name=f"odd.bin_{digest}")
        assert response.status_code == 400
        assert "40 bytes, which is not a multiple of the model's input size (32 bytes" in \
            response.json()["error"]
        assert stored_counts(server) == before
        wrong_hash = client.post("/api/benchmarks/datasets/upload", data={"hash": "0" * 64},
                                 files={"dataset": ("odd.bin", b"abc")})
        assert wrong_hash.status_code == 400 and "SHA-256" in wrong_hash.json()["error"]


def test_uploads_over_the_limit_are_refused(tmp_path: Path, squeezenet: Path) -> None:
    live = LiveServer(tmp_path / "data", env={"VLAB_MAX_MODEL_BYTES": "4096",
                                              "VLAB_MAX_DATASET_BYTES": "4096"}).start()
    try:
        with live.client() as client:
            before = stored_counts(live)
            # 15 KiB model over a 4 KiB model limit: refused while the part is saved.
            response = submit(client, squeezenet)
            assert response.status_code == 413, response.text
            assert "the model exceeds the upload limit" in response.json()["error"]
            # A chunked multipart body (no Content-Length) larger than the request limit
            # is refused while it streams in.
            def body() -> Any:
                yield (b'--XX\r\nContent-Disposition: form-data; name="hash"\r\n\r\n'
                       + b"0" * 64 + b'\r\n--XX\r\nContent-Disposition: form-data; '
                       b'name="dataset"; filename="d.bin"\r\n\r\n')
                for _ in range(3):
                    yield b"x" * (1024 * 1024)
                yield b"\r\n--XX--\r\n"
            streamed = client.post("/api/benchmarks/datasets/upload", content=body(),
                                   headers={"Content-Type": "multipart/form-data; boundary=XX"})
            assert streamed.status_code == 413, streamed.text
            assert stored_counts(live) == before
    finally:
        live.stop()


def test_uploaded_file_names_cannot_escape_the_data_dir(server: LiveServer,
                                                         small_onnx: Path) -> None:
    with server.client() as client, small_onnx.open("rb") as handle:
        response = client.post(
            "/api/benchmarks/run", data={"device": "host-cpu", "engine": "onnxruntime",
                                         "nb_inference": "2"},
            files={"model": ("../../../../tmp/evil.onnx", handle)})
        assert response.status_code == 200
        final = wait_terminal(client, response.json()["id"])
    assert final["model"] == "evil.onnx"
    assert not Path("/tmp/evil.onnx").exists()


def test_concurrent_uploads_of_one_model_are_all_accepted(tmp_path: Path,
                                                          small_onnx: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    live = LiveServer(tmp_path / "data").start()
    try:
        def one(_index: int) -> int:
            with live.client() as client:
                response = submit(client, small_onnx, nb_inference="1")
                if response.status_code == 200:
                    client.post(f"/api/benchmarks/{response.json()['id']}/cancel")
                return response.status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(32)))
        assert codes == [200] * 32
        _benchmarks, models, _datasets, files = stored_counts(live)
        assert models == 1 and files == 1  # one row and one blob, no stray upload
    finally:
        live.stop()


@pytest.mark.slow
def test_a_dataset_with_more_samples_than_allowed_is_refused(tmp_path: Path) -> None:
    """TYPE2 runs once per sample: the count the dataset decides is bounded like any other."""
    live = LiveServer(tmp_path / "data", env={"VLAB_MAX_NB_INFERENCE": "5"}).start()
    try:
        model = two_input_model(tmp_path / "two.onnx")
        dataset = tmp_path / "inputs.bin"
        dataset.write_bytes(np.zeros((6, 2, 4), np.float32).tobytes())  # 6 samples
        digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
        with live.client() as client:
            client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                        files={"dataset": (dataset.name, dataset.read_bytes())})
            answer = submit(client, model, dataset_name=f"inputs.bin_{digest}", nb_inference="5")
            assert answer.status_code == 400, answer.text
            assert "the dataset holds 6 samples" in answer.json()["error"]
            assert client.get("/api/models/list").json()["models"] == []  # nothing stored
    finally:
        live.stop()
