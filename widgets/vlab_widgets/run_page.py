"""A page per run: status (live), the failure reason, logs, key figures, the raw report,
the per-layer profile, the latency of every inference, the stability verdict and a warning
when the run shared its host."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go

from vlab_kernel.client import TERMINAL
from vlab_kernel.lab import Benchmark, Lab, connect
from vlab_widgets.common import (
    MIB,
    MS,
    EventFollower,
    Message,
    RunView,
    side_by_side_html,
    sig3,
    stability_text,
)
from vlab_widgets.plots import latency_trace, layer_bars

TOP_LAYERS = 15
STATUS_COLORS = {"success": "#2e7d32", "failed": "#b00020", "canceled": "#b00020",
                 "running": "#1565c0", "queued": "#1565c0", "pending": "#6d6d6d"}
# Key figures: label -> (path in the report, scale, unit).
KEY_FIGURES: list[tuple[str, tuple[str, ...], float, str]] = [
    ("median latency", ("inference_latency", "median"), MS, "ms"),
    ("mean latency", ("inference_latency", "mean"), MS, "ms"),
    ("p90 latency", ("inference_latency", "p90"), MS, "ms"),
    ("p99 latency", ("inference_latency", "p99"), MS, "ms"),
    ("min latency", ("inference_latency", "min"), MS, "ms"),
    ("max latency", ("inference_latency", "max"), MS, "ms"),
    ("latency std", ("inference_latency", "std"), MS, "ms"),
    ("peak memory", ("peak_memory_bytes",), 1 / MIB, "MiB"),
    ("memory over baseline", ("memory_delta_bytes",), 1 / MIB, "MiB"),
    ("model load", ("cold_start", "load_s"), MS, "ms"),
    ("first inference", ("cold_start", "first_inference_s"), MS, "ms"),
    ("timed inferences", ("nb_inference",), 1, ""),
    # Microcontroller boards: the model as stored in flash, the tensor arena actually used,
    # and the board's own timing.
    ("flash used", ("flash_usage_bytes",), 1 / 1024, "KiB"),
    ("tensor arena used", ("ram_peak_usage_bytes",), 1 / 1024, "KiB"),
    ("median latency on the board", ("board", "inference_latency", "median"), MS, "ms"),
]


def _read(bench: Benchmark, name: str) -> Any:
    """A `Benchmark` property, or the method of that name where the kernel made it one."""
    value = getattr(bench, name)
    return value() if callable(value) else value


def _dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def key_figures(report: dict[str, Any]) -> pd.DataFrame:
    """The report's headline numbers, one row each: ms and MiB, 3 significant digits."""
    rows = []
    for label, path, scale, unit in KEY_FIGURES:
        value = _dig(report, path)
        if value is not None:
            rows.append({"figure": label, "value": sig3(value, scale), "unit": unit})
    return pd.DataFrame(rows, columns=["figure", "value", "unit"])


