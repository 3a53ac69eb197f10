"""The results explorer: filter the history, plot each configuration's runs and compare runs."""

from __future__ import annotations

import html
import threading
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go

from vlab_kernel.lab import Lab, connect
from vlab_widgets.common import (
    MIB,
    MS,
    STOP_WAIT_S,
    EventFollower,
    Message,
    side_by_side_text,
    sig3,
    stability_text,
)
from vlab_widgets.plots import (
    latency_distribution,
    latency_vs_memory,
    memory_bars,
    percentile_bars,
    shared_runs,
)
from vlab_widgets.run_page import RunPage

ALL = "(all)"
MAX_PICKABLE = 50  # the most recent runs offered for comparison
# Shown columns: name in the frame -> (header, scale); metrics in ms and MiB.
TABLE_COLUMNS: dict[str, tuple[str, float]] = {
    "id": ("id", 1), "name": ("name", 1), "model": ("model", 1), "target_uid": ("instance", 1),
    "engine": ("engine", 1), "status": ("status", 1),
    "latency_median_s": ("median (ms)", MS), "latency_p99_s": ("p99 (ms)", MS),
    "peak_memory_bytes": ("peak memory (MiB)", 1 / MIB), "stability": ("stability", 1),
    "side_by_side": ("side by side", 1), "message": ("message", 1), "tags": ("tags", 1),
    "notes": ("notes", 1), "created_at": ("created", 1)}
NEWEST = "created"
COMPARED_METRICS: dict[str, tuple[str, float]] = {
    "latency_median_s": ("median latency (ms)", MS), "latency_mean_s": ("mean latency (ms)", MS),
    "latency_p90_s": ("p90 latency (ms)", MS), "latency_p99_s": ("p99 latency (ms)", MS),
    "latency_std_s": ("latency std (ms)", MS), "latency_cv": ("latency CV", 1),
    "peak_memory_bytes": ("peak memory (MiB)", 1 / MIB),
    "memory_delta_bytes": ("memory over baseline (MiB)", 1 / MIB),
    "throughput_ips": ("throughput (inferences/s)", 1), "nb_inference": ("inferences", 1)}
# Keeps wide tables inside the notebook's width: they scroll instead of being cut.
SCROLL = "overflow-x:auto;max-width:100%"


def _replace(target: go.FigureWidget, source: go.Figure) -> None:
    with target.batch_update():
        target.data = ()
        for trace in source.data:
            target.add_trace(trace)
        target.layout = source.layout


def _frame_html(frame: pd.DataFrame, classes: str, index: bool = False) -> str:
    table = frame.to_html(index=index, classes=classes, na_rep="–", escape=True,
                          formatters={c: sig3 for c in frame.columns
                                      if pd.api.types.is_float_dtype(frame[c])})
    return f'<div style="{SCROLL}">{table}</div>'


def tags_of(value: Any) -> list[str]:
    """A run's tags from a results cell: a list, a ';'-joined text, or nothing."""
    if isinstance(value, str):
        return [tag for tag in value.split(";") if tag]
    if value is None or isinstance(value, float):
        return []
    return [str(tag) for tag in value]


def results_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows as shown: units in the headers, metrics in ms and MiB, a failed run's message,
    each run's stability verdict, and a warning for runs that shared their host."""
    shown = frame.copy()
    if "latency_cv" in shown or "unstable" in shown:
        shown["stability"] = [
            stability_text(r.get("latency_cv"), r.get("unstable")) if r.get("status") ==
            "success" else "" for r in shown.to_dict("records")]
    if "concurrent_jobs_on_host" in shown:
        others = pd.to_numeric(shown["concurrent_jobs_on_host"], errors="coerce").fillna(0)
        shown["side_by_side"] = [f"⚠ {side_by_side_text(int(n))}" if n > 0 else ""
                                 for n in others]
    if "tags" in shown:
        shown["tags"] = [", ".join(tags_of(value)) for value in shown["tags"]]
    if "created_at" in shown and pd.api.types.is_datetime64_any_dtype(shown["created_at"]):
        shown["created_at"] = shown["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S")
    columns = {}
    for name, (header, scale) in TABLE_COLUMNS.items():
        if name in shown:
            column = shown[name]
            columns[header] = pd.to_numeric(column, errors="coerce") * scale if scale != 1 \
                else column
    return pd.DataFrame(columns)


