"""Federated learning (TYPE4) views: `FederationView`, one experiment (live rounds, accuracy
and loss per round, global and per client, the participants, client events marked on the
plot, Cancel); `ExperimentsView`, the user's experiments with a view of the picked one."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go

from vlab_kernel.client import TERMINAL
from vlab_kernel.federation import (
    Federation,
    clients_table,
    experiments_table,
    objective_met,
    rounds_table,
)
from vlab_kernel.lab import Lab, connect
from vlab_kernel.units import sig3
from vlab_widgets.common import EventFollower, LiveView, Message
from vlab_widgets.plots import MARGIN

STATUS_COLORS = {"success": "#2e7d32", "failed": "#b00020", "canceled": "#b00020",
                 "running": "#1565c0", "pending": "#6d6d6d"}
# How each kind of client event is marked: (name in the legend, plotly marker symbol).
EVENT_MARKS = {"failure": ("failure", "x"), "network_issue": ("network issue", "diamond"),
               "delayed_response": ("delay", "triangle-up"),
               "slow_response": ("slow", "triangle-down"),
               "reduced_dataset": ("reduced data", "square"),
               "epoch_completion": ("fewer epochs", "square-open"),
               "battery": ("battery", "star"), "temperature": ("temperature", "star-diamond"),
               "power": ("power", "star-triangle-up"), "cost": ("cost", "cross"),
               "dropped": ("dropped", "circle-open")}
GLOBAL = "global"


def _percent(value: Any) -> float | None:
    return float(value) * 100 if value is not None and value == value else None


def _event_kind(event: dict[str, Any], reason: str) -> str:
    kind = str(event.get("type"))
    if kind != "updated_status":
        return kind
    effect = str(event.get("effect") or "")
    if "battery" in effect or "battery" in reason:
        return "battery"
    if "hot" in effect or "temperature" in reason:
        return "temperature"
    if "power" in effect or "sunlight" in reason:
        return "power"
    return "cost"


def event_marks(results: dict[str, Any]) -> pd.DataFrame:
    """One row per client event to mark: round, client, kind (failure, network_issue, delay…,
    battery, temperature; `dropped` for a client dropped without a scripted event, e.g. a
    training that failed or timed out) and the text shown (what happened, and why it was
    dropped)."""
    rows = []
    for record in results.get("rounds_results") or []:
        reasons = {d.get("client_id"): str(d.get("reason")) for d in record.get("dropped") or []}
        for client, info in (record.get("clients") or {}).items():
            reason = reasons.get(client, "")
            applied = info.get("events") or []
            for event in applied:
                rows.append({"round": record.get("round"), "client": client,
                             "kind": _event_kind(event, reason),
                             "text": f"{client}: {event.get('type')} — {event.get('effect')}"
                                     + (f" (dropped: {reason})" if reason else "")})
            if reason and not applied and not reason.startswith("joins at round"):
                rows.append({"round": record.get("round"), "client": client, "kind": "dropped",
                             "text": f"{client}: dropped — {reason}"})
    return pd.DataFrame(rows, columns=["round", "client", "kind", "text"])


def round_figures(results: dict[str, Any]) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Accuracy (%) and loss per round, the global model's (`global`, with the initial model
    at round 0 where the server scored it) and each client's evaluation; client events marked
    on the accuracy plot; participants, aggregated and dropped clients per round."""
    rounds = rounds_table(results)
    clients = clients_table(results)
    initial = results.get("initial") or {}
    accuracy, loss, participants = go.Figure(), go.Figure(), go.Figure()
    start_x = [0] if initial.get("accuracy") is not None else []
    for figure, column, initial_value, scale in (
            (accuracy, "global_accuracy", initial.get("accuracy"), 100.0),
            (loss, "global_loss", initial.get("loss"), 1.0)):
        values = [v * scale if v == v else None for v in rounds[column]]
        head = [initial_value * scale] if start_x and initial_value is not None else []
        figure.add_trace(go.Scatter(
            x=(start_x if head else []) + rounds["round"].tolist(), y=head + values,
            mode="lines+markers", name=GLOBAL, line={"width": 3, "color": "#1565c0"},
            hovertemplate="round %{x}: %{y:.3g}<extra>global</extra>"))
        source = "eval_accuracy" if column == "global_accuracy" else "eval_loss"
        for client, group in clients.groupby("client", sort=True):
            if group[source].notna().any():
                figure.add_trace(go.Scatter(
                    x=group["round"].tolist(),
                    y=[v * scale if v == v else None for v in group[source]],
                    mode="lines+markers", name=str(client), line={"dash": "dot"},
                    hovertemplate=f"round %{{x}}: %{{y:.3g}}<extra>{client}</extra>"))
    marks = event_marks(results)
    by_round = dict(zip(rounds["round"], rounds["global_accuracy"], strict=True))
    for kind, group in marks.groupby("kind", sort=False):
        name, symbol = EVENT_MARKS.get(str(kind), (str(kind), "circle"))
        y = [_percent(by_round.get(r)) or 0.0 for r in group["round"]]
        accuracy.add_trace(go.Scatter(
            x=group["round"].tolist(), y=y, mode="markers", name=f"event: {name}",
            text=group["text"].tolist(), legendgroup="events",
            marker={"symbol": symbol, "size": 13, "color": "#e65100",
                    "line": {"width": 2, "color": "#e65100"}},
            hovertemplate="round %{x}<br>%{text}<extra></extra>"))
    participants.add_trace(go.Bar(x=rounds["round"].tolist(),
                                  y=[len(v) for v in rounds["aggregated_clients"]],
                                  name="aggregated", marker={"color": "#2e7d32"}))
    participants.add_trace(go.Bar(x=rounds["round"].tolist(),
                                  y=[len(v) for v in rounds["dropped"]],
                                  name="dropped", marker={"color": "#b00020"},
                                  text=rounds["dropped_reasons"].tolist(),
                                  hovertemplate="round %{x}: %{y} dropped<br>%{text}"
                                                "<extra></extra>"))
    participants.add_trace(go.Scatter(x=rounds["round"].tolist(),
                                      y=[len(v) for v in rounds["participants"]],
                                      mode="lines+markers", name="participants"))
    accuracy.update_layout(title="Accuracy per round", xaxis_title="round",
                           yaxis_title="accuracy (%)", yaxis_tickformat=".3~g", xaxis_dtick=1,
                           margin=MARGIN)
    loss.update_layout(title="Loss per round", xaxis_title="round", yaxis_title="loss",
                       yaxis_tickformat=".3~g", xaxis_dtick=1, margin=MARGIN)
    participants.update_layout(title="Clients per round", xaxis_title="round",
                               yaxis_title="clients", barmode="stack", xaxis_dtick=1,
                               yaxis_dtick=1, margin=MARGIN)
    return accuracy, loss, participants


