"""The launcher: pick or upload a model, a target and an engine, launch, follow, see results."""

from __future__ import annotations

import html
import json
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go

from vlab_kernel.defaults import DEFAULT_MAX_NB_INFERENCE, DEFAULT_NB_INFERENCE
from vlab_kernel.errors import BadRequest
from vlab_kernel.lab import Benchmark, Lab, connect
from vlab_kernel.zoo import ShippedModel, shipped_models
from vlab_widgets.common import (
    MIB,
    MS,
    Message,
    in_background,
    side_by_side_html,
    sig3,
    stability_text,
)
from vlab_widgets.plots import latency_trace

NO_MODELS = ("No models yet: upload an .onnx or .tflite file above, type the path of one on "
             "the server and press Add, or pick a network an installed package ships from the "
             "Model list. Launch works once a model is chosen.")
SHIPPED = "shipped:"  # the model list's value for a network an installed package ships


def shipped_summary_html(model: ShippedModel) -> str:
    """Where a shipped network comes from; it is uploaded when a run is launched."""
    return (f'<div class="vlab-model-summary"><b>{html.escape(model.path.name)}</b> '
            f"({model.format}, {sig3(model.size / MIB)} MiB), shipped with "
            f"{html.escape(model.source)}: uploaded with the run on Launch</div>")


def model_summary_html(model: dict[str, Any]) -> str:
    """Format, tensors, parameters and FLOPs of a library model."""
    tensors = "".join(
        f"<li>{kind} <code>{html.escape(t['name'])}</code> {t['shape']} {t['dtype']}</li>"
        for kind, items in (("in", model.get("inputs", [])), ("out", model.get("outputs", [])))
        for t in items)
    params = model.get("nb_parameters") or 0
    flops = model.get("flops") or 0
    opset = f", opset {model['opset']}" if model.get("opset") else ""
    return (f'<div class="vlab-model-summary"><b>{html.escape(model["filename"])}</b> '
            f"({model['format']}{opset}, {model['size']:,} bytes): {params:,} parameters, "
            f"{flops / 1e6:,.1f} MFLOPs per inference<ul>{tensors}</ul></div>")


def stability_html(report: dict[str, Any]) -> str:
    """The run's stability verdict next to its numbers: an unstable run says so, in orange."""
    stability = report.get("stability") or report.get("inference_latency", {}).get(
        "stability") or {}
    text = stability_text(stability.get("cv"), stability.get("unstable", False),
                          stability.get("reasons"))
    if stability.get("unstable"):
        return (f'<div class="vlab-unstable" style="color:#e65100">⚠ {html.escape(text)}: '
                "the numbers are noisy, rerun on an idle target before trusting them</div>")
    return f'<div class="vlab-stable">{html.escape(text)}</div>'


def result_summary_html(bench: Benchmark, metrics: dict[str, Any] | None = None) -> str:
    """The run's numbers (ms, MiB), its stability and, when it shared its host with other
    jobs, a warning that its numbers may be inflated."""
    report = bench.report
    latency = report["inference_latency"]
    return (f'<div class="vlab-result"><b>{html.escape(bench.id)}</b>: '
            f"{report['nb_inference']} inferences on {html.escape(str(report['target_id']))} "
            f"with {html.escape(report['inference_engine'])} — median "
            f"{sig3(latency['median'] * MS)} ms, mean {sig3(latency['mean'] * MS)} ms, p90 "
            f"{sig3(latency['p90'] * MS)} ms, p99 {sig3(latency['p99'] * MS)} ms, peak memory "
            f"{sig3(report['peak_memory_bytes'] / MIB)} MiB{stability_html(report)}"
            f"{side_by_side_html(metrics)}</div>")


def progress_text(done: int, total: int, elapsed_s: float) -> str:
    """"12/20 · ETA 3.1 s": the count and the time left at the rate so far."""
    if done <= 0 or done >= total:
        return f"{done}/{total}"
    return f"{done}/{total} · ETA {sig3(elapsed_s / done * (total - done))} s"


