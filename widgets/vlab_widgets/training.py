"""The page of an on-device training run (TYPE3): its status (live), loss and accuracy per
epoch on the training and the test data (live from the run's log as epochs end, then from
its report), the final figures, how to download the trained model, and why it failed."""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go

from vlab_kernel.client import TERMINAL
from vlab_kernel.lab import CURVES, Benchmark, Lab, Training, connect, training_curves
from vlab_kernel.units import MIB, sig3
from vlab_widgets.common import EventFollower, Message, RunView
from vlab_widgets.plots import MARGIN

STATUS_COLORS = {"success": "#2e7d32", "failed": "#b00020", "canceled": "#b00020",
                 "running": "#1565c0", "queued": "#1565c0", "pending": "#6d6d6d"}
# The line the training engine prints after each epoch (the user log).
EPOCH_LINE = re.compile(
    r"epoch (?P<epoch>\d+)/\d+: loss train (?P<loss_train>[-+.\deEnaif]+) "
    r"test (?P<loss_test>[-+.\deEnaif]+)"
    r"(?:, accuracy train (?P<accuracy_train>[-+.\deEnaif]+) "
    r"test (?P<accuracy_test>[-+.\deEnaif]+))?")
# Trace names: (curve, name in the plot).
LOSS_TRACES = (("loss_train", "train loss"), ("loss_test", "test loss"))
ACCURACY_TRACES = (("accuracy_train", "train accuracy"), ("accuracy_test", "test accuracy"))


def curves_from_log(text: str) -> pd.DataFrame:
    """The per-epoch curves from the lines a training prints as epochs end ("epoch 2/5: loss
    train 0.41 test 0.45, accuracy train 0.88 test 0.86 (0.12 s)"), shaped as
    `training_curves` gives them."""
    rows: dict[int, dict[str, float | None]] = {}
    for match in EPOCH_LINE.finditer(text):
        rows[int(match["epoch"])] = {key: float(match[key]) if match[key] else None
                                     for key in CURVES}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(CURVES), dtype="float64")
    frame = frame.sort_index()
    frame.index = pd.Index(frame.index, name="epoch", dtype="int64")
    return frame


def curves_from_progress(curves: dict[str, list[float | None]] | None) -> pd.DataFrame:
    """The per-epoch curves a running training's progress event carries (`epoch` and the
    curves of its last epochs), shaped as `training_curves` gives them; empty without."""
    epochs = (curves or {}).get("epoch") or []
    if not curves or not epochs:
        return pd.DataFrame(columns=list(CURVES))
    columns = [*CURVES, *(["epoch_time_s"] if "epoch_time_s" in curves else [])]
    frame = pd.DataFrame({key: curves.get(key) or [None] * len(epochs) for key in columns},
                         dtype="float64")
    frame.index = pd.Index([int(epoch or 0) for epoch in epochs], name="epoch", dtype="int64")
    return frame


def curve_figures(curves: pd.DataFrame) -> tuple[go.Figure, go.Figure]:
    """Loss and accuracy per epoch (train and test): two figures; accuracy in %."""
    loss, accuracy = go.Figure(), go.Figure()
    epochs = list(curves.index)
    for figure, traces, scale in ((loss, LOSS_TRACES, 1.0), (accuracy, ACCURACY_TRACES, 100.0)):
        for column, name in traces:
            if column in curves and curves[column].notna().any():
                figure.add_trace(go.Scatter(
                    x=epochs, y=(curves[column] * scale).tolist(), mode="lines+markers",
                    name=name, hovertemplate=f"epoch %{{x}}: %{{y:.3g}}<extra>{name}</extra>"))
    loss.update_layout(title="Loss per epoch", xaxis_title="epoch", yaxis_title="loss",
                       yaxis_tickformat=".3~g", xaxis_dtick=1, margin=MARGIN)
    accuracy.update_layout(title="Accuracy per epoch", xaxis_title="epoch",
                           yaxis_title="accuracy (%)", yaxis_tickformat=".3~g", xaxis_dtick=1,
                           margin=MARGIN)
    return loss, accuracy


