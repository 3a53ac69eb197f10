"""Users see and change only their own data, plus what others made public."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from tests.api.test_benchmarks_api import submit
from tests.server import LiveServer, user_client, wait_terminal


@pytest.fixture(scope="module")
def alice_work(server: LiveServer, tmp_path_factory: pytest.TempPathFactory,
               small_onnx: Path) -> dict[str, str]:
    """Alice's benchmark, model and dataset."""
    dataset = tmp_path_factory.mktemp("alice") / "alice.bin"
    dataset.write_bytes(b"\0" * 3 * 8 * 8 * 4)
    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
    with user_client(server, "alice@lab.example") as alice:
        assert alice.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                          files={"dataset": ("alice.bin", dataset.read_bytes())}
                          ).status_code == 207
        bench_id = submit(alice, small_onnx, nb_inference="2").json()["id"]
        assert wait_terminal(alice, bench_id)["status"] == "success"
        with small_onnx.open("rb") as handle:
            ref = alice.post("/api/models/download",
                             files={"model": ("alice.onnx", handle)}).json()["model"]
    return {"bench": bench_id, "model": ref, "dataset": f"alice.bin_{digest}"}


def test_another_user_gets_404_on_everything_of_alice(server: LiveServer,
                                                      alice_work: dict[str, str],
                                                      small_onnx: Path) -> None:
    bench = alice_work["bench"]
    with user_client(server, "bob@lab.example") as bob:
        for path in ("", "/status", "/results", "/user-log", "/error-log", "/binary",
                     "/trained-model", "/events"):
            assert bob.get(f"/api/benchmarks/{bench}{path}").status_code == 404, path
        assert bob.post(f"/api/benchmarks/{bench}/cancel").status_code == 404
        assert bob.delete(f"/api/benchmarks/{bench}").status_code == 404
        assert bench not in [b["id"] for b in bob.get("/api/benchmarks").json()["results"]]
        assert bob.get("/api/results").json() == []
        # Alice's model: not listed, not usable, not importable, not deletable.
        assert alice_work["model"] not in [m["model"] for m in
                                           bob.get("/api/models/list").json()["models"]]
        assert submit(bob, None, model_ref=alice_work["model"]).status_code == 404
        assert bob.post("/api/models/download", params={
            "resource_identifier": alice_work["model"]}).status_code == 404
        assert bob.delete(f"/api/models/{alice_work['model']}").status_code == 404
        assert bob.post("/api/models/convert", params={
            "resource_identifier": alice_work["model"], "convert_to": "onnx_fp16"}
                        ).status_code == 404
        # Alice's dataset: not listed, not usable, not deletable.
        assert alice_work["dataset"] not in bob.get("/api/benchmarks/datasets").json()
        assert submit(bob, small_onnx, dataset_name=alice_work["dataset"]).status_code == 404
        assert bob.delete(f"/api/benchmarks/datasets/{alice_work['dataset']}"
                          ).status_code == 404
    with user_client(server, "alice@lab.example") as alice:
        assert alice.get(f"/api/benchmarks/{bench}").status_code == 200


def test_public_data_is_shared_read_only(server: LiveServer, alice_work: dict[str, str],
                                         small_onnx: Path) -> None:
    with user_client(server, "alice@lab.example") as alice:
        public_id = submit(alice, small_onnx, nb_inference="2", public="true").json()["id"]
        wait_terminal(alice, public_id)
        assert alice.patch(f"/api/models/{alice_work['model']}",
                           json={"public": True}).json()["public"] is True
    with user_client(server, "carol@lab.example") as carol:
        assert public_id in [b["id"] for b in
                             carol.get("/api/benchmarks/public").json()["results"]]
        assert carol.get(f"/api/benchmarks/{public_id}/results").status_code == 200
        assert carol.delete(f"/api/benchmarks/{public_id}").status_code == 403
        assert carol.post(f"/api/benchmarks/{public_id}/cancel").status_code == 403
        assert alice_work["model"] in [m["model"] for m in
                                       carol.get("/api/models/list").json()["models"]]
        # She may benchmark it, or import it into her own library.
        own = carol.post("/api/models/download", params={
            "resource_identifier": alice_work["model"]}).json()
        assert own["owned"] is True and own["model"] != alice_work["model"]
        bench = submit(carol, None, model_ref=alice_work["model"], nb_inference="2").json()
        assert wait_terminal(carol, bench["id"])["status"] == "success"
        assert carol.patch(f"/api/models/{alice_work['model']}",
                           json={"public": False}).status_code == 404


def test_only_admins_change_targets_engines_and_parameters(server: LiveServer) -> None:
    with user_client(server, "dave@lab.example") as dave:
        for method, path, body in [
            ("POST", "/api/targets/hardware-types", {"name": "jetson"}),
            ("DELETE", "/api/targets/hardware-types/host-cpu", None),
            ("POST", "/api/targets/engines", {"name": "trt", "supported_file_extensions": []}),
            ("DELETE", "/api/targets/engines/onnxruntime", None),
            ("POST", "/api/targets/hardware-instances", {"hardware_type_id": "host-cpu"}),
            ("POST", "/api/targets/engine-parameters", {"key": "x", "type": "string"}),
            ("PATCH", "/api/targets/engine-parameters/threads", {"key": "threads",
                                                                "type": "integer"}),
            ("DELETE", "/api/targets/engine-parameters/threads", None),
            ("POST", "/api/targets/engines/onnxruntime/parameters/seed", None),
            ("DELETE", "/api/targets/engines/onnxruntime/parameters/seed", None),
        ]:
            response = dave.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.text)
            assert "administrator" in response.json()["error"]
        # Reading is allowed.
        assert dave.get("/api/targets/engine-parameters/all").status_code == 200
        assert dave.get("/api/targets/hardware-instances").json() == []


def test_requests_without_a_token_get_401(server: LiveServer) -> None:
    for method, path in [("GET", "/api/models/list"), ("POST", "/api/models/download"),
                         ("POST", "/api/benchmarks/train"), ("POST", "/api/benchmarks/fl/run"),
                         ("GET", "/api/targets/hardware-instances"),
                         ("GET", "/api/targets/engine-parameters/all"),
                         ("GET", "/api/users/tokens")]:
        assert httpx.request(method, server.url + path).status_code == 401, path
    for path in ("/api/targets/status", "/api/targets/hardware-types/all",
                 "/api/targets/engines/all"):
        assert httpx.get(server.url + path).status_code == 200, path