def rounds_html(results: dict[str, Any]) -> str:
    """The rounds as a table: participants, dropped and why, global accuracy (%) and loss,
    experiment and wall time (s); 3 significant digits."""
    rounds = rounds_table(results)
    if rounds.empty:
        return "<i>no round finished yet</i>"
    shown = pd.DataFrame({
        "round": rounds["round"],
        "participants": [", ".join(v) for v in rounds["participants"]],
        "dropped (why)": rounds["dropped_reasons"],
        "global accuracy (%)": [sig3(v, 100) for v in rounds["global_accuracy"]],
        "global loss": [sig3(v) for v in rounds["global_loss"]],
        "time (s)": [sig3(v) for v in rounds["time_s"]],
        "wall time (s)": [sig3(v) for v in rounds["wall_time_s"]],
        "note": rounds["note"]})
    return shown.to_html(index=False, border=0, classes="vlab-fl-rounds", escape=True)


def figure_widget(figure: go.Figure, css_class: str) -> go.FigureWidget:
    """A figure as a widget that shows its traces wherever and whenever it is displayed."""
    widget = go.FigureWidget(figure)
    widget.layout.autosize = True
    widget.add_class(css_class)
    return widget


class FederationView(LiveView, w.VBox):
    """One federated-learning experiment: `FederationView(lab, fl)` with the `Federation` of
    `lab.federate(...)` or its id. Live while it runs (its event stream: each round's figures
    as it ends; `live=False` shows it once), Cancel until it ends."""

    def __init__(self, lab: Lab | None, experiment: str | Federation, live: bool = True) -> None:
        self.lab = lab or connect()
        self.experiment = experiment if isinstance(experiment, Federation) else \
            Federation(self.lab, experiment)
        self.results: dict[str, Any] = {}
        self.phase = ""
        self.loaded = threading.Event()  # set once the ended experiment's results are shown
        self._lock = threading.RLock()
        self.title = w.HTML()
        self.status = w.HTML()
        self.progress = w.IntProgress(value=0, min=0, max=1, layout={"width": "300px"})
        self.cancel = w.Button(description="Cancel", icon="stop",
                               tooltip="cancel this experiment and its client jobs",
                               layout={"display": "none"})
        self.reason = w.HTML()
        self.message = Message()
        self.accuracy_plot = self.loss_plot = self.participants_plot = go.FigureWidget()
        self.plots = w.VBox(layout={"width": "100%"})
        self.table = w.HTML()
        self.cancel.on_click(self._on_cancel)
        self._follower = EventFollower(
            self.lab, f"/api/benchmarks/fl/{self.experiment.id}/events", self._on_event,
            self.message.show_error, until=lambda event: event.get("status") in TERMINAL)
        super().__init__([self.title, w.HBox([self.status, self.progress, self.cancel]),
                          self.reason, self.message,
                          self.plots, self.table], layout={"width": "100%"})
        self.add_class("vlab-federation-view")
        self.refresh()
        if live and self.results and not self.finished:
            self._follower.start()

    @property
    def experiment_id(self) -> str:
        return self.experiment.id

    def _state(self) -> dict[str, Any]:
        return self.results

    def refresh(self) -> None:
        """Ask the server for the experiment's results and show them."""
        try:
            results = self.lab.client.fl_results(self.experiment_id)
        except Exception as error:
            self.message.show_error(error)
            return
        with self._lock:
            if self._outdated(results):
                return
            self.results = results
            self._render()
            if self.finished:
                self.loaded.set()
        self.add_class("vlab-ready")

    def _on_event(self, event: dict[str, Any]) -> None:
        phase, number = event.get("phase"), event.get("round")
        if phase in ("train", "aggregate", "evaluate") and self.results:
            with self._lock:
                self.phase = f"round {number}: {phase}"
                self._show_state()
            return
        self.phase = ""
        self.refresh()

    def _show_state(self) -> None:
        results = self.results
        status = str(results.get("status"))
        total = int(results.get("rounds") or 0)
        done = int(results.get("rounds_done") or 0)
        self.title.value = (
            f'<h3 class="vlab-fl-title">Federated learning {html.escape(self.experiment_id)}'
            f"</h3><div>{html.escape(str(results.get('model')))} · "
            f"{results.get('clients')} clients · {total} rounds · "
            f"{html.escape(str(results.get('strategy') or 'FedAvg'))}</div>")
        detail = f" · {done}/{total} rounds" if total else ""
        if self.phase and status not in TERMINAL:
            detail += f" · {self.phase}"
        accuracy = results.get("global_accuracy")
        if accuracy is not None:
            detail += f" · global accuracy {sig3(accuracy, 100)} %"
        color = STATUS_COLORS.get(status, "#333")
        self.status.value = (f'<span class="vlab-fl-status vlab-status-{status}" '
                             f'style="color:{color};font-weight:bold">{status}</span>'
                             f"{html.escape(detail)}")
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total) if total else 0
        self.progress.bar_style = {"success": "success", "failed": "danger",
                                   "canceled": "danger"}.get(status, "")
        unfinished = status not in TERMINAL
        self.cancel.layout.display = None if unfinished else "none"
        self.cancel.disabled = not unfinished
        stop = results.get("stop") or {}
        if status in ("failed", "canceled"):
            why = "Why it failed" if status == "failed" else "Why it was canceled"
            self.reason.value = (f'<div class="vlab-run-reason" style="color:#b00020"><b>{why}:'
                                 f"</b> {html.escape(results.get('message') or 'no reason given')}"
                                 "</div>")
        elif status == "success" and stop:
            met = " (objective met)" if objective_met(results) else ""
            self.reason.value = (f'<div class="vlab-fl-stop">Ended after round '
                                 f"{stop.get('round')}: {html.escape(str(stop.get('message')))}"
                                 f"{met}</div>")
        else:
            self.reason.value = ""

    def _render(self) -> None:
        self._show_state()
        # New figure widgets each time: traces added to a widget no page shows yet are lost.
        figures = [figure_widget(source, name) for source, name in zip(
            round_figures(self.results), ("vlab-fl-accuracy", "vlab-fl-loss",
                                          "vlab-fl-participants"), strict=True)]
        old = self.plots.children
        self.accuracy_plot, self.loss_plot, self.participants_plot = figures
        self.plots.children = figures
        for widget in old:
            widget.close()
        self.table.value = rounds_html(self.results)

    def _cancel_target(self) -> tuple[str, Callable[[], str]]:
        """The experiment, and how to cancel it."""
        return self.experiment_id, self.experiment.cancel