def final_figures(report: dict[str, Any], curves: pd.DataFrame) -> pd.DataFrame:
    """The headline numbers of a finished training: final losses and accuracies (%), the best
    test accuracy and its epoch, epochs, samples, training time (s), peak memory (MiB) and the
    model's parameters; 3 significant digits."""
    rows: list[tuple[str, str, str]] = []
    if not curves.empty:
        last = curves.iloc[-1]
        for column, label, scale, unit in (
                ("loss_train", "final train loss", 1.0, ""),
                ("loss_test", "final test loss", 1.0, ""),
                ("accuracy_train", "final train accuracy", 100.0, "%"),
                ("accuracy_test", "final test accuracy", 100.0, "%")):
            if column in curves and pd.notna(last.get(column)):
                rows.append((label, sig3(last[column], scale), unit))
        if "accuracy_test" in curves and curves["accuracy_test"].notna().any():
            best = curves["accuracy_test"].idxmax()
            rows.append(("best test accuracy", f"{sig3(curves['accuracy_test'].max(), 100)} "
                         f"(epoch {best})", "%"))
    for key, label, scale, unit in (
            ("epochs", "epochs", 1.0, ""), ("train_samples", "training samples", 1.0, ""),
            ("test_samples", "test samples", 1.0, ""),
            ("training_time", "training time", 1.0, "s"),
            ("peak_memory_bytes", "peak memory", 1 / MIB, "MiB"),
            ("nb_parameters_model", "parameters", 1.0, "")):
        value = report.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            rows.append((label, sig3(value, scale), unit))
    return pd.DataFrame(rows, columns=["figure", "value", "unit"])


def download_hint(run_id: str) -> str:
    """How to get the trained model from a notebook."""
    run = html.escape(run_id)
    return ('<div class="vlab-trained-model">Trained model: <code>run.trained_model("out/")'
            f"</code> writes <code>out/{run}_model.onnx</code> (with <code>run = "
            f'Training(lab, "{run}")</code>, <code>from vlab_kernel import Training</code>); '
            "benchmark it like any model.</div>")


