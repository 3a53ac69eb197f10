"""A thin typed client over the VLab HTTP API (httpx), shared by the CLI and notebooks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from vlab_kernel.connection import Connection, resolve
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE, sha256_file
from vlab_kernel.errors import BadRequest, ConnectionFailed, error_for

TERMINAL = ("success", "failed", "canceled")


def error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("error") or body.get("detail") or body)
    except ValueError:
        pass
    return response.text.strip() or response.reason_phrase


def tag_list(tags: Iterable[str] | str) -> list[str]:
    """Tags as a list; a lone string is one tag, not its characters."""
    return [tags] if isinstance(tags, str) else [str(tag) for tag in tags]


def label_fields(name: str | None, tags: Iterable[str], notes: str) -> dict[str, str]:
    """The submission's form fields for the labels given (none for none: what the dAIEdge
    client sends)."""
    fields = {}
    if name:
        fields["name"] = name
    if tags := tag_list(tags):
        fields["tags"] = json.dumps(tags)
    if notes:
        fields["notes"] = notes
    return fields


class VlabClient:
    def __init__(self, connection: Connection | None = None, timeout: float = 60.0) -> None:
        self.connection = connection or resolve()
        headers = {"Authorization": f"Bearer {self.connection.token}"} \
            if self.connection.token else {}
        self._http = httpx.Client(base_url=self.connection.url, headers=headers,
                                  timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VlabClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ConnectionFailed(f"cannot reach the VLab API at {self.connection.url} "
                                   "(start it with `vlab serve`)") from exc
        except httpx.HTTPError as exc:
            raise ConnectionFailed(
                f"request to {self.connection.url}{path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise error_for(response.status_code, error_message(response))
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    # -- API ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/api/benchmarks/status")
        return result

    def targets(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get_json("/api/targets/overview")["targets"]
        return result

    def check_target(self, uid: str, rebaseline: bool = False) -> dict[str, Any]:
        """Ask for a health check of instance `uid` (administrators and its owner); returns
        the check (`id`, `benchmark_id`, `verdict` "pending", ...)."""
        result: dict[str, Any] = self.request(
            "POST", f"/api/targets/{uid}/check",
            params={"rebaseline": "true"} if rebaseline else None).json()
        return result

    def target_health(self, uid: str, limit: int = 50) -> dict[str, Any]:
        """Instance `uid`'s health, its evidence and its checks (newest first)."""
        result: dict[str, Any] = self.get_json(f"/api/targets/{uid}/health", limit=limit)
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/api/benchmarks/config")
        return result

    def ensure_dataset(self, path: Path) -> str:
        """Upload the dataset unless the server has it; returns its `<name>_<sha256>` ref."""
        ref = f"{path.name}_{sha256_file(path)}"
        if ref not in self.get_json("/api/benchmarks/datasets"):
            with path.open("rb") as handle:
                self.request("POST", "/api/benchmarks/datasets/upload",
                             data={"hash": ref.rsplit("_", 1)[1]},
                             files={"dataset": (path.name, handle)})
        return ref

    def submit(self, model: Path | str, target: str, engine: str, *,
               runs: int = DEFAULT_NB_INFERENCE, benchmark_type: str = "TYPE1",
               dataset: Path | None = None, params: dict[str, Any] | None = None,
               target_uids: list[str] | None = None, public: bool = False,
               name: str | None = None, tags: Iterable[str] = (), notes: str = "") -> str:
        """Submit a benchmark of a model file or a stored model reference; returns its id.
        `name`, `tags` and `notes` label the run (sent only when given)."""
        data: dict[str, Any] = {"device": target, "engine": engine, "nb_inference": str(runs),
                                "benchmark_type": benchmark_type, "public": str(public).lower()}
        data.update(label_fields(name, tags, notes))
        if params:
            data["parameters"] = json.dumps(params)
        if target_uids:
            data["target_uids"] = json.dumps(target_uids)
        if dataset is not None:
            data["dataset_name"] = self.ensure_dataset(dataset)
        model_path = Path(model) if not str(model).startswith("model-") else None
        if model_path is None:
            data["model_ref"] = str(model)
            return str(self.request("POST", "/api/benchmarks/run", data=data).json()["id"])
        if not model_path.is_file():
            raise BadRequest(f"model file {model_path} not found")
        with model_path.open("rb") as handle:
            response = self.request("POST", "/api/benchmarks/run", data=data,
                                    files={"model": (model_path.name, handle)})
        return str(response.json()["id"])

    def submit_training(self, model: Path, target: str, engine: str, config: dict[str, Any],
                        *, target_uids: list[str] | None = None) -> str:
        """Submit on-device training (TYPE3): a model file and its ODT config, whose datasets
        are uploaded already (their `<name>_<sha256>` refs); returns the run's id."""
        if not model.is_file():
            raise BadRequest(f"model file {model} not found")
        data: dict[str, Any] = {"device": target, "engine": engine}
        if target_uids:
            data["target_uids"] = json.dumps(target_uids)
        with model.open("rb") as handle:
            response = self.request("POST", "/api/benchmarks/train", data=data, files={
                "model": (model.name, handle), "config": ("config", json.dumps(config))})
        return str(response.json()["id"])

    def trained_model(self, bench_id: str) -> tuple[str, bytes] | None:
        """The model a training produced: its file name and bytes; None if there is none."""
        response = self.request("GET", f"/api/benchmarks/{bench_id}/trained-model")
        if response.status_code != 200:
            return None
        disposition = response.headers.get("content-disposition", "")
        name = disposition.split("filename=")[-1].strip('"') if "filename=" in disposition \
            else "model.onnx"
        return Path(name).name or "model.onnx", response.content

    def benchmark(self, bench_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/api/benchmarks/{bench_id}")
        return result

    def label(self, bench_id: str, *, name: str | None = None,
              tags: Iterable[str] | None = None, notes: str | None = None) -> dict[str, Any]:
        """Change a run's labels (None: leave as is); returns its description."""
        body: dict[str, Any] = {"name": name, "notes": notes,
                                "tags": tag_list(tags) if tags is not None else None}
        result: dict[str, Any] = self.request(
            "PATCH", f"/api/benchmarks/{bench_id}/labels",
            json={k: v for k, v in body.items() if v is not None}).json()
        return result

    def events(self, bench_id: str) -> Iterator[dict[str, Any]]:
        """Server-sent events of one benchmark, until it reaches a terminal state."""
        yield from self.stream(f"/api/benchmarks/{bench_id}/events")

    def stream(self, path: str) -> Iterator[dict[str, Any]]:
        """The JSON events of a server-sent event stream."""
        try:
            with self._http.stream("GET", path,
                                   timeout=httpx.Timeout(60.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response.status_code, error_message(response))
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except httpx.ConnectError as exc:
            raise ConnectionFailed(f"cannot reach the VLab API at {self.connection.url}") from exc

    def wait(self, bench_id: str,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Follow the benchmark's events until it ends; returns its final description."""
        for event in self.events(bench_id):
            if on_event is not None:
                on_event(event)
            if event.get("event") == "status" and event.get("status") in TERMINAL:
                break
        return self.benchmark(bench_id)

    def report(self, bench_id: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/api/benchmarks/{bench_id}/results")
        return response.json() if response.status_code == 200 else None

    def log(self, bench_id: str, which: str = "error-log") -> str:
        response = self.request("GET", f"/api/benchmarks/{bench_id}/{which}")
        return response.text if response.status_code == 200 else ""

    def cancel(self, bench_id: str) -> str:
        return str(self.request("POST", f"/api/benchmarks/{bench_id}/cancel").json()["status"])

    def results(self, **filters: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get_json("/api/results", **filters)
        return result

    def results_table(self, **filters: Any) -> tuple[list[str], list[list[Any]]]:
        """The results as column names and rows of values: the compact layout, parsed with
        orjson, that 10^4 rows need to reach a DataFrame quickly."""
        params = {k: v for k, v in filters.items() if v is not None} | {"format": "columns"}
        table = orjson.loads(self.request("GET", "/api/results", params=params).content)
        if isinstance(table, list):  # a server from before the columns layout
            columns = list(dict.fromkeys(key for row in table for key in row))
            return columns, [[row.get(key) for key in columns] for row in table]
        return table["columns"], table["data"]



    # -- federated learning (TYPE4) --------------------------------------------------------
    def submit_fl(self, model: Path, config: dict[str, Any]) -> str:
        """Start a federated-learning experiment: a model file and its FL config, whose
        datasets are uploaded already; returns the experiment's id."""
        if not model.is_file():
            raise BadRequest(f"model file {model} not found")
        with model.open("rb") as handle:
            response = self.request("POST", "/api/benchmarks/fl/run", files={
                "model": (model.name, handle),
                "fl_config": ("fl_experiment_config.json", json.dumps(config))})
        return str(response.json()["id"])

    def fl_status(self, experiment_id: str) -> dict[str, Any]:
        """The experiment's status, rounds done and last global accuracy and loss."""
        result: dict[str, Any] = self.get_json(f"/api/benchmarks/fl/{experiment_id}/status")
        return result

    def fl_results(self, experiment_id: str) -> dict[str, Any]:
        """The experiment's results: `rounds_results`, `initial`, `stop` and its status."""
        result: dict[str, Any] = self.get_json(f"/api/benchmarks/fl/{experiment_id}/results")
        return result

    def fl_definition(self, experiment_id: str) -> dict[str, Any]:
        """The experiment's config as submitted."""
        result: dict[str, Any] = self.get_json(
            f"/api/benchmarks/fl/{experiment_id}/definition")
        return result

    def fl_history(self, page_length: int = 100) -> list[dict[str, Any]]:
        """The caller's experiments, newest first (every page)."""
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            body = self.get_json("/api/benchmarks/fl", page=page, page_length=page_length)
            rows.extend(body["results"])
            if not body["results"] or len(rows) >= int(body["count"]):
                return rows
            page += 1

    def fl_model(self, experiment_id: str) -> tuple[str, bytes]:
        """The final global model: the server's file name and the bytes."""
        response = self.request("GET", f"/api/benchmarks/fl/{experiment_id}/model")
        disposition = response.headers.get("content-disposition", "")
        name = disposition.split("filename=")[-1].strip('"') if "filename=" in disposition \
            else f"model_fl_{experiment_id}.onnx"
        return Path(name).name or f"model_fl_{experiment_id}.onnx", response.content

    def fl_cancel(self, experiment_id: str) -> str:
        """Cancel an experiment; its status after the request."""
        return str(self.request("POST",
                                f"/api/benchmarks/fl/{experiment_id}/cancel").json()["status"])

    def fl_events(self, experiment_id: str) -> Iterator[dict[str, Any]]:
        """Server-sent events of one experiment (state, rounds, phases) until it ends."""
        yield from self.stream(f"/api/benchmarks/fl/{experiment_id}/events")