def _utc(stamp: Any) -> str:
    """A timestamp in UTC, to the second ("–" where unknown)."""
    if stamp is None or pd.isna(stamp):
        return "–"
    moment = pd.Timestamp(stamp)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


ResultsCache = dict[str, tuple[Any, dict[str, Any]]]  # by experiment id: (state, results)


def experiments_overview(lab: Lab, limit: int = 50,
                         cache: ResultsCache | None = None) -> pd.DataFrame:
    """The user's experiments, newest first (at most `limit`): status, clients, rounds done of
    those asked, the best global accuracy (%), whether an objective ended it, the message.
    `cache` keeps each experiment's results between calls: they are asked again only when its
    status or rounds done changed."""
    history = experiments_table(lab.client.fl_history())[:limit]
    cache = {} if cache is None else cache
    rows = []
    for record in history.to_dict("records"):
        key = (record["status"], record["rounds_done"])
        cached = cache.get(str(record["id"]))
        if cached is not None and cached[0] == key:
            results = cached[1]
        else:
            try:
                results = lab.client.fl_results(str(record["id"]))
                cache[str(record["id"])] = (key, results)
            except Exception:  # deleted meanwhile: shown with what the history says
                results = {}
        rounds = rounds_table(results)
        best = rounds["global_accuracy"].max() if len(rounds) else None
        met = objective_met(results) if results else None
        rows.append({"id": record["id"], "status": record["status"], "model": record["model"],
                     "clients": record["clients"],
                     "rounds done": f"{record['rounds_done']}/{record['rounds']}",
                     "best global accuracy (%)": sig3(best, 100),
                     "objective met": "–" if met is None else ("yes" if met else "no"),
                     "created (UTC)": _utc(record["created_at"]),
                     "message": record["message"] or ""})
    return pd.DataFrame(rows, columns=["id", "status", "model", "clients", "rounds done",
                                       "best global accuracy (%)", "objective met",
                                       "created (UTC)", "message"])