class TrainingView(RunView, w.VBox):
    """One training run: `TrainingView(lab, run)` with the `Training` of `lab.train(...)` or
    its id. Live while it runs (its own event stream; `live=False` shows it once): the curves
    grow as epochs end, Cancel stays until it ends; a failed run says why."""

    def __init__(self, lab: Lab | None, run: str | Benchmark, live: bool = True) -> None:
        self.lab = lab or connect()
        self.run = run if isinstance(run, Training) else Training(
            self.lab, run if isinstance(run, str) else run.id)
        self.info: dict[str, Any] = {}
        self.report: dict[str, Any] | None = None
        self.curves = pd.DataFrame(columns=list(CURVES))
        self.loaded = threading.Event()  # set once the finished run's report is shown
        self._lock = threading.RLock()
        self.title = w.HTML()
        self.status = w.HTML()
        self.progress = w.IntProgress(value=0, min=0, max=1, layout={"width": "300px"})
        self.cancel = w.Button(description="Cancel", icon="stop", tooltip="cancel this run",
                               layout={"display": "none"})
        self.reason = w.HTML()
        self.message = Message()
        self.loss_plot = self.accuracy_plot = go.FigureWidget()
        self.plots = w.HBox(layout={"width": "100%"})
        self.figures = w.HTML()
        self.hint = w.HTML()
        self.cancel.on_click(self._on_cancel)
        self._follower = EventFollower(self.lab, f"/api/benchmarks/{self.run.id}/events",
                                       self._on_event, self.message.show_error,
                                       until=lambda event: event.get("status") in TERMINAL)
        super().__init__([self.title, w.HBox([self.status, self.progress, self.cancel]),
                          self.reason, self.message,
                          self.plots,
                          self.figures, self.hint], layout={"width": "100%"})
        self.add_class("vlab-training-view")
        self._plot()  # the axes, empty until epochs end
        self.refresh()
        if live and self.info and not self.finished:
            self._follower.start()

    @property
    def run_id(self) -> str:
        return self.run.id

    def _on_progress(self, progress: dict[str, Any]) -> None:
        """The curves so far of a running training (each progress event carries them)."""
        curves = curves_from_progress(progress.get("curves"))
        with self._lock:
            if curves.empty or self.finished or curves.equals(self.curves):
                return
            self.curves = curves
            self._plot()

    def _curves_from_log(self) -> None:
        """The curves of an ended run without a report (a failed one), from the epochs its log
        printed."""
        try:
            text = self.lab.client.log(self.run_id, "user-log")
        except Exception:  # no log
            return
        curves = curves_from_log(text)
        if not curves.empty:
            self.curves = curves

    def _draw_state(self, info: dict[str, Any]) -> None:
        status = str(info.get("status"))
        where = info.get("target_uid") or info.get("device") or "?"
        self.title.value = (
            f'<h3 class="vlab-training-title">Training {html.escape(self.run_id)}</h3>'
            f"<div>{html.escape(str(info.get('model')))} · "
            f"{html.escape(str(info.get('engine')))} · {html.escape(str(where))}</div>")
        progress = info.get("progress") or {}
        total, done = int(progress.get("total") or 0), int(progress.get("done") or 0)
        detail = f" · epoch {min(done, total)}/{total}" if total and status == "running" \
            else ""
        color = STATUS_COLORS.get(status, "#333")
        self.status.value = (f'<span class="vlab-run-status vlab-status-{status}" '
                             f'style="color:{color};font-weight:bold">{status}</span>'
                             f"{html.escape(detail)}")
        # Once the report is in, its epochs count: a late event does not reset the bar.
        if not self.loaded.is_set():
            self.progress.max = max(total, 1)
            self.progress.value = min(done, total) if total else 0
            if status == "success":
                self.progress.value = self.progress.max
        self.progress.bar_style = {"success": "success", "failed": "danger",
                                   "canceled": "danger"}.get(status, "")
        unfinished = status not in TERMINAL
        self.cancel.layout.display = None if unfinished else "none"
        self.cancel.disabled = not unfinished
        self.reason.value = self._reason_html(info)

    def _reason_html(self, info: dict[str, Any]) -> str:
        status = info.get("status")
        if status not in ("failed", "canceled"):
            return ""
        reason = (info.get("message") or "").strip()
        if not reason:
            try:
                lines = self.lab.client.log(self.run_id, "error-log").strip().splitlines()
            except Exception:
                lines = []
            reason = lines[-1] if lines else "no reason given: see the run's error log"
        why = "Why it failed" if status == "failed" else "Why it was canceled"
        return (f'<div class="vlab-run-reason" style="color:#b00020"><b>{why}:</b> '
                f"{html.escape(reason)}</div>")

    def _on_end(self) -> None:
        with self._lock:
            if self.loaded.is_set():
                return
            if self.info.get("status") == "success":
                try:
                    self.report = self.lab.client.report(self.run_id)
                except Exception as error:
                    self.message.show(f"could not load the report: {error}")
            if self.report:
                self.curves = training_curves(self.report)
                epochs = len(self.curves)
                if epochs:  # the epochs done, whatever the last event counted
                    self.progress.max = self.progress.value = epochs
                figures = final_figures(self.report, self.curves)
                self.figures.value = figures.to_html(
                    index=False, header=False, border=0, classes="vlab-training-figures")
                self.hint.value = download_hint(self.run_id)
            else:
                self._curves_from_log()
            self._plot()
            self.loaded.set()

    def _plot(self) -> None:
        # New figure widgets each time: traces added to a widget no page shows yet are lost.
        widgets = []
        for source, css_class in zip(curve_figures(self.curves),
                                     ("vlab-training-loss", "vlab-training-accuracy"),
                                     strict=True):
            widget = go.FigureWidget(source)
            widget.layout.autosize = True
            widget.add_class(css_class)
            widgets.append(widget)
        old = self.plots.children
        self.loss_plot, self.accuracy_plot = widgets
        self.plots.children = widgets
        for widget in old:
            widget.close()

    def _cancel_target(self) -> tuple[str, Callable[[], str]]:
        """The training run, and how to cancel it."""
        return self.run_id, self.run.cancel