def stability_of(report: dict[str, Any] | None, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The stability block of the report (cv, drift, unstable, reasons), else the metrics'."""
    report = report or {}
    stability = report.get("stability") or report.get("inference_latency", {}).get(
        "stability") or {}
    if stability:
        return dict(stability)
    metrics = metrics or {}
    if "unstable" in metrics or "latency_cv" in metrics:
        return {"cv": metrics.get("latency_cv"), "unstable": metrics.get("unstable"),
                "reasons": []}
    return {}


def verdict_html(stability: dict[str, Any]) -> str:
    """The stability verdict and its reasons: orange when unstable."""
    if not stability:
        return ""
    text = stability_text(stability.get("cv"), stability.get("unstable", False),
                          stability.get("reasons"))
    drift = stability.get("drift")
    if drift is not None and not stability.get("unstable"):
        text += f", drift {'+' if drift > 0 else ''}{sig3(drift * 100)} %"
    if stability.get("unstable"):
        return (f'<div class="vlab-unstable" style="color:#e65100">⚠ {html.escape(text)}: '
                "the numbers are noisy, rerun on an idle target before trusting them</div>")
    return f'<div class="vlab-stable">{html.escape(text)}</div>'


def _pre(text: str) -> str:
    return ('<pre style="max-height:320px;overflow:auto;white-space:pre-wrap">'
            f"{html.escape(text)}</pre>")


class RunPage(RunView, w.VBox):
    """Everything about one benchmark: `RunPage(lab, "abc123")`, or `RunPage(lab, bench)` for
    a `Benchmark` from `lab.benchmark(...)` or `lab.get(id)`. Live while it is unfinished (its
    own event stream; `live=False` shows it once), with Cancel until it ends."""

    def __init__(self, lab: Lab | None, bench: str | Benchmark, live: bool = True) -> None:
        self.lab = lab or connect()
        self.bench = self.lab.get(bench) if isinstance(bench, str) else bench
        bench_id = self.bench.id
        self.info: dict[str, Any] = {}
        self.report: dict[str, Any] | None = None
        self.logs: dict[str, str] = {}
        self.layers = pd.DataFrame()
        self.latencies = pd.Series(dtype="float64")
        self.loaded = threading.Event()  # set once the finished run's details are shown
        self._lock = threading.RLock()
        self.title = w.HTML()
        self.status = w.HTML()
        self.progress = w.IntProgress(value=0, min=0, max=1, layout={"width": "300px"})
        self.cancel = w.Button(description="Cancel", icon="stop", tooltip="cancel this run",
                               layout={"display": "none"})
        self.reason = w.HTML()
        self.warnings = w.HTML()
        self.figures = w.HTML()
        self.message = Message()
        self.trace = go.FigureWidget()
        self.layer_plot = go.FigureWidget()
        for figure in (self.trace, self.layer_plot):
            figure.layout.autosize = True
        self.trace.add_class("vlab-latency-trace")
        self.layer_plot.add_class("vlab-layers")
        self.plots = w.VBox([self.trace, self.layer_plot], layout={"width": "100%"})
        self.log_tabs = w.Tab()
        self.raw = w.Accordion(children=[w.HTML()], titles=("Report (raw JSON)",),
                               selected_index=None)
        self.details = w.VBox([self.figures, self.plots, w.HTML("<b>Logs</b>"),
                               self.log_tabs, self.raw], layout={"display": "none"})
        self.cancel.on_click(self._on_cancel)
        self._follower = EventFollower(self.lab, f"/api/benchmarks/{bench_id}/events",
                                       self._on_event, self.message.show_error,
                                       until=lambda event: event.get("status") in TERMINAL)
        super().__init__([self.title, w.HBox([self.status, self.progress, self.cancel]),
                          self.reason, self.warnings, self.message, self.details],
                         layout={"width": "100%"})
        self.add_class("vlab-run-page")
        self.refresh()
        if live and self.info and not self.finished:  # an unknown id is not followed
            self._follower.start()

    @property
    def bench_id(self) -> str:
        return self.bench.id

    @property
    def run_id(self) -> str:
        return self.bench_id

    # -- state -----------------------------------------------------------------------------
    def _draw_state(self, info: dict[str, Any]) -> None:
        status = str(info.get("status"))
        where = info.get("target_uid") or info.get("device") or "?"
        self.title.value = (
            f'<h3 class="vlab-run-title">Run {html.escape(self.bench_id)}</h3>'
            f"<div>{html.escape(str(info.get('model')))} · "
            f"{html.escape(str(info.get('engine')))} · {html.escape(str(where))} · "
            f"{html.escape(str(info.get('benchmark_type', '')))}, "
            f"{info.get('nb_inference', '?')} inferences requested</div>")
        progress = info.get("progress") or {}
        phase = progress.get("phase") or ""
        total, done = int(progress.get("total") or 0), int(progress.get("done") or 0)
        detail = f" · {phase} {min(done, total)}/{total}" if total and status == "running" \
            else (f" · {phase}" if phase and status == "running" else "")
        color = STATUS_COLORS.get(status, "#333")
        self.status.value = (f'<span class="vlab-run-status vlab-status-{status}" '
                             f'style="color:{color};font-weight:bold">{status}</span>'
                             f"{html.escape(detail)}")
        unfinished = status not in TERMINAL
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total) if total else 0
        self.progress.bar_style = {"success": "success", "failed": "danger",
                                   "canceled": "danger"}.get(status, "")
        if status == "success":
            self.progress.value = self.progress.max
        self.cancel.layout.display = None if unfinished else "none"
        self.cancel.disabled = not unfinished
        self.reason.value = self._reason_html(info)
        self.warnings.value = self._warnings_html()

    def _reason_html(self, info: dict[str, Any]) -> str:
        status = info.get("status")
        if status not in ("failed", "canceled"):
            return ""
        reason = (info.get("message") or "").strip()
        if not reason:
            lines = (self.logs.get("error") or "").strip().splitlines()
            reason = lines[-1] if lines else "no reason given: see its error log below"
        why = "Why it failed" if status == "failed" else "Why it was canceled"
        return (f'<div class="vlab-run-reason" style="color:#b00020"><b>{why}:</b> '
                f"{html.escape(reason)}</div>")

    def _warnings_html(self) -> str:
        metrics = self.info.get("metrics") or {}
        verdict = verdict_html(stability_of(self.report, metrics)) \
            if self.info.get("status") == "success" else ""
        return verdict + side_by_side_html(metrics)

    def _on_end(self) -> None:
        """Report, logs, profile and latencies of the finished run (each where it exists)."""
        with self._lock:
            if self.loaded.is_set():
                return
            errors: list[str] = []
            try:
                self.logs = dict(_read(self.bench, "logs"))
            except Exception as error:
                errors.append(f"logs: {error}")
            if self.info.get("status") == "success":
                try:
                    self.report = self.lab.client.report(self.bench_id)
                except Exception as error:
                    errors.append(f"report: {error}")
                try:
                    self.layers = _read(self.bench, "layers")
                except Exception as error:
                    errors.append(f"layer profile: {error}")
                if self.layers.empty and self.report and self.report.get("layers"):
                    self.layers = pd.DataFrame(self.report["layers"])
                if self.report is not None:
                    samples = self.report.get("inference_latency", {}).get("samples") or []
                    self.latencies = pd.Series(samples, name="latency_s", dtype="float64") \
                        .rename_axis("inference")
            self._render()
            if errors:
                self.message.show("could not load " + "; ".join(errors))
            self.loaded.set()

    def _render(self) -> None:
        self.reason.value = self._reason_html(self.info)
        self.warnings.value = self._warnings_html()
        report = self.report or {}
        figures = key_figures(report) if report else pd.DataFrame()
        self.figures.value = figures.to_html(index=False, header=False, border=0,
                                             classes="vlab-key-figures") if not \
            figures.empty else ""
        self.raw.children[0].value = _pre(json.dumps(report, indent=2)) if report else \
            "<i>no report: the run ended without one</i>"
        names = sorted(self.logs)
        self.log_tabs.children = [w.HTML(_pre(self.logs[name]) if self.logs[name].strip()
                                         else "<i>empty</i>") for name in names]
        self.log_tabs.titles = tuple(f"{name} log" for name in names)
        self.log_tabs.selected_index = (names.index("error") if "error" in names and
                                        self.info.get("status") != "success" and names
                                        else (0 if names else None))
        with self.trace.batch_update():
            self.trace.data = ()
            if not self.latencies.empty:
                source = latency_trace(self.latencies, f"Latency per inference — "
                                       f"{self.bench_id}", median=True)
                for trace in source.data:
                    self.trace.add_trace(trace)
                self.trace.layout = source.layout
        self.trace.layout.autosize = True
        with self.layer_plot.batch_update():
            self.layer_plot.data = ()
            if not self.layers.empty:
                source = layer_bars(self.layers, TOP_LAYERS)
                for trace in source.data:
                    self.layer_plot.add_trace(trace)
                self.layer_plot.layout = source.layout
        self.plots.children = [figure for figure, shown in (
            (self.trace, not self.latencies.empty), (self.layer_plot, not self.layers.empty))
            if shown]
        self.details.layout.display = None

    # -- actions ---------------------------------------------------------------------------
    def _cancel_target(self) -> tuple[str, Callable[[], str]]:
        """The run, and how to cancel it."""
        return self.bench_id, self.bench.cancel