class ExperimentsView(w.VBox):
    """The user's federated-learning experiments (status, rounds done, best global accuracy,
    objective met) and a `FederationView` of the one picked (the newest at first).
    `refresh()` reads the list again."""

    def __init__(self, lab: Lab | None = None, live: bool = True) -> None:
        self.lab = lab or connect()
        self.live = live
        self.overview = pd.DataFrame()
        self.view: FederationView | None = None
        self._lock = threading.RLock()
        self._results: ResultsCache = {}
        self._updating: int | None = None  # the thread setting new options
        self.message = Message()
        self.table = w.HTML()
        self.picker = w.Dropdown(description="Experiment", options=[],
                                 layout={"width": "520px"})
        self.reload = w.Button(description="Refresh", icon="refresh")
        self.holder = w.VBox(layout={"width": "100%"})
        self.picker.observe(self._on_pick, names="value")
        self.reload.on_click(lambda _button: self.refresh())
        super().__init__([self.table, w.HBox([self.picker, self.reload]), self.message,
                          self.holder], layout={"width": "100%"})
        self.add_class("vlab-experiments")
        self.refresh()

    def refresh(self) -> None:
        try:
            self.overview = experiments_overview(self.lab, cache=self._results)
        except Exception as error:
            self.message.show_error(error)
            return
        self.message.clear()
        if self.overview.empty:
            self.table.value = ('<i class="vlab-no-experiments">No federated-learning '
                                "experiments yet: start one with <code>lab.federate(...)"
                                "</code></i>")
        else:
            self.table.value = self.overview.to_html(index=False, border=0,
                                                     classes="vlab-experiments-table")
        # Labels that do not change as experiments run: the options change only when an
        # experiment appears or goes, and a pick made meanwhile stays.
        options = [(f"{r['id']} · {r['model']} · {r['clients']} clients · "
                    f"{r['rounds done'].split('/')[-1]} rounds", r["id"])
                   for r in self.overview.to_dict("records")]
        with self._lock:
            if options != list(self.picker.options):
                current = self.picker.value
                ids = [value for _label, value in options]
                self._updating = threading.get_ident()
                try:
                    self.picker.options = options
                    self.picker.value = current if current in ids else (ids[0] if ids else None)
                finally:
                    self._updating = None
            if self.picker.value is not None and (
                    self.view is None or self.view.experiment_id != self.picker.value):
                self._show(str(self.picker.value))

    def _on_pick(self, change: dict[str, Any]) -> None:
        if self._updating == threading.get_ident():  # new options, not a person's pick
            return
        with self._lock:
            if change.get("new") and (self.view is None or
                                      self.view.experiment_id != change["new"]):
                self._show(str(change["new"]))

    def _show(self, experiment_id: str) -> None:
        if self.view is not None:
            self.view.close()
        self.view = FederationView(self.lab, experiment_id, live=self.live)
        self.holder.children = [self.view]

    def stop(self) -> None:
        if self.view is not None:
            self.view.stop()

    def close(self) -> None:
        self.stop()
        super().close()
