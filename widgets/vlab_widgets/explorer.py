"""The results explorer: filter the history, plot distributions and compare runs."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go

from vlab_kernel.lab import Lab, connect
from vlab_widgets.common import Message
from vlab_widgets.plots import latency_distribution, latency_vs_memory, memory_bars, percentile_bars

TABLE_COLUMNS = ["id", "model", "target_uid", "engine", "benchmark_type", "status",
                 "latency_mean_s", "latency_p90_s", "latency_p99_s", "peak_memory_bytes",
                 "created_at"]
ALL = "(all)"


def _replace(target: go.FigureWidget, source: go.Figure) -> None:
    with target.batch_update():
        target.data = ()
        for trace in source.data:
            target.add_trace(trace)
        target.layout = source.layout


class ResultsExplorer(w.VBox):
    def __init__(self, lab: Lab | None = None, include_public: bool = False) -> None:
        self.lab = lab or connect()
        self.all_results = pd.DataFrame()
        self.message = Message()
        self.filters = {name: w.Dropdown(description=name, options=[ALL], value=ALL)
                        for name in ("target", "engine", "model", "status")}
        self.include_public = w.Checkbox(value=include_public, description="public results")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.table = w.HTML()
        self.runs = w.SelectMultiple(description="Compare", options=[], rows=6,
                                     layout={"width": "60%"})
        self.comparison_table = w.HTML()
        self.verdict = w.HTML()
        self.distribution = go.FigureWidget()
        self.percentiles = go.FigureWidget()
        self.memory = go.FigureWidget()
        self.scatter = go.FigureWidget()
        for dropdown in self.filters.values():
            dropdown.observe(lambda _c: self.apply_filters(), names="value")
        self.include_public.observe(lambda _c: self.refresh(), names="value")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.runs.observe(lambda _c: self.update_comparison(), names="value")
        super().__init__([
            w.HTML("<h3>Results</h3>"),
            w.HBox([*self.filters.values()]), w.HBox([self.include_public, self.refresh_button]),
            self.message, self.table, self.runs, self.verdict, self.comparison_table,
            self.distribution,
            w.HBox([self.percentiles, self.memory]), self.scatter])
        self.add_class("vlab-explorer")
        self.refresh()

    @property
    def frame(self) -> pd.DataFrame:
        """The filtered, successful-or-not results currently shown."""
        frame = self.all_results
        for name, dropdown in self.filters.items():
            column = "target" if name == "target" else name
            if dropdown.value != ALL and column in frame:
                frame = frame[frame[column] == dropdown.value]
        return frame

    def refresh(self) -> None:
        try:
            self.all_results = self.lab.results(include_public=self.include_public.value)
        except Exception as error:
            self.message.show_error(error)
            return
        self.message.clear()
        for name, dropdown in self.filters.items():
            values = sorted(self.all_results[name].dropna().unique()) \
                if name in self.all_results else []
            current = dropdown.value
            dropdown.options = [ALL, *values]
            dropdown.value = current if current in dropdown.options else ALL
        self.apply_filters()
        self.add_class("vlab-ready")

    def apply_filters(self) -> None:
        frame = self.frame
        shown = frame[[c for c in TABLE_COLUMNS if c in frame]]
        self.table.value = shown.to_html(index=False, classes="vlab-results-table",
                                         float_format=lambda v: f"{v:.6g}") \
            if not shown.empty else "<i>no benchmarks match</i>"
        ok = frame[frame["status"] == "success"] if "status" in frame else frame
        self.runs.options = [(f"{r['id']} {r['model']} {r['engine']} {r['target_uid']}", r["id"])
                             for r in ok.to_dict("records")]
        if not ok.empty:
            _replace(self.percentiles, percentile_bars(ok))
            _replace(self.memory, memory_bars(ok))
            _replace(self.scatter, latency_vs_memory(ok))
        self.update_comparison()

    @property
    def selected(self) -> list[str]:
        return list(self.runs.value)

    def comparison(self) -> pd.DataFrame:
        """The selected runs side by side: one column per run, one row per metric."""
        rows = self.all_results.set_index("id").loc[self.selected] if self.selected \
            else pd.DataFrame()
        return rows.T if not rows.empty else rows

    def update_comparison(self) -> None:
        comparison = self.comparison()
        self.comparison_table.value = comparison.to_html(classes="vlab-comparison") \
            if not comparison.empty else ""
        self.verdict.value = ""
        if len(self.selected) == 2:
            result = self.lab.compare(*self.selected)
            self.verdict.value = (f'<p class="vlab-verdict"><b>{result["b"]}</b> vs '
                                  f'<b>{result["a"]}</b>: {html.escape(result["verdict"])}</p>')
        samples: dict[str, Any] = {}
        for bench_id in self.selected:
            bench = self.lab.get(bench_id)
            summary = bench.summary()
            samples[f"{bench_id} {summary['engine']}"] = bench.latencies
        _replace(self.distribution, latency_distribution(samples))
