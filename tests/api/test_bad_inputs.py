"""The bad-input corpus: ways of getting a request wrong, run against a live server as a table.

Each case is refused with its 4xx (never a 5xx) and a message that says what is wrong, and
leaves nothing stored: no row in the store, no file in the data dir's models/, datasets/ or
tmp/. Placeholders in paths and fields (`<bench>`, `<model>`, ...) name the objects the
fixture makes; file parts given as `@name` are the fixture's model files.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.models import conv_model, external_data_model, tflite_zoo, two_input_model
from tests.server import LiveServer, add_user, wait_terminal

pytestmark = pytest.mark.slow

LIMIT = 512 * 1024  # the server's model and dataset limits here
DEEP = "[" * 2000 + "]" * 2000  # over any recursion limit
DEEPISH = "[" * 40 + "]" * 40  # parses, but nests deeper than the lab accepts
HUGE = "x" * 100_000
EMPTY_SHA = hashlib.sha256(b"").hexdigest()
ODT = {"learning_parameters": {"batch_size": 1, "epochs": 1},
       "input": {"name": "x", "shape": [3, 8, 8], "dtype": "float32",
                 "train_file": "<dataset>", "test_file": "<dataset>"},
       "output": {"name": "y", "shape": [10], "dtype": "float32",
                  "train_file": "<dataset>", "test_file": "<dataset>"}}
TABLES = ("benchmarks", "models", "datasets", "hardware_types", "engine_families",
          "engine_parameters", "engine_parameter_links", "target_instances", "hosts")


@dataclass(frozen=True)
class Case:
    """One bad request: who sends it (`admin`, `alice`, `bob`, `none`, or an Authorization
    header), what, and the status and message substring of its refusal."""

    name: str
    method: str
    path: str
    status: int
    message: str
    sender: str = "admin"
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, str | bytes]] | None = None
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def run(fields: dict[str, str], model: str = "@small") -> dict[str, Any]:
    """A benchmark submission: these fields over a valid TYPE1 run of `model`."""
    data = {"device": "host-cpu", "engine": "onnxruntime", "nb_inference": "2", **fields}
    return {"data": {k: v for k, v in data.items() if v is not None},
            "files": {"model": ("model" + (".tflite" if model == "@tflite" else ".onnx"),
                                model)} if model else None}


def params(text: str) -> dict[str, Any]:
    return run({"parameters": text})


def train(config: str | bytes, **fields: str) -> dict[str, Any]:
    return {"data": {"device": "host-cpu", "engine": "onnxruntime", **fields},
            "files": {"model": ("m.onnx", "@small"), "config": ("odt.json", config)}}


RUN = ("POST", "/api/benchmarks/run")
UPLOAD = ("POST", "/api/benchmarks/datasets/upload")
MODELS = ("POST", "/api/models/download")
TRAIN = ("POST", "/api/benchmarks/train")
PARAMETERS = ("POST", "/api/targets/engine-parameters")

CASES = [
    # -- tokens ------------------------------------------------------------------------------
    Case("no token", "GET", "/api/benchmarks", 401, "authentication required", "none"),
    Case("no token to run", *RUN, 401, "authentication required", "none", **run({})),
    Case("unknown api token", "GET", "/api/models/list", 401, "invalid",
         "Bearer vlab_not-a-token"),
    Case("basic auth", "GET", "/api/results", 401, "authentication required", "Basic YTpi"),
    Case("garbage jwt", "GET", "/api/benchmarks/config", 401, "", "Bearer eyJ.eyJ.sig"),
    Case("huge token", "GET", "/api/benchmarks", 401, "", "Bearer vlab_" + "x" * 4000),
    Case("user token on a job", "GET", "/api/jobs/<bench>/spec", 401,
         "a job credential is required"),
    Case("unknown job credential", "GET", "/api/jobs/<bench>/spec", 401, "",
         "Bearer vlabjob_nope"),
    Case("bad refresh token", "POST", "/api/users/token/refresh", 401, "", "none",
         json={"refresh": "nope"}),
    Case("login without password", "POST", "/api/users/login", 422, "password", "none",
         json={"email": "a@b.example"}),
    # -- benchmark submissions: fields -------------------------------------------------------
    Case("no device", *RUN, 422, "device", **run({"device": None})),
    Case("no engine", *RUN, 422, "engine", **run({"engine": None})),
    Case("no model and no ref", *RUN, 400, "send a model file", **run({}, model="")),
    Case("unknown target", *RUN, 404, "unknown target 'nope'", **run({"device": "nope"})),
    Case("huge target name", *RUN, 404, "unknown target", **run({"device": HUGE})),
    Case("unknown engine", *RUN, 404, "engine 'tensorrt' is not available",
         **run({"engine": "tensorrt"})),
    Case("unknown type", *RUN, 400, "unknown benchmark type", **run({"benchmark_type": "T7"})),
    Case("training on run", *RUN, 400, "TYPE3", **run({"benchmark_type": "TYPE3"})),
    Case("federated on run", *RUN, 400, "TYPE4", **run({"benchmark_type": "TYPE4"})),
    Case("TYPE2 without dataset", *RUN, 400, "TYPE2 needs a dataset",
         **run({"benchmark_type": "TYPE2"})),
    Case("unknown dataset", *RUN, 404, "unknown dataset", **run({"dataset_name": "x.bin_0"})),
    Case("another user's dataset", *RUN, 404, "unknown dataset", "bob",
         **run({"dataset_name": "<dataset>"})),
    Case("unknown model ref", *RUN, 404, "unknown model reference 'model-999999'",
         **run({"model_ref": "model-999999"}, model="")),
    Case("path as model ref", *RUN, 404, "unknown model reference",
         **run({"model_ref": "../../vlab.db"}, model="")),
    Case("another user's model", *RUN, 404, "unknown model reference", "bob",
         **run({"model_ref": "<model>"}, model="")),
    Case("unknown instance", *RUN, 404, "unknown target instance",
         **run({"target_uids": '["host-cpu-999"]'})),
    Case("instances not a list", *RUN, 400, "target_uids must be a JSON list",
         **run({"target_uids": '{"a": 1}'})),
    Case("instances not json", *RUN, 400, "target_uids must be JSON",
         **run({"target_uids": "host-cpu-0"})),
    Case("instances nested deep", *RUN, 400, "target_uids must be JSON",
         **run({"target_uids": DEEP})),
    # -- benchmark submissions: numbers ------------------------------------------------------
    Case("zero inferences", *RUN, 400, "nb_inference must be between 1 and",
         **run({"nb_inference": "0"})),
    Case("negative inferences", *RUN, 400, "nb_inference must be between 1 and",
         **run({"nb_inference": "-3"})),
    Case("too many inferences", *RUN, 400, "nb_inference must be between 1 and",
         **run({"nb_inference": str(10**12)})),
    Case("inferences as words", *RUN, 422, "nb_inference", **run({"nb_inference": "many"})),
    Case("NaN inferences", *RUN, 422, "nb_inference", **run({"nb_inference": "NaN"})),
    Case("infinite inferences", *RUN, 422, "nb_inference", **run({"nb_inference": "inf"})),
    Case("overflowing inferences", *RUN, 422, "nb_inference",
         **run({"nb_inference": "1e999"})),
    Case("fractional inferences", *RUN, 422, "nb_inference", **run({"nb_inference": "2.5"})),
    # -- benchmark submissions: parameters ---------------------------------------------------
    Case("parameters not json", *RUN, 400, "parameters must be JSON", **params("{not json")),
    Case("parameters a list", *RUN, 400, "parameters must be a JSON dict", **params("[1]")),
    Case("infinite min_time_s", *RUN, 400, "NaN and Infinity are not JSON",
         **params('{"min_time_s": Infinity}')),
    Case("NaN min_time_s", *RUN, 400, "NaN and Infinity are not JSON",
         **params('{"min_time_s": NaN}')),
    Case("-Infinity warm-up", *RUN, 400, "parameters must be JSON",
         **params('{"warmup_min_s": -Infinity}')),
    Case("overflowing min_time_s", *RUN, 400, "number is infinity",
         **params('{"min_time_s": 1e999}')),
    Case("infinite min_time_s as text", *RUN, 400, "'min_time_s' must be a finite number",
         **params('{"min_time_s": "Infinity"}')),
    Case("NaN min_time_s as text", *RUN, 400, "'min_time_s' must be a finite number",
         **params('{"min_time_s": "nan"}')),
    Case("hour-long min_time_s", *RUN, 400, "'min_time_s' must be at most 600",
         **params('{"min_time_s": 3600}')),
    Case("long warm-up", *RUN, 400, "'warmup_min_s' must be at most 60",
         **params('{"warmup_min_s": 1e6}')),
    Case("too many threads", *RUN, 400, "'threads' must be at most 1024",
         **params('{"threads": 100000}')),
    Case("negative threads", *RUN, 400, "'threads' must be at least 0",
         **params('{"threads": -1}')),
    Case("fractional threads", *RUN, 400, "'threads' must be an integer",
         **params('{"threads": 2.5}')),
    Case("boolean threads", *RUN, 400, "'threads' must be an integer",
         **params('{"threads": true}')),
    Case("seed over 64 bits", *RUN, 400, "'seed' must be at most 9223372036854775807",
         **params(f'{{"seed": {2**63}}}')),
    Case("too many warm-up runs", *RUN, 400, "'warmup_runs' must be at most 100000",
         **params('{"warmup_runs": 1000000000}')),
    Case("no profile runs", *RUN, 400, "'profile_runs' must be at least 1",
         **params('{"profile_runs": 0}')),
    Case("unknown parameter", *RUN, 400, "has no parameter(s) turbo",
         **params('{"turbo": true}')),
    Case("unknown choice", *RUN, 400, "must be one of",
         **params('{"graph_optimization_level": "max"}')),
    Case("parameters nested 2000 deep", *RUN, 400, "parameters must be JSON",
         **params('{"a": ' + DEEP + "}")),
    Case("parameters nested 40 deep", *RUN, 400, "nested more than 32 levels",
         **params('{"a": ' + DEEPISH + "}")),
    Case("huge parameters", *RUN, 400, "parameters must be at most 65536 characters",
         **params(json.dumps({"a": HUGE}))),
    # -- benchmark submissions: models and datasets ------------------------------------------
    Case("tflite on onnxruntime", *RUN, 400, "engine onnxruntime cannot run tflite models",
         **run({}, model="@tflite")),
    Case("onnx on tflite", *RUN, 400, "engine tflite cannot run onnx models",
         **run({"engine": "tflite"})),
    Case("not a model", *RUN, 400, "unsupported model file",
         data={"device": "host-cpu", "engine": "onnxruntime"},
         files={"model": ("readme.txt", b"not a model")}),
    Case("corrupt onnx", *RUN, 400, "not a valid ONNX model",
         data={"device": "host-cpu", "engine": "onnxruntime"},
         files={"model": ("bad.onnx", b"\x08\x01garbage" * 100)}),
    Case("empty onnx", *RUN, 400, "the file is empty",
         data={"device": "host-cpu", "engine": "onnxruntime"},
         files={"model": ("empty.onnx", b"")}),
    Case("external data", *RUN, 400, "external data",
         data={"device": "host-cpu", "engine": "onnxruntime"},
         files={"model": ("external.onnx", "@external")}),
    Case("traversal name, not a model", *RUN, 400, "unsupported model file",
         data={"device": "host-cpu", "engine": "onnxruntime"},
         files={"model": ("../../../../tmp/evil.txt", b"evil")}),
    Case("model over its limit", *RUN, 413, "the model exceeds the upload limit",
         data={"device": "host-cpu", "engine": "onnxruntime"},
         files={"model": ("big.onnx", b"\0" * (LIMIT + 1))}),
    Case("dataset not a multiple", *RUN, 400, "not a multiple of the model's input size",
         **run({"dataset_name": "<odd>"})),
    Case("form sent as json", *RUN, 422, "device",
         json={"device": "host-cpu", "engine": "onnxruntime"}),
    Case("broken multipart", *RUN, 400, "",
         content=b"--XX\r\nnot a part\r\n",
         headers={"Content-Type": "multipart/form-data; boundary=XX"}),
    Case("request over the limit", *RUN, 413, "",
         content=b"\0" * (2 * LIMIT + 2 * 1024 * 1024),
         headers={"Content-Type": "multipart/form-data; boundary=XX"}),
    # -- datasets ----------------------------------------------------------------------------
    Case("dataset without hash", *UPLOAD, 422, "hash",
         files={"dataset": ("d.bin", b"1234")}),
    Case("dataset without file", *UPLOAD, 422, "dataset", data={"hash": EMPTY_SHA}),
    Case("hash not hex", *UPLOAD, 400, "hash must be the SHA-256",
         data={"hash": "z" * 64}, files={"dataset": ("d.bin", b"1234")}),
    Case("huge hash", *UPLOAD, 400, "hash must be the SHA-256",
         data={"hash": HUGE}, files={"dataset": ("d.bin", b"1234")}),
    Case("hash of another file", *UPLOAD, 400, "SHA-256 is",
         data={"hash": "0" * 64}, files={"dataset": ("d.bin", b"1234")}),
    Case("empty dataset", *UPLOAD, 400, "the dataset is empty",
         data={"hash": EMPTY_SHA}, files={"dataset": ("d.bin", b"")}),
    Case("traversal dataset name", *UPLOAD, 400, "SHA-256 is",
         data={"hash": "0" * 64}, files={"dataset": ("../../../etc/passwd", b"1234")}),
    Case("dataset over its limit", *UPLOAD, 413, "exceeds the upload limit",
         data={"hash": "0" * 64}, files={"dataset": ("d.bin", b"\0" * (LIMIT + 1))}),
    Case("delete unknown dataset", "DELETE", "/api/benchmarks/datasets/nope.bin_00", 404,
         "no dataset"),
    Case("delete another user's dataset", "DELETE", "/api/benchmarks/datasets/<dataset>", 404,
         "no dataset", "bob"),
    # -- the model library -------------------------------------------------------------------
    Case("nothing to store", *MODELS, 400, "send a model file"),
    Case("unknown model to import", *MODELS, 404, "unknown model reference",
         params={"resource_identifier": "model-999999"}),
    Case("another user's model to import", *MODELS, 404, "unknown model reference", "bob",
         params={"resource_identifier": "<model>"}),
    Case("store a non-model", *MODELS, 400, "unsupported model file",
         files={"model": ("notes.md", b"# notes")}),
    Case("store a corrupt tflite", *MODELS, 400, "tflite",
         files={"model": ("bad.tflite", b"TFL3" + b"\xff" * 64)}),
    Case("store a model over its limit", *MODELS, 413, "the model exceeds the upload limit",
         files={"model": ("big.onnx", b"\0" * (LIMIT + 1))}),
    Case("unknown platform", "GET", "/api/models/list", 400, "platform must be one of",
         params={"platform": "everyone"}),
    Case("convert unknown model", "POST", "/api/models/convert", 404, "unknown model reference",
         params={"resource_identifier": "model-999999", "convert_to": "onnx_fp16"}),
    Case("convert another user's model", "POST", "/api/models/convert", 404,
         "unknown model reference", "bob",
         params={"resource_identifier": "<model>", "convert_to": "onnx_fp16"}),
    Case("convert with a wrong format", "POST", "/api/models/convert", 400,
         "is a onnx model, not tflite", "alice",
         params={"resource_identifier": "<model>", "convert_to": "onnx_fp16",
                 "format": "tflite"}),
    Case("convert without a target", "POST", "/api/models/convert", 422, "convert_to",
         params={"resource_identifier": "<model>"}),
    Case("share another user's model", "PATCH", "/api/models/<model>", 404,
         "unknown model reference", "bob", json={"public": True}),
    Case("visibility not a boolean", "PATCH", "/api/models/<model>", 422, "public", "alice",
         json={"public": "maybe"}),
    Case("delete an unknown model", "DELETE", "/api/models/model-999999", 404,
         "unknown model reference"),
    Case("delete a model by name", "DELETE", "/api/models/..%2F..%2Fvlab.db", 404, ""),
    # -- history and pagination --------------------------------------------------------------
    Case("page zero", "GET", "/api/benchmarks", 422, "page", params={"page": "0"}),
    Case("negative page", "GET", "/api/benchmarks", 422, "page", params={"page": "-1"}),
    Case("page as words", "GET", "/api/benchmarks", 422, "page", params={"page": "two"}),
    Case("NaN page", "GET", "/api/benchmarks", 422, "page", params={"page": "NaN"}),
    Case("overflowing page", "GET", "/api/benchmarks", 422, "page", params={"page": "1e999"}),
    Case("empty pages", "GET", "/api/benchmarks", 422, "page_length",
         params={"page_length": "0"}),
    Case("huge pages", "GET", "/api/benchmarks/public", 422, "page_length",
         params={"page_length": str(10**20)}),
    Case("unknown status filter", "GET", "/api/benchmarks", 400, "status must be one of",
         params={"status": "done"}),
    Case("no rows", "GET", "/api/results", 422, "limit", params={"limit": "0"}),
    Case("too many rows", "GET", "/api/results", 422, "limit", params={"limit": "1e9"}),
    Case("unknown layout", "GET", "/api/results", 422, "format", params={"format": "xml"}),
    Case("federated page zero", "GET", "/api/benchmarks/fl", 422, "page",
         params={"page": "0"}),
    Case("federated huge pages", "GET", "/api/benchmarks/fl", 422, "page_length",
         params={"page_length": str(10**6)}),
    # -- benchmark ids -----------------------------------------------------------------------
    Case("unknown benchmark", "GET", "/api/benchmarks/0123456789abcdef", 404, "no benchmark"),
    Case("huge benchmark id", "GET", "/api/benchmarks/" + "a" * 5000 + "/status", 404,
         "no benchmark"),
    Case("another user's benchmark", "GET", "/api/benchmarks/<bench>", 404, "no benchmark",
         "bob"),
    Case("another user's report", "GET", "/api/benchmarks/<bench>/results", 404,
         "no benchmark", "bob"),
    Case("another user's log", "GET", "/api/benchmarks/<bench>/error-log", 404,
         "no benchmark", "bob"),
    Case("cancel another user's benchmark", "POST", "/api/benchmarks/<bench>/cancel", 404,
         "no benchmark", "bob"),
    Case("delete another user's benchmark", "DELETE", "/api/benchmarks/<bench>", 404,
         "no benchmark", "bob"),
    # -- training and federated learning -----------------------------------------------------
    Case("training without config", *TRAIN, 422, "config",
         data={"device": "host-cpu", "engine": "onnxruntime"},
         files={"model": ("m.onnx", "@small")}),
    Case("training config not json", *TRAIN, 400, "the ODT config is not valid JSON",
         **train("{nope")),
    Case("training config not utf-8", *TRAIN, 400, "the ODT config is not valid JSON",
         **train(b"\xff\xfe{}")),
    Case("training config with NaN", *TRAIN, 400, "NaN and Infinity are not JSON",
         **train('{"learning_parameters": {"batch_size": NaN}}')),
    Case("training config nested 2000 deep", *TRAIN, 400, "the ODT config is not valid JSON",
         **train('{"a": ' + DEEP + "}")),
    Case("training config nested 40 deep", *TRAIN, 400, "nested more than 32 levels",
         **train('{"a": ' + DEEPISH + "}")),
    Case("training config over its limit", *TRAIN, 413, "the ODT config exceeds 1024 KiB",
         **train(json.dumps({"a": "x" * (1024 * 1024)}))),
    Case("training config without parameters", *TRAIN, 400, "learning_parameters",
         **train(json.dumps({"input": {}}))),
    Case("training with zero epochs", *TRAIN, 400, "epochs must be a positive integer",
         **train(json.dumps({**ODT, "learning_parameters": {"batch_size": 1, "epochs": 0}}))),
    Case("training with fractional batches", *TRAIN, 400,
         "batch_size must be a positive integer",
         **train(json.dumps({**ODT, "learning_parameters": {"batch_size": 0.5,
                                                             "epochs": 1}}))),
    Case("training instances nested deep", *TRAIN, 400, "target_uids must be JSON",
         **train(json.dumps(ODT), target_uids=DEEP)),
    Case("federated config nested deep", "POST", "/api/benchmarks/fl/run", 400,
         "the FL config is not valid JSON",
         files={"model": ("m.onnx", "@small"), "fl_config": ("fl.json", DEEP)}),
    Case("federated config without clients", "POST", "/api/benchmarks/fl/run", 400,
         "is required", files={"model": ("m.onnx", "@small"), "fl_config": ("fl.json", "{}")}),
    Case("unknown experiment", "GET", "/api/benchmarks/fl/x/status", 404,
         "no federated-learning experiment"),
    # -- resources (administrators) ----------------------------------------------------------
    Case("hardware type with a path", "POST", "/api/targets/hardware-types", 400,
         "must be 1-100 letters", json={"name": "../etc"}),
    Case("hardware type with a long name", "POST", "/api/targets/hardware-types", 400,
         "must be 1-100 letters", json={"name": "a" * 300}),
    Case("hardware type with a huge description", "POST", "/api/targets/hardware-types", 422,
         "description", json={"name": "board", "description": HUGE}),
    Case("hardware type without a name", "POST", "/api/targets/hardware-types", 422, "name",
         json={}),
    Case("hardware type by a user", "POST", "/api/targets/hardware-types", 403,
         "administrator", "alice", json={"name": "board"}),
    Case("body not json", "POST", "/api/targets/hardware-types", 422, "JSON",
         content=b"{nope", headers={"Content-Type": "application/json"}),
    Case("body nested 5000 deep", "POST", "/api/targets/hardware-types", 400, "",
         content=b"[" * 5000 + b"]" * 5000, headers={"Content-Type": "application/json"}),
    Case("body as text", "POST", "/api/targets/hardware-types", 422, "",
         content=b'{"name": "board"}', headers={"Content-Type": "text/plain"}),
    Case("engine with a bad extension", "POST", "/api/targets/engines", 400,
         "supported_file_extensions", json={"name": "trt",
                                            "supported_file_extensions": ["../x"]}),
    Case("instance of an unknown type", "POST", "/api/targets/hardware-instances", 404,
         "no hardware type", json={"hardware_type_id": "nope"}),
    Case("instance with unknown engines", "POST", "/api/targets/hardware-instances", 404,
         "no engine(s) trt", json={"hardware_type_id": "host-cpu", "engine_ids": ["trt"]}),
    Case("parameter of an unknown type", *PARAMETERS, 400, "type must be one of",
         json={"key": "gain", "type": "complex"}),
    Case("enum without choices", *PARAMETERS, 400, "needs default_values",
         json={"key": "mode", "type": "enum"}),
    Case("NaN default", *PARAMETERS, 422, "numbers must be finite",
         content=b'{"key": "gain", "type": "number", "default_values": NaN}',
         headers={"Content-Type": "application/json"}),
    Case("infinite default", *PARAMETERS, 422, "numbers must be finite",
         content=b'{"key": "gain", "type": "number", "default_values": [Infinity]}',
         headers={"Content-Type": "application/json"}),
    Case("default nested 40 deep", *PARAMETERS, 422, "nested more than 32 levels",
         content=b'{"key": "gain", "type": "array", "default_values": ' + DEEPISH.encode()
         + b"}", headers={"Content-Type": "application/json"}),
    Case("unknown engine parameter", "GET", "/api/targets/engine-parameters/nope", 404,
         "no engine parameter"),
    Case("attach to an unknown engine", "POST", "/api/targets/engines/trt/parameters/seed",
         404, "no engine trt"),
    Case("delete a built-in engine", "DELETE", "/api/targets/engines/onnxruntime", 409,
         "built in"),
    # -- hosts and jobs ----------------------------------------------------------------------
    Case("host with a path", "POST", "/api/hosts", 400, "host name",
         json={"name": "../x", "public_key": "k"}),
    Case("host with a bad key", "POST", "/api/hosts", 400, "public_key",
         json={"name": "alpha", "public_key": "not-a-key"}),
    Case("host by a user", "POST", "/api/hosts", 403, "administrator", "alice",
         json={"name": "alpha", "public_key": "k"}),
    Case("revoke a token by name", "DELETE", "/api/users/tokens/abc", 422, "token_id"),
    Case("revoke a huge token id", "DELETE", f"/api/users/tokens/{2**70}", 422, "token_id"),
]


@dataclass
class Lab:
    server: LiveServer
    tokens: dict[str, str]
    refs: dict[str, str]
    files: dict[str, bytes]


def login(server: LiveServer, email: str) -> str:
    add_user(server, email)
    response = httpx.post(server.url + "/api/users/login",
                          json={"email": email, "password": "a long password"})
    response.raise_for_status()
    return str(response.json()["access_token"])


def upload_dataset(client: httpx.Client, name: str, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    response = client.post("/api/benchmarks/datasets/upload", data={"hash": digest},
                           files={"dataset": (name, content)})
    assert response.status_code == 207, response.text
    return str(response.json()["name"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A server with small upload limits; Alice's benchmark, model and dataset; the admin's
    dataset that fits no model."""
    work = tmp_path_factory.mktemp("bad-inputs")
    limit = str(LIMIT)
    server = LiveServer(work / "data", env={"VLAB_MAX_MODEL_BYTES": limit,
                                            "VLAB_MAX_DATASET_BYTES": limit}).start()
    try:
        files = {"@small": conv_model(work / "small.onnx").read_bytes(),
                 "@tflite": tflite_zoo().read_bytes(),
                 "@two": two_input_model(work / "two.onnx").read_bytes(),
                 "@external": external_data_model(work).read_bytes()}
        tokens = {"admin": server.token, "alice": login(server, "alice@lab.example"),
                  "bob": login(server, "bob@lab.example")}
        with server.client(tokens["alice"]) as alice:
            model = alice.post("/api/models/download",
                               files={"model": ("alice.onnx", files["@small"])}).json()["model"]
            dataset = upload_dataset(alice, "alice.bin", b"\0" * 3 * 8 * 8 * 4)
            bench = alice.post("/api/benchmarks/run", data={
                "device": "host-cpu", "engine": "onnxruntime", "nb_inference": "1",
                "model_ref": model}).json()["id"]
            assert wait_terminal(alice, bench)["status"] == "success"
        with server.client() as admin:
            odd = upload_dataset(admin, "odd.bin", b"\0" * 100)
        yield Lab(server, tokens, {"<bench>": bench, "<model>": model, "<dataset>": dataset,
                                   "<odd>": odd}, files)
    finally:
        server.stop()