class ResultsExplorer(w.VBox):
    """The benchmark history: filters, a table, per-configuration plots (runs grouped with their
    spread and count, never summed) and a side-by-side comparison of picked runs. `live`
    refreshes it whenever a benchmark changes state, e.g. after a launch from the launcher."""

    def __init__(self, lab: Lab | None = None, include_public: bool = False,
                 live: bool = True) -> None:
        self.lab = lab or connect()
        self.all_results = pd.DataFrame()
        self.message = Message()
        self.refreshes = 0
        self._lock = threading.RLock()
        self.filters = {name: w.Dropdown(description=name, options=[ALL], value=ALL)
                        for name in ("target", "engine", "model", "status", "tag")}
        self.filters["tag"].layout.display = "none"  # shown once runs carry tags
        self.sort_by = w.Dropdown(description="sort by", options=[NEWEST], value=NEWEST)
        self.order = w.ToggleButtons(options=["ascending", "descending"], value="descending",
                                     style={"button_width": "90px"})
        self.side_by_side = w.HTML()
        self.run_choice = w.Dropdown(description="run", options=[],
                                     layout={"width": "420px"})
        self.open_button = w.Button(description="Open run", icon="folder-open",
                                    tooltip="show this run's page below")
        self.run_box = w.VBox(layout={"width": "100%"})
        self.page: RunPage | None = None
        self.export_path = w.Text(value="results.csv", description="file",
                                  placeholder="results.csv or results.parquet")
        self.export_button = w.Button(description="Export", icon="download",
                                      tooltip="write the ticked runs (or all the filters "
                                              "keep) as CSV or Parquet, by the suffix")
        self.export_message = Message()
        self.include_public = w.Checkbox(value=include_public, description="public results")
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.table = w.HTML()
        self.picks: dict[str, w.Checkbox] = {}
        self._ticked: list[str] = []  # in the order they were ticked: the first is the baseline
        self.runs = w.VBox(layout={"max_height": "220px", "overflow": "auto"})
        self.comparison_table = w.HTML()
        self.verdict = w.HTML()
        self.empty = w.HTML()
        self.distribution = go.FigureWidget()
        self.percentiles = go.FigureWidget()
        self.memory = go.FigureWidget()
        self.scatter = go.FigureWidget()
        self.percentiles.add_class("vlab-percentiles")
        self.memory.add_class("vlab-memory")
        full = {"width": "100%"}
        # Stacked at full width (autosize): side by side, the memory plot was cut at the edge.
        for figure in (self.percentiles, self.memory, self.scatter, self.distribution):
            figure.layout.autosize = True
        self.plots = w.VBox([self.percentiles, self.memory, self.scatter], layout=full)
        self.distribution_box = w.VBox([self.distribution], layout=full)
        self._sorting = False
        for control in (*self.filters.values(), self.sort_by, self.order):
            control.observe(self._on_control, names="value")
        self.open_button.on_click(lambda _b: self.open_run())
        self.export_button.on_click(lambda _b: self._on_export())
        self.include_public.observe(lambda _c: self.refresh(), names="value")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self._follower = EventFollower(self.lab, "/api/targets/events",
                                       lambda _event: self.refresh(), self.message.show_error)
        super().__init__([
            w.HTML("<h3>Results</h3>"),
            w.HBox([*self.filters.values()], layout={"flex_flow": "row wrap"}),
            w.HBox([self.include_public, self.refresh_button, self.sort_by, self.order],
                   layout={"flex_flow": "row wrap"}),
            self.message, self.table,
            w.HBox([self.run_choice, self.open_button]), self.run_box,
            w.HBox([self.export_path, self.export_button, self.export_message]),
            self.side_by_side, self.empty, self.plots,
            w.HTML("<b>Compare</b>: tick runs to see them side by side"), self.runs,
            self.verdict, self.comparison_table, self.distribution_box], layout=full)
        self.add_class("vlab-explorer")
        self.refresh()
        if live:
            self._follower.start()

    def _on_control(self, _change: dict[str, Any]) -> None:
        if not self._sorting:
            self.apply_filters()

    @property
    def frame(self) -> pd.DataFrame:
        """The results the filters keep (any status)."""
        frame = self.all_results
        for name, dropdown in self.filters.items():
            if dropdown.value == ALL:
                continue
            if name == "tag" and "tags" in frame:
                frame = frame[[dropdown.value in tags_of(v) for v in frame["tags"]]]
            elif name in frame:
                frame = frame[frame[name] == dropdown.value]
        return frame

    def refresh(self) -> None:
        """Reload the history from the API and redraw."""
        try:
            results = self.lab.results(include_public=self.include_public.value)
        except Exception as error:
            self.message.show_error(error)
            return
        with self._lock:
            self.all_results = results
            self.message.clear()
            for name, dropdown in self.filters.items():
                if name == "tag":
                    values = sorted({t for v in results.get("tags", []) for t in tags_of(v)})
                    dropdown.layout.display = None if values else "none"
                else:
                    values = sorted(results[name].dropna().unique()) if name in results else []
                current = dropdown.value
                with dropdown.hold_trait_notifications():
                    dropdown.options = [ALL, *values]
                    dropdown.value = current if current in dropdown.options else ALL
            self.apply_filters()
            self.refreshes += 1
        self.add_class("vlab-ready")

    def apply_filters(self) -> None:
        with self._lock:
            frame = self.frame
            table = self.sorted_table(frame)
            self.table.value = _frame_html(table, "vlab-results-table") \
                if not frame.empty else "<i>no benchmarks match</i>"
            self._set_run_choice(frame)
            ok = frame[frame["status"] == "success"] if "status" in frame else frame
            self.side_by_side.value = self._side_by_side_html(ok)
            self._set_picks(ok)
            # Plots show exactly what the filters keep; without data there are no empty axes.
            self.plots.layout.display = "none" if ok.empty else None
            self.empty.value = "" if not ok.empty else (
                '<p class="vlab-no-runs"><i>No runs yet: launch a benchmark to see its '
                "plots here.</i></p>" if self.all_results.empty else
                '<p class="vlab-no-runs"><i>No successful runs match the filters: nothing '
                "to plot.</i></p>")
            _replace(self.percentiles, percentile_bars(ok))
            _replace(self.memory, memory_bars(ok))
            _replace(self.scatter, latency_vs_memory(ok))
            self.update_comparison()

    def sorted_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The shown table, sorted by the chosen column (numbers as numbers, blanks last)."""
        table = results_table(frame)
        headers = [NEWEST, *[c for c in table.columns if c != NEWEST]] if not table.empty \
            else [NEWEST]
        if list(self.sort_by.options) != headers:
            current = self.sort_by.value
            self._sorting = True  # new headers are not a new choice: no redraw from them
            try:
                self.sort_by.options = headers
                self.sort_by.value = current if current in headers else NEWEST
            finally:
                self._sorting = False
        column = self.sort_by.value
        if table.empty or column not in table:
            return table
        return table.sort_values(column, ascending=self.order.value == "ascending",
                                 kind="stable", na_position="last").reset_index(drop=True)

    @staticmethod
    def _side_by_side_html(ok: pd.DataFrame) -> str:
        shared = ok[shared_runs(ok)] if not ok.empty else ok
        if shared.empty:
            return ""
        ids = ", ".join(html.escape(str(i)) for i in shared["id"].head(10))
        more = " …" if len(shared) > 10 else ""
        return (f'<div class="vlab-side-by-side" style="color:#e65100">⚠ {len(shared)} of the '
                f"{len(ok)} successful runs shown ran side by side with other jobs on shared "
                f"cores: numbers may be inflated ({ids}{more})</div>")

    def _set_run_choice(self, frame: pd.DataFrame) -> None:
        """Every run the filters keep, to open its page."""
        options = [(f"{r['id']} · {r.get('model')} · {r.get('engine')} · {r.get('status')}",
                    r["id"]) for r in frame.head(500).to_dict("records")] if "id" in frame \
            else []
        current = self.run_choice.value
        ids = [value for _label, value in options]
        self.run_choice.options = options
        self.run_choice.value = current if current in ids else (ids[0] if ids else None)
        self.open_button.disabled = not options

    def open_run(self, bench_id: str | None = None) -> RunPage:
        """Show a run's page below the table (the chosen run unless `bench_id`)."""
        chosen = bench_id or self.run_choice.value
        if not chosen:
            raise ValueError("no run chosen")
        if self.page is not None:
            self.page.close()
        self.page = RunPage(self.lab, chosen)
        self.run_box.children = [self.page]
        return self.page

    def export(self, path: str | Path | None = None) -> Path:
        """Write the ticked runs, or all the filters keep, to `path` (CSV or Parquet by the
        suffix); raw units, every column."""
        from vlab_kernel.export import export_table

        frame = self.frame
        if self.selected:
            frame = frame[frame["id"].isin(self.selected)]
        return export_table(frame, Path(path or self.export_path.value.strip()).expanduser())

    def _on_export(self) -> None:
        rows = len(self.selected) or len(self.frame)
        try:
            written = self.export(self.export_path.value.strip() or "results.csv")
        except Exception as error:
            self.export_message.show_error(error)
            return
        self.export_message.show(f"wrote {rows} run(s) to {written}")

    def _set_picks(self, ok: pd.DataFrame) -> None:
        recent = ok.sort_values("created_at", ascending=False).head(MAX_PICKABLE) \
            if "created_at" in ok else ok.head(MAX_PICKABLE)
        picks = {}
        for row in recent.to_dict("records"):
            box = self.picks.get(row["id"]) or w.Checkbox(
                value=False, indent=False, layout={"width": "auto"},
                description=f"{row['id']} {row['model']} · {row['engine']} · "
                            f"{row['target_uid']}")
            if row["id"] not in self.picks:
                box.observe(lambda change, bench_id=row["id"]: self._on_pick(
                    bench_id, change["new"]), names="value")
            picks[row["id"]] = box
        for bench_id, box in self.picks.items():
            if bench_id not in picks:
                box.close()
        self.picks = picks
        self._ticked = [bench_id for bench_id in self._ticked if bench_id in picks]
        self.runs.children = list(picks.values())

    def _on_pick(self, bench_id: str, ticked: bool) -> None:
        if bench_id in self._ticked:
            self._ticked.remove(bench_id)
        if ticked:
            self._ticked.append(bench_id)
        self.update_comparison()

    def select(self, ids: list[str]) -> None:
        """Tick exactly these runs for comparison."""
        for box in self.picks.values():
            box.value = False
        for bench_id in ids:
            self.picks[bench_id].value = True

    @property
    def selected(self) -> list[str]:
        """The ticked runs, in the order they were ticked."""
        return list(self._ticked)

    def comparison(self) -> pd.DataFrame:
        """The selected runs side by side: one column per run, one row per metric (ms, MiB),
        and a difference column per further run against the first one."""
        if not self.selected:
            return pd.DataFrame()
        rows = self.all_results.set_index("id").loc[self.selected]
        metrics = {label: pd.to_numeric(rows[name], errors="coerce") * scale
                   for name, (label, scale) in COMPARED_METRICS.items() if name in rows}
        table = pd.DataFrame(metrics).T
        first = self.selected[0]
        for other in self.selected[1:]:
            table[f"{other} − {first}"] = table[other] - table[first]
        return table

    def update_comparison(self) -> None:
        comparison = self.comparison()
        self.comparison_table.value = _frame_html(comparison, "vlab-comparison", index=True) \
            if not comparison.empty else ""
        self.verdict.value = ""
        selected = self.selected
        first = selected[0] if selected else None
        verdicts = [self.lab.compare(first, other) for other in selected[1:]] if first else []
        self.verdict.value = "".join(
            f'<p class="vlab-verdict"><b>{r["b"]}</b> vs <b>{r["a"]}</b>: '
            f'{html.escape(r["verdict"])}</p>' for r in verdicts)
        samples: dict[str, Any] = {}
        for bench_id in selected:
            bench = self.lab.get(bench_id)
            samples[f"{bench_id} {bench.summary()['engine']}"] = bench.latencies
        self.distribution_box.layout.display = None if samples else "none"
        _replace(self.distribution, latency_distribution(samples))

    def stop(self) -> None:
        """Stop following the server's events."""
        self._follower.stop(timeout=STOP_WAIT_S)
        if self.page is not None:
            self.page.stop()

    def close(self) -> None:
        self.stop()
        super().close()
