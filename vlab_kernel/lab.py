"""`Lab` and `Benchmark`: the notebook-facing API, returning pandas objects."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from itertools import product
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from vlab_kernel.client import TERMINAL, VlabClient, error_message, tag_list
from vlab_kernel.connection import resolve
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE
from vlab_kernel.errors import BenchmarkFailed, NotReady, VlabError, error_for
from vlab_kernel.export import export_table
from vlab_kernel.federation import (
    ClientLike,
    EventsLike,
    Federation,
    experiments_table,
    federate,
)
from vlab_kernel.progress import ProgressPrinter
from vlab_kernel.stats import compare

ModelLike = str | Path | bytes | Any  # a path, a "model-N" reference, bytes, or onnx.ModelProto


@contextmanager
def model_file(model: ModelLike) -> Iterator[Path | str]:
    """A path (or stored reference) for any accepted model form; temporary files are removed."""
    if isinstance(model, str | Path):
        yield model if str(model).startswith("model-") else Path(model)
        return
    if isinstance(model, bytes | bytearray):
        name, data = ("model.tflite" if bytes(model[4:8]) == b"TFL3" else "model.onnx",
                      bytes(model))
    elif hasattr(model, "SerializeToString") and hasattr(model, "graph"):
        name, data = f"{model.graph.name or 'model'}.onnx", model.SerializeToString()
    else:
        raise TypeError("model must be a path, a 'model-N' reference, bytes or an "
                        f"onnx.ModelProto, not {type(model).__name__}")
    directory = Path(tempfile.mkdtemp(prefix="vlab-model-"))
    try:
        path = directory / name
        path.write_bytes(data)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Benchmark:
    """A submitted benchmark. Its properties query the server; finished reports are cached."""

    def __init__(self, lab: Lab, bench_id: str) -> None:
        self.lab = lab
        self.id = bench_id
        self._final: dict[str, Any] | None = None
        self._report: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Benchmark {self.id} {self.status}>"

    def info(self) -> dict[str, Any]:
        """The benchmark's description (status, target, engine, metrics, ...)."""
        if self._final is not None:
            return self._final
        info = self.lab.client.benchmark(self.id)
        if info["status"] in TERMINAL:
            self._final = info
        return info

    @property
    def status(self) -> str:
        """`pending`, `running`, `success`, `failed` or `canceled`, asked of the server."""
        return str(self.info()["status"])

    @property
    def done(self) -> bool:
        """True once the benchmark has ended, whatever the outcome."""
        return self.status in TERMINAL

    def wait(self, progress: bool = True, raise_on_failure: bool = True) -> Benchmark:
        """Follow the server's events until the benchmark ends (no polling)."""
        bar = _progress_printer(self.id) if progress else None
        try:
            self._final = self.lab.client.wait(self.id, bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        return self._finished(raise_on_failure)

    async def wait_async(self, raise_on_failure: bool = True) -> Benchmark:
        """`wait` for asyncio code: `await bench.wait_async()`."""
        connection = self.lab.client.connection
        headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
        async with httpx.AsyncClient(base_url=connection.url, headers=headers,
                                     timeout=httpx.Timeout(60.0, read=None)) as client, \
                client.stream("GET", f"/api/benchmarks/{self.id}/events") as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_for(response.status_code, error_message(response))
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event.get("event") == "status" and event.get("status") in TERMINAL:
                        break
        self._final = await asyncio.to_thread(self.lab.client.benchmark, self.id)
        return self._finished(raise_on_failure)

    def _finished(self, raise_on_failure: bool) -> Benchmark:
        final = self._final or {}
        if raise_on_failure and final.get("status") != "success":
            error = BenchmarkFailed(f"benchmark {self.id} {final.get('status')}: "
                                    f"{final.get('message') or 'see its error log'}")
            error.benchmark = final  # type: ignore[attr-defined]
            raise error
        return self

    def cancel(self) -> str:
        """Stop the benchmark (pending or running); returns its status after the request."""
        return self.lab.client.cancel(self.id)

    def label(self, name: str | None = None, tags: Iterable[str] | None = None,
              notes: str | None = None) -> Benchmark:
        """Name, tag or annotate this run (yours only), now or long after it ended: what
        is given replaces the stored label (`tags=[]` removes every tag), the rest stays.
        `lab.results(tags=[...], name=...)` finds the runs again. Tags are 1 to 64
        characters of A-Z a-z 0-9 _ . : -, at most 32; a bad one raises `BadRequest`."""
        info = self.lab.client.label(self.id, name=name, tags=tags, notes=notes)
        if self._final is not None:  # the cached description keeps its labels current
            self._final = info
        return self

    @property
    def name(self) -> str:
        """The run's name ("" if none)."""
        return str(self.info().get("name") or "")

    @property
    def tags(self) -> list[str]:
        """The run's tags."""
        return list(self.info().get("tags") or [])

    @property
    def notes(self) -> str:
        """The run's notes ("" if none)."""
        return str(self.info().get("notes") or "")

    @property
    def report(self) -> dict[str, Any]:
        """The full report (report.json). NotReady until the benchmark has ended."""
        if self._report is None:
            if not self.done:
                raise NotReady(f"benchmark {self.id} is {self.status}; call .wait() first", 428)
            report = self.lab.client.report(self.id)
            if report is None:
                raise VlabError(f"benchmark {self.id} ended without a report "
                                f"({self.info().get('message')})")
            self._report = report
        return self._report

    @property
    def latencies(self) -> pd.Series:
        """Every timed inference, in seconds, in run order."""
        samples = self.report["inference_latency"]["samples"]
        return pd.Series(samples, name="latency_s", dtype="float64").rename_axis("inference")

    @property
    def logs(self) -> dict[str, str]:
        """The run's logs: `user` (what the target printed) and `error` (why it failed);
        empty strings where the run wrote none."""
        return {"user": self.lab.client.log(self.id, "user-log"),
                "error": self.lab.client.log(self.id, "error-log")}

    @property
    def layers(self) -> pd.DataFrame:
        """The per-layer profile, slowest first (empty where the engine offers none)."""
        response = self.lab.client.request("GET", f"/api/benchmarks/{self.id}/profile")
        rows = response.json() if response.status_code == 200 else []
        return pd.DataFrame(rows, columns=["name", "type", "mean_s", "share"])

    def summary(self) -> dict[str, Any]:
        """One flat row: identity, status and metrics."""
        info = self.info()
        return {"id": self.id, "model": info["model"], "target": info["device"],
                "target_uid": info["target_uid"], "engine": info["engine"],
                "benchmark_type": info["benchmark_type"], "status": info["status"],
                "message": info["message"],
                **(info.get("metrics") or {})}

    def _repr_html_(self) -> str:
        row = self.summary()
        shown = {k: row.get(k) for k in ("id", "model", "target_uid", "engine", "status",
                                          "latency_mean_s", "latency_p90_s",
                                          "peak_memory_bytes")}
        return pd.DataFrame([shown]).to_html(index=False)


def _progress_printer(bench_id: str) -> ProgressPrinter:
    """A bar that is a widget in a notebook and text in a terminal."""
    from tqdm.auto import tqdm

    return ProgressPrinter(bench_id, bar=tqdm, leave=True)


def _name_of(model: ModelLike) -> str:
    if isinstance(model, str | Path):
        return Path(model).name if not str(model).startswith("model-") else str(model)
    if hasattr(model, "graph"):
        return f"{model.graph.name or 'model'}.onnx"
    return "model"


# What `results().head()` shows first: identity and the owner's labels, then the headline
# metrics in ms and MiB and the stability verdict; the raw columns (seconds, bytes) follow for
# computation.
_IDENTITY = ["id", "model", "target", "target_uid", "engine", "benchmark_type", "status"]
_LABELS = ["name", "tags", "notes"]
_HEADLINE = {"latency_median_ms": ("latency_median_s", 1e3),
             "latency_mean_ms": ("latency_mean_s", 1e3),
             "latency_p99_ms": ("latency_p99_s", 1e3),
             "peak_memory_mib": ("peak_memory_bytes", 1 / 2**20)}


def _metrics_first(frame: pd.DataFrame) -> pd.DataFrame:
    """Adds the headline metrics in ms and MiB and puts them, the stability verdict and the
    message right after the run's identity and labels."""
    for name, (source, scale) in _HEADLINE.items():
        if source in frame:
            frame[name] = pd.to_numeric(frame[source], errors="coerce") * scale
    first = [c for c in (*_IDENTITY, *_LABELS, *_HEADLINE, "unstable", "latency_cv", "message")
             if c in frame]
    return frame[first + [c for c in frame.columns if c not in first]]


# The curves of a training report (report_odt.json), one value per epoch.
CURVES = ("loss_train", "loss_test", "accuracy_train", "accuracy_test")


def training_curves(report: dict[str, Any]) -> pd.DataFrame:
    """The per-epoch curves of an on-device training report (`report_odt.json`): one row per
    epoch (from 1), columns `loss_train`, `loss_test`, `accuracy_train`, `accuracy_test`
    (NaN where the target reports none, e.g. accuracy for regression targets), and
    `epoch_time_s` where the report has it."""
    columns: dict[str, list[Any]] = {}
    for key in CURVES:
        curve = report.get(key) or {}
        columns[key] = list(curve.get("values") or []) if isinstance(curve, dict) else []
    times = report.get("epoch_time_s")
    if isinstance(times, list):
        columns["epoch_time_s"] = times
    epochs = max((len(values) for values in columns.values()), default=0)
    frame = pd.DataFrame({key: pd.to_numeric(pd.Series(values + [None] * (epochs - len(values)),
                                                       dtype="object"), errors="coerce")
                          for key, values in columns.items()})
    frame.index = pd.RangeIndex(1, epochs + 1, name="epoch")
    return frame


class _Report(dict[str, Any]):
    """A report that is also callable: `run.report` and `run.report()` give the same."""

    def __call__(self) -> _Report:
        return self


class Training(Benchmark):
    """An on-device training run (TYPE3): a Benchmark whose report is `report_odt.json`,
    with its curves and the trained model."""

    def __repr__(self) -> str:
        return f"<Training {self.id} {self.status}>"

    @property
    def report(self) -> dict[str, Any]:
        """The training report (report_odt.json), callable too: `run.report()`. NotReady
        until the run has ended."""
        report = super().report
        if not isinstance(report, _Report):
            self._report = report = _Report(report)
        return report

    @property
    def curves(self) -> pd.DataFrame:
        """Loss and accuracy per epoch, on the training and the test data."""
        return training_curves(self.report)

    def trained_model(self, path: str | Path | None = None) -> Path:
        """Download the trained model: to `path` (a file, or a directory that gets the
        server's file name, `<id>_model.onnx`), by default the working directory; returns
        where it was written."""
        if not self.done:
            raise NotReady(f"training {self.id} is {self.status}; call .wait() first", 428)
        trained = self.lab.client.trained_model(self.id)
        if trained is None:
            raise VlabError(f"training {self.id} produced no model "
                            f"({self.info().get('message') or self.status})")
        name, data = trained
        target = Path(path) if path is not None else Path.cwd()
        if target.is_dir():
            target = target / f"{self.id}_{name}"
        target.write_bytes(data)
        return target


def _tensor_names(model: ModelLike) -> tuple[str | None, str | None]:
    """The input and output names of an ONNX model where onnx is installed (a client-only
    install may not have it), else None."""
    try:
        import onnx
    except ImportError:
        return None, None
    if hasattr(model, "graph"):
        proto = model
    elif isinstance(model, bytes | bytearray):
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception:  # not ONNX: the server says what is wrong
            return None, None
    elif isinstance(model, str | Path) and Path(model).is_file():
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except Exception:  # not ONNX: the server says what is wrong
            return None, None
    else:
        return None, None
    weights = {t.name for t in proto.graph.initializer}
    inputs = [v.name for v in proto.graph.input if v.name not in weights]
    outputs = [v.name for v in proto.graph.output]
    return (inputs[0] if len(inputs) == 1 else None,
            outputs[0] if len(outputs) == 1 else None)


def _tensor_section(array: Any, what: str) -> tuple[Any, dict[str, Any]]:
    """The samples as one C-ordered array and their ODT section (shape without the batch
    dimension, dtype). A 1-D array of integers is one class index per sample (shape [1])."""
    import numpy as np

    data = np.ascontiguousarray(array)
    if data.ndim == 0 or len(data) == 0:
        raise ValueError(f"{what} must hold at least one sample (an array of shape [n, ...])")
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    return data, {"shape": [int(d) for d in data.shape[1:]], "dtype": str(data.dtype)}


class Lab:
    """The workbench, as seen from a notebook."""

    def __init__(self, client: VlabClient) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"<Lab {self.client.connection.url}>"

    # -- discovery -------------------------------------------------------------------------
    def targets(self) -> pd.DataFrame:
        """One row per target instance: state (busy/free), cores, engines, queue length."""
        rows = []
        for target in self.client.targets():
            for instance in target["instances"]:
                rows.append({
                    "target": target["target"], "target_uid": instance["target_uid"],
                    "state": instance["state"], "benchmark_id": instance["benchmark_id"],
                    "cpuset": instance["cpuset"], "engines": sorted(instance["engines"]),
                    "queue_length": target["queue_length"]})
        return pd.DataFrame(rows, columns=["target", "target_uid", "state", "benchmark_id",
                                           "cpuset", "engines", "queue_length"])

    def engines(self) -> pd.DataFrame:
        """One row per engine: file types, targets offering it, parameters."""
        config = self.client.config()
        offered: dict[str, list[str]] = {}
        for target, device in config["devices"].items():
            for engine in device["engines"]:
                offered.setdefault(engine, []).append(target)
        rows = [{"engine": name, "display_name": runtime["display_name"],
                 "file_extensions": runtime["supported_file_extensions"],
                 "targets": sorted(offered.get(name, [])),
                 "parameters": [p["key"] for p in runtime["parameters"]]}
                for name, runtime in config["runtimes"].items()]
        return pd.DataFrame(rows, columns=["engine", "display_name", "file_extensions",
                                           "targets", "parameters"])

    # -- benchmarks ------------------------------------------------------------------------
    def benchmark(self, model: ModelLike, target: str, engine: str, *,
                  runs: int = DEFAULT_NB_INFERENCE, type: str | None = None,
                  dataset: str | Path | None = None, params: dict[str, Any] | None = None,
                  target_uids: list[str] | None = None, public: bool = False,
                  wait: bool = False, name: str | None = None, tags: Iterable[str] = (),
                  notes: str = "") -> Benchmark:
        """Submit a benchmark. `model`: a path, a stored `model-N` reference, bytes or an
        `onnx.ModelProto`. `name`, `tags` and `notes` label the run (see
        `Benchmark.label`). Returns at once unless `wait=True`."""
        benchmark_type = type or ("TYPE2" if dataset is not None else "TYPE1")
        with model_file(model) as path:
            bench_id = self.client.submit(
                path, target, engine, runs=runs, benchmark_type=benchmark_type,
                dataset=Path(dataset) if dataset is not None else None, params=params,
                target_uids=target_uids, public=public, name=name, tags=tags, notes=notes)
        bench = Benchmark(self, bench_id)
        return bench.wait() if wait else bench

    async def benchmark_async(self, model: ModelLike, target: str, engine: str,
                              **options: Any) -> Benchmark:
        """Submit and wait without blocking the event loop: `await lab.benchmark_async(...)`."""
        bench = await asyncio.to_thread(self.benchmark, model, target, engine, **options)
        return await bench.wait_async(raise_on_failure=False)

    def train(self, model: ModelLike, target: str, engine: str, *, train: tuple[Any, Any],
              test: tuple[Any, Any], epochs: int = 5, batch_size: int = 32,
              learning_rate: float | None = None, optimizer: str | None = None,
              loss: str | None = None, shuffle: bool | None = None, seed: int | None = None,
              input_name: str | None = None, output_name: str | None = None,
              target_uids: list[str] | None = None, wait: bool = False) -> Training:
        """On-device training (TYPE3): `train` and `test` are `(x, y)` NumPy arrays with one
        sample per row; `y` holds class indices (1-D integers), one-hot rows or target
        values. They are uploaded as raw datasets (once: by content) and named in the ODT
        config with `epochs`, `batch_size` and, where given, `learning_rate`, `optimizer`
        (AdamW, SGD), `loss` (cross_entropy, mse), `shuffle` and `seed`. The model's input and
        output names are read from it where onnx is installed, else give `input_name` and
        `output_name`. Returns a `Training` (its `report`, `curves`, `trained_model()`), at
        once unless `wait=True`."""
        found_input, found_output = _tensor_names(model)
        input_name, output_name = input_name or found_input, output_name or found_output
        if not input_name or not output_name:
            raise ValueError("give input_name and output_name: the model's tensor names "
                             "could not be read (onnx is not installed, or the model has "
                             "several inputs or outputs)")
        learning: dict[str, Any] = {"batch_size": batch_size, "epochs": epochs}
        for key, value in (("learning_rate", learning_rate), ("optimizer", optimizer),
                           ("loss", loss), ("shuffle", shuffle), ("seed", seed)):
            if value is not None:
                learning[key] = value
        config: dict[str, Any] = {"learning_parameters": learning,
                                  "input": {"name": input_name}, "output": {"name": output_name}}
        directory = Path(tempfile.mkdtemp(prefix="vlab-train-"))
        try:
            for split, (x, y) in (("train", train), ("test", test)):
                for section, array in (("input", x), ("output", y)):
                    data, spec = _tensor_section(array, f"{split} {section}")
                    path = directory / f"{split}_{section}.bin"
                    data.tofile(path)
                    if split == "train":
                        config[section].update(spec)
                    elif spec != {k: config[section][k] for k in ("shape", "dtype")}:
                        raise ValueError(f"the test {section} ({spec}) differs from the "
                                         f"train {section} in shape or dtype")
                    config[section][f"{split}_file"] = self.client.ensure_dataset(path)
            with model_file(model) as model_path:
                if isinstance(model_path, str):
                    raise TypeError("training takes a model file, bytes or an onnx.ModelProto, "
                                    "not a stored model reference")
                bench_id = self.client.submit_training(model_path, target, engine, config,
                                                       target_uids=target_uids)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        run = Training(self, bench_id)
        if wait:
            run.wait()
        return run

    def federate(self, model: ModelLike, clients: Sequence[ClientLike], *, rounds: int = 3,
                 target: str = "host-cpu", engine: str = "onnxruntime", epochs: int = 1,
                 batch_size: int = 32, learning_rate: float | None = None,
                 min_fit_clients: int | None = None, min_available_clients: int | None = None,
                 min_eval_clients: int | None = None, round_timeout_s: float | None = None,
                 server_dataset: tuple[Any, Any] | None = None,
                 objectives: Sequence[dict[str, Any]] | None = None,
                 events: Mapping[Any, EventsLike] | None = None,
                 input_name: str | None = None, output_name: str | None = None,
                 wait: bool = False) -> Federation:
        """Federated learning (TYPE4): `clients` are `FLClient`s, dicts of their fields or
        `(train, test)` pairs of `(x, y)` NumPy arrays; each trains on `target` with `engine`
        (unless it names its own) for `epochs` per round. `min_*_clients` default to 1;
        `server_dataset=(x, y)` lets the server score the global model itself; `objectives`
        (`target_accuracy(0.9)`, ...) may end it early; `events` maps a client's index or id
        to its scripted events (`failure(round=2)`, ... from `vlab_kernel.federation`, or
        {round: [event, ...]}). The arrays are uploaded as datasets (once: by content).
        Returns a `Federation`, at once unless `wait=True`."""
        return federate(self, model, clients, rounds=rounds, wait=wait, target=target,
                        engine=engine, epochs=epochs, batch_size=batch_size,
                        learning_rate=learning_rate, min_fit_clients=min_fit_clients,
                        min_available_clients=min_available_clients,
                        min_eval_clients=min_eval_clients, round_timeout_s=round_timeout_s,
                        server_dataset=server_dataset, objectives=objectives, events=events,
                        input_name=input_name, output_name=output_name)

    def experiment(self, experiment_id: str) -> Federation:
        """The federated-learning experiment with this id (e.g. from `experiments()["id"]`)."""
        return Federation(self, experiment_id)

    def experiments(self) -> pd.DataFrame:
        """Your federated-learning experiments, newest first: status, clients, rounds asked
        and done, the last global accuracy and loss, the message and times."""
        return experiments_table(self.client.fl_history())

    def get(self, bench_id: str) -> Benchmark:
        """The benchmark with this id (one you submitted, or a public one), e.g. from
        `lab.results()["id"]`; nothing is fetched until a property is read."""
        return Benchmark(self, bench_id)

    def compare(self, a: Benchmark | str, b: Benchmark | str) -> dict[str, Any]:
        """B against A: the difference of median latencies with a 95 % bootstrap interval and
        a permutation test; `verdict` says when the difference is within noise."""
        first = a if isinstance(a, Benchmark) else self.get(a)
        second = b if isinstance(b, Benchmark) else self.get(b)
        result = compare(first.latencies.to_numpy(), second.latencies.to_numpy())
        return {"a": first.id, "b": second.id, **result}

    def results(self, include_public: bool = False, *, tags: Iterable[str] | str = (),
                name: str | None = None, **filters: Any) -> pd.DataFrame:
        """One row per benchmark with flattened metrics, newest first. Filters: target,
        engine, model, status, benchmark_type; `tags` (runs with every one of them, any
        case) and `name` (a part of the run's name, any case)."""
        columns, rows = self.client.results_table(include_public=include_public,
                                                  tag=tag_list(tags) or None, name=name,
                                                  **filters)
        frame = pd.DataFrame(rows, columns=columns)
        for column in ("created_at", "finished_at"):
            if column in frame:
                frame[column] = pd.to_datetime(frame[column], format="ISO8601")
        return _metrics_first(frame)

    def sweep(self, models: Iterable[ModelLike], targets: Iterable[str],
              engines: Iterable[str], *, runs: int = DEFAULT_NB_INFERENCE,
              type: str | None = None, dataset: str | Path | None = None,
              params: dict[str, Any] | None = None, progress: bool = True,
              on_result: Callable[[dict[str, Any]], None] | None = None,
              name: str | None = None, tags: Iterable[str] = (),
              notes: str = "") -> pd.DataFrame:
        """Every model × target × engine, submitted at once and run concurrently on the free
        instances; one row each. Combinations the server refuses get status `rejected` and
        its reason as `message`. `on_result` gets each row as its combination ends (in this
        thread, refused ones first). `name`, `tags` and `notes` label every run."""
        combos = list(product(list(models), list(targets), list(engines)))
        tags = tag_list(tags)  # once: every combination gets the same tags
        submitted: list[tuple[ModelLike, str, str, Benchmark | VlabError]] = []
        for model, target, engine in combos:
            try:
                bench = self.benchmark(model, target, engine, runs=runs, type=type,
                                       dataset=dataset, params=params, name=name, tags=tags,
                                       notes=notes)
                submitted.append((model, target, engine, bench))
            except VlabError as exc:
                submitted.append((model, target, engine, exc))

        def row(model: ModelLike, target: str, engine: str,
                outcome: Benchmark | VlabError) -> dict[str, Any]:
            base = {"model": _name_of(model), "target": target, "engine": engine}
            if isinstance(outcome, VlabError):
                return {**base, "status": "rejected", "message": outcome.message}
            summary = outcome.summary()
            return {**base, **{k: v for k, v in summary.items()
                               if k not in ("model", "target", "engine")}}

        if on_result is not None:
            for entry in submitted:
                if isinstance(entry[3], VlabError):
                    on_result(row(*entry))
        running = [(model, target, engine, outcome) for model, target, engine, outcome in submitted
                   if isinstance(outcome, Benchmark)]
        bar = None
        if progress and running:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(running), desc="sweep", unit="benchmark")
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(running)))) as pool:
            waits = {pool.submit(entry[3].wait, progress=False, raise_on_failure=False): entry
                     for entry in running}
            for finished in as_completed(waits):
                finished.result()
                if bar is not None:
                    bar.update(1)
                if on_result is not None:
                    on_result(row(*waits[finished]))
        if bar is not None:
            bar.close()
        return pd.DataFrame([row(*entry) for entry in submitted])

    def export(self, frame: pd.DataFrame, path: str | Path) -> Path:
        """Write `frame` (e.g. a selection of `results()`) to a .csv or .parquet file, by
        its suffix; returns the path. CSV joins tags with ';', Parquet keeps them a list."""
        return export_table(frame, path)

    async def sweep_async(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """`sweep` for asyncio code, run in a thread: `await lab.sweep_async(...)`; takes the
        same arguments and returns the same DataFrame."""
        return await asyncio.to_thread(self.sweep, *args, **kwargs)


def connect(url: str | None = None, token: str | None = None) -> Lab:
    """The workbench: inside a kernel started by the Jupyter extension no configuration is
    needed; else `VLAB_URL`/`VLAB_TOKEN`, else this machine's local credential."""
    return Lab(VlabClient(resolve(url, token)))