class Launcher(w.VBox):
    """Everything needed to launch one benchmark, fed by the live API."""

    def __init__(self, lab: Lab | None = None, shipped: bool = True) -> None:
        self.lab = lab or connect()
        self.models: dict[str, dict[str, Any]] = {}
        # Networks installed packages ship, offered after the uploaded models.
        self.shipped: dict[str, ShippedModel] = {
            f"{SHIPPED}{m.path}": m for m in (shipped_models() if shipped else [])}
        self.config: dict[str, Any] = {}
        self.current: Benchmark | None = None
        self.task: Future[Any] | None = None

        style = {"description_width": "90px"}
        self.upload = w.FileUpload(accept=".onnx,.tflite,.zip", multiple=False,
                                   description="Upload model")
        self.path = w.Text(placeholder="or a model file on the server", description="Path",
                           style=style)
        self.add_path = w.Button(description="Add", tooltip="add this file to your models")
        self.model = w.Dropdown(description="Model", options=[], style=style)
        self.model_summary = w.HTML()
        self.target = w.Dropdown(description="Target", options=[], style=style)
        self.engine = w.Dropdown(description="Engine", options=[], style=style)
        self.benchmark_type = w.ToggleButtons(options=["TYPE1", "TYPE2"], value="TYPE1",
                                              description="Type", style=style)
        self.dataset = w.Text(placeholder="raw dataset file (TYPE2)", description="Dataset",
                              style=style)
        self.runs = w.BoundedIntText(value=DEFAULT_NB_INFERENCE, min=1,
                                     max=DEFAULT_MAX_NB_INFERENCE, description="Runs",
                                     style=style)
        self.params = w.Textarea(placeholder='{"threads": 1}', description="Parameters",
                                 style=style)
        self.launch = w.Button(description="Launch", button_style="primary", icon="play")
        self.cancel = w.Button(description="Cancel", icon="stop", disabled=True,
                               tooltip="cancel the running benchmark")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="")
        self.progress_label = w.Label()
        self._inference_started: float | None = None
        self.message = Message()
        self.result = w.HTML()
        self.plot = go.FigureWidget()
        self.plot.layout.height = 320

        self.upload.observe(self._on_upload, names="value")
        self.add_path.on_click(self._on_add_path)
        self.model.observe(self._on_model, names="value")
        self.target.observe(lambda _change: self._update_engines(), names="value")
        self.launch.on_click(self._on_launch)
        self.cancel.on_click(self._on_cancel)
        super().__init__([
            w.HTML("<h3>Launch a benchmark</h3>"),
            w.HBox([self.upload, self.path, self.add_path]), self.model, self.model_summary,
            self.target, self.engine, self.benchmark_type, self.dataset, self.runs, self.params,
            w.HBox([self.launch, self.cancel, self.progress, self.progress_label]),
            self.message, self.result, self.plot])
        self.add_class("vlab-launcher")
        self.refresh()

    # -- state from the API --------------------------------------------------------------
    def refresh(self) -> None:
        """Reload targets, engines and the model library."""
        try:
            self.config = self.lab.client.config()
            self.models = {m["model"]: m for m in
                           self.lab.client.get_json("/api/models/list")["models"]}
        except Exception as error:
            self.message.show_error(error)
            return
        self.runs.max = self.config.get("limits", {}).get("max_nb_inference", self.runs.max)
        targets = sorted(self.config["devices"])
        self.target.options = targets
        if self.target.value is None and targets:
            self.target.value = targets[0]
        self._set_model_options()
        self._update_engines()
        if not self.models:
            self.message.show(NO_MODELS)
        self.add_class("vlab-ready")

    def _set_model_options(self) -> None:
        current = self.model.value
        self.model.options = [(f"{m['filename']} ({ref})", ref) for ref, m in
                              self.models.items()] + [(m.label, key) for key, m in
                                                      self.shipped.items()]
        if current in self.models or current in self.shipped:
            self.model.value = current
        elif not self.models:
            self.model.value = None  # a shipped network is picked, not imposed

    def model_info(self, value: str | None) -> dict[str, Any] | None:
        """The library entry of the chosen model, or a shipped network's format."""
        if not value:
            return None
        if value in self.shipped:
            return {"format": self.shipped[value].format}
        return self.models.get(value)

    def pick_shipped(self, name: str) -> str:
        """Choose a shipped network by name ("light_squeezenet") or label; returns its value
        in the model list."""
        for key, model in self.shipped.items():
            if name in (model.name, model.label):
                self.model.value = key
                return key
        raise KeyError(f"no shipped model {name!r}")

    def engines_for(self, target: str | None, model: dict[str, Any] | None) -> list[str]:
        """Engines the target offers that run the model's format."""
        if not target:
            return []
        offered = self.config["devices"].get(target, {}).get("engines", {})
        runtimes = self.config["runtimes"]
        names = sorted(offered)
        if model is not None:
            extension = "." + model["format"]
            names = [n for n in names if extension in
                     runtimes.get(n, {}).get("supported_file_extensions", [])]
        return names

    def _update_engines(self) -> None:
        model = self.model_info(self.model.value)
        engines = self.engines_for(self.target.value, model)
        current = self.engine.value
        self.engine.options = engines
        self.engine.value = current if current in engines else (engines[0] if engines else None)
        running = self.task is not None and not self.task.done()
        self.launch.disabled = running or not (engines and self.model.value)

    def _on_model(self, change: dict[str, Any]) -> None:
        shipped = self.shipped.get(change["new"]) if change["new"] else None
        model = self.models.get(change["new"]) if change["new"] else None
        self.model_summary.value = shipped_summary_html(shipped) if shipped else (
            model_summary_html(model) if model else "")
        self._update_engines()

    # -- models ----------------------------------------------------------------------------
    def add_model(self, name: str, content: bytes) -> dict[str, Any]:
        """Upload a model to the library and select it."""
        response = self.lab.client.request("POST", "/api/models/download",
                                           files={"model": (name, content)})
        model: dict[str, Any] = response.json()
        self.models[model["model"]] = model
        self._set_model_options()
        self.model.value = model["model"]
        self.message.show(f"{model['filename']} added to your models as {model['model']}")
        return model

    def _on_upload(self, change: dict[str, Any]) -> None:
        for item in change["new"]:
            try:
                self.add_model(item["name"], bytes(item["content"]))
            except Exception as error:
                self.message.show_error(error)

    def _on_add_path(self, _button: w.Button) -> None:
        path = Path(self.path.value.strip()).expanduser()
        if not path.is_file():
            self.message.show_error(BadRequest(f"model file {path} not found"))
            return
        try:
            self.add_model(path.name, path.read_bytes())
        except Exception as error:
            self.message.show_error(error)

    # -- launching -------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        text = self.params.value.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"parameters must be a JSON object ({exc.msg})") from exc
        if not isinstance(value, dict):
            raise BadRequest("parameters must be a JSON object")
        return value

    def dataset_path(self) -> Path | None:
        """The dataset file typed in, checked here so a typo reads as one line."""
        text = self.dataset.value.strip()
        if not text:
            return None
        path = Path(text).expanduser()
        if not path.is_file():
            raise BadRequest(f"dataset file {path} not found")
        return path

    def _on_launch(self, _button: w.Button) -> None:
        try:
            params = self.parameters()
            dataset = self.dataset_path()
        except BadRequest as error:
            self.message.show_error(error)
            return
        self.launch.disabled = True
        self.current = None
        self.result.value = ""
        self.plot.data = ()  # the previous run's plot must not pass for this one's
        self.plot.layout.title = None
        self.progress.value, self.progress.max, self.progress.bar_style = 0, 1, ""
        self.progress_label.value = ""
        self._inference_started = None
        self.message.show("submitting…")
        self.task = in_background(lambda: self._run(params, dataset))

    def _run(self, params: dict[str, Any], dataset: Path | None) -> None:
        try:
            chosen = self.model.value
            model = self.shipped[chosen].path if chosen in self.shipped else chosen
            bench = self.lab.benchmark(model, self.target.value, self.engine.value,
                                       runs=self.runs.value, type=self.benchmark_type.value,
                                       dataset=dataset, params=params)
            self.current = bench
            self.cancel.disabled = False
            self.message.show(f"{bench.id} submitted")
            final = self.lab.client.wait(bench.id, self._on_event)
            if final["status"] != "success":
                self.progress.bar_style = "danger"
                detail = bench.logs["error"].strip().splitlines()
                reason = final["message"] or (detail[-1] if detail else "see its error log")
                self.message.show_error(BadRequest(f"{bench.id} {final['status']}: {reason}"))
                return
            total = int(bench.report["nb_inference"])
            self.progress.max, self.progress.value, self.progress.bar_style = \
                total, total, "success"
            self.progress_label.value = progress_text(total, total, 0)
            self.result.value = result_summary_html(bench, final.get("metrics"))
            with self.plot.batch_update():
                self.plot.data = ()
                trace = latency_trace(bench.latencies).data[0]
                self.plot.add_trace(trace)
                self.plot.layout.title = f"Latency per inference — {bench.id}"
                self.plot.layout.yaxis.title = "latency (ms)"
            self.message.show(f"{bench.id} finished")
        except Exception as error:
            self.progress.bar_style = "danger"
            self.message.show_error(error)
        finally:
            self.launch.disabled = False
            self.cancel.disabled = True

    def _on_cancel(self, _button: w.Button) -> None:
        if self.current is None:
            return
        self.cancel.disabled = True
        try:
            self.message.show(f"{self.current.id}: {self.current.cancel()}")
        except Exception as error:
            self.message.show_error(error)

    def _on_event(self, event: dict[str, Any]) -> None:
        progress = event.get("progress") or {}
        if progress.get("phase") == "inference" and progress.get("total"):
            if self._inference_started is None:
                self._inference_started = time.monotonic()
            total, done = progress["total"], min(progress["done"], progress["total"])
            self.progress.max, self.progress.value = total, done
            self.progress_label.value = progress_text(
                done, total, time.monotonic() - self._inference_started)
        state = progress.get("phase") if event.get("event") == "progress" else event["status"]
        self.message.show(f"{event['id']}: {state}")