def stored(server: LiveServer) -> tuple[dict[str, int], set[str]]:
    """Rows of every table a request could add to, and the files of the stores."""
    with sqlite3.connect(server.data_dir / "vlab.db") as db:
        rows = {t: db.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}
    files = {str(p.relative_to(server.data_dir)) for d in ("models", "datasets", "tmp")
             for p in (server.data_dir / d).rglob("*") if p.is_file()}
    return rows, files


def send(lab: Lab, case: Case) -> httpx.Response:
    def fill(text: str) -> str:
        for placeholder, value in lab.refs.items():
            text = text.replace(placeholder, value)
        return text

    def part(content: str | bytes) -> bytes:
        if isinstance(content, str):
            return lab.files[content] if content.startswith("@") else fill(content).encode()
        return content

    sender = lab.tokens.get(case.sender, case.sender)
    headers = dict(case.headers)
    if case.sender != "none":
        headers["Authorization"] = sender if " " in sender else f"Bearer {sender}"
    files = {name: (filename, part(content))
             for name, (filename, content) in (case.files or {}).items()} or None
    data = {k: fill(v) for k, v in case.data.items()} if case.data else None
    query = {k: fill(v) for k, v in case.params.items()} if case.params else None
    with httpx.Client(base_url=lab.server.url, timeout=60) as client:
        return client.request(case.method, fill(case.path), headers=headers, data=data,
                              files=files, json=case.json, content=case.content, params=query)


def test_the_corpus_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 80
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_request_is_refused_and_stores_nothing(lab: Lab, case: Case) -> None:
    before = stored(lab.server)
    response = send(lab, case)
    assert response.status_code == case.status, response.text[:500]
    assert case.message in response.json()["error"]
    assert stored(lab.server) == before
