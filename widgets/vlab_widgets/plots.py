"""Plotly figures of benchmark results; each takes plain data and returns a figure.

Repeated runs of one configuration (model · engine · target) are one group: the bar is the
median of the runs, the error bar spans their min–max and the label carries the run count, so
runs are never stacked or summed."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

from vlab_widgets.common import MIB, MS, sig3

MARGIN = {"t": 40, "l": 50, "r": 10, "b": 40}


def _label(row: Mapping[str, object]) -> str:
    where = row.get("target") or row.get("target_uid")
    return f"{row.get('model')} · {row.get('engine')} · {where}"


def successful(results: pd.DataFrame) -> pd.DataFrame:
    """The runs that have metrics to plot."""
    return results[results["status"] == "success"] if "status" in results else results


def group_runs(results: pd.DataFrame, column: str, scale: float) -> pd.DataFrame:
    """One row per configuration of the successful runs: `median`, `min`, `max` of `column`
    times `scale`, `runs` (how many runs the group holds) and `side_by_side` (how many of
    them shared their host with other jobs), in label order."""
    ok = successful(results)
    if ok.empty or column not in ok:
        return pd.DataFrame(columns=["median", "min", "max", "runs", "side_by_side"])
    values = pd.to_numeric(ok[column], errors="coerce") * scale
    labels = pd.Series([_label(r) for r in ok.to_dict("records")], index=ok.index,
                       name="configuration")
    grouped = values.groupby(labels).agg(["median", "min", "max", "count"])
    shared = shared_runs(ok).astype(int).groupby(labels).sum()
    return grouped.rename(columns={"count": "runs"}).assign(side_by_side=shared)


def shared_runs(results: pd.DataFrame) -> pd.Series:
    """True for each run that shared its host with other jobs (`concurrent_jobs_on_host`
    counts the others); False where it ran alone or the count is unknown."""
    if "concurrent_jobs_on_host" not in results:
        return pd.Series(False, index=results.index)
    return pd.to_numeric(results["concurrent_jobs_on_host"], errors="coerce").fillna(0) > 0


def _group_bar(results: pd.DataFrame, column: str, scale: float, name: str,
               unit: str) -> go.Bar | None:
    groups = group_runs(results, column, scale)
    if groups.empty:
        return None
    return go.Bar(
        x=list(groups.index), y=groups["median"], name=name,
        error_y={"type": "data", "symmetric": False, "array": groups["max"] - groups["median"],
                 "arrayminus": groups["median"] - groups["min"]},
        customdata=groups["runs"].astype(int),
        text=[f"n={n}" + (f" · ⚠ {k} side by side" if k else "")
              for n, k in zip(groups["runs"], groups["side_by_side"], strict=True)],
        textposition="inside",
        hovertemplate=(f"%{{x}}<br>{name}: %{{y:.3g}} {unit} (median of %{{customdata}} "
                       "runs; %{text})<extra></extra>"))


def latency_distribution(samples: Mapping[str, pd.Series], widget: bool = False) -> go.Figure:
    """One box (with every point) per run: the distribution of its inference latencies."""
    figure = go.FigureWidget() if widget else go.Figure()
    for name, series in samples.items():
        figure.add_trace(go.Box(y=series.to_numpy() * MS, name=name, boxpoints="outliers",
                                boxmean=True))
    figure.update_layout(title="Latency per inference", yaxis_title="latency (ms)",
                         yaxis_tickformat=".3~g", showlegend=False, margin=MARGIN)
    return figure


def latency_trace(series: pd.Series, title: str = "Latency per inference",
                  widget: bool = False, median: bool = False) -> go.Figure:
    """Latency of each inference in run order: warm-up effects and drift show here. `median`
    adds the run's median as a dashed line (a second trace named "median …")."""
    figure = go.FigureWidget() if widget else go.Figure()
    values = series.to_numpy() * MS
    figure.add_trace(go.Scatter(x=series.index, y=values, mode="lines+markers",
                                marker={"size": 3}, name="latency"))
    if median and len(values):
        middle = float(pd.Series(values).median())
        figure.add_trace(go.Scatter(
            x=[series.index[0], series.index[-1]], y=[middle, middle], mode="lines",
            line={"dash": "dash", "color": "#e65100"}, name=f"median {sig3(middle)} ms",
            hovertemplate=f"median {sig3(middle)} ms<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="inference", yaxis_title="latency (ms)",
                         yaxis_tickformat=".3~g", margin=MARGIN)
    return figure


def layer_bars(layers: pd.DataFrame, top: int = 15, widget: bool = False) -> go.Figure:
    """The `top` slowest layers (mean time per inference, ms), slowest at the top."""
    figure = go.FigureWidget() if widget else go.Figure()
    if not layers.empty and "mean_s" in layers:
        rows = layers.assign(mean_s=pd.to_numeric(layers["mean_s"], errors="coerce")) \
            .nlargest(top, "mean_s").iloc[::-1]
        labels = [f"{r['name']} ({r.get('type') or '?'})" for r in rows.to_dict("records")]
        shares = pd.to_numeric(rows.get("share"), errors="coerce") \
            if "share" in rows else pd.Series([float("nan")] * len(rows))
        figure.add_trace(go.Bar(
            x=rows["mean_s"] * MS, y=labels, orientation="h", name="layer time",
            text=[f"{sig3(s * 100)} %" if s == s else "" for s in shares],
            hovertemplate="%{y}: %{x:.3g} ms<extra></extra>"))
    figure.update_layout(title=f"Slowest layers (top {top}, mean per inference)",
                         xaxis_title="time (ms)", xaxis_tickformat=".3~g",
                         margin={**MARGIN, "l": 220},
                         height=max(300, 24 * min(top, len(layers)) + 100))
    return figure


def percentile_bars(results: pd.DataFrame, widget: bool = False) -> go.Figure:
    """p50, p90 and p99 latency per configuration: median over its runs, min–max error bars."""
    figure = go.FigureWidget() if widget else go.Figure()
    for column, name in (("latency_median_s", "p50"), ("latency_p90_s", "p90"),
                         ("latency_p99_s", "p99")):
        bar = _group_bar(results, column, MS, name, "ms")
        if bar is not None:
            figure.add_trace(bar)
    figure.update_layout(title="Latency percentiles (median of runs, min–max)",
                         barmode="group", yaxis_title="ms", yaxis_tickformat=".3~g",
                         margin=MARGIN)
    return figure


def memory_bars(results: pd.DataFrame, widget: bool = False) -> go.Figure:
    """Peak RSS and memory over the baseline per configuration, grouped like the latencies."""
    figure = go.FigureWidget() if widget else go.Figure()
    for column, name in (("peak_memory_bytes", "peak RSS"),
                         ("memory_delta_bytes", "over baseline")):
        bar = _group_bar(results, column, 1 / MIB, name, "MiB")
        if bar is not None:
            figure.add_trace(bar)
    figure.update_layout(title="Memory (median of runs, min–max)", barmode="group",
                         yaxis_title="MiB", yaxis_tickformat=".3~g", margin=MARGIN)
    return figure


def latency_vs_memory(results: pd.DataFrame, widget: bool = False) -> go.Figure:
    """One point per successful run: a scatter shows repeated runs side by side."""
    figure = go.FigureWidget() if widget else go.Figure()
    ok = successful(results)
    for engine, group in ok.groupby("engine"):
        figure.add_trace(go.Scatter(
            x=group["peak_memory_bytes"] / MIB, y=group["latency_mean_s"] * MS,
            mode="markers", name=str(engine), text=[_label(r) for r in group.to_dict("records")],
            marker={"size": 10}))
    figure.update_layout(title="Latency vs memory (one point per run)",
                         xaxis_title="peak memory (MiB)", yaxis_title="mean latency (ms)",
                         xaxis_tickformat=".3~g", yaxis_tickformat=".3~g", margin=MARGIN)
    return figure
