"""Plotly figures of benchmark results; each takes plain data and returns a figure."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import plotly.graph_objects as go

MS = 1e3


def _label(row: Mapping[str, object]) -> str:
    where = row.get("target_uid") or row.get("target")
    return f"{row.get('model')} · {row.get('engine')} · {where}"


def latency_distribution(samples: Mapping[str, pd.Series], widget: bool = False) -> go.Figure:
    """One box (with every point) per run: the distribution of its inference latencies."""
    figure = go.FigureWidget() if widget else go.Figure()
    for name, series in samples.items():
        figure.add_trace(go.Box(y=series.to_numpy() * MS, name=name, boxpoints="outliers",
                                boxmean=True))
    figure.update_layout(title="Latency per inference", yaxis_title="latency (ms)",
                         showlegend=False, margin={"t": 40, "l": 50, "r": 10, "b": 40})
    return figure


def latency_trace(series: pd.Series, title: str = "Latency per inference",
                  widget: bool = False) -> go.Figure:
    """Latency of each inference in run order: warm-up effects and drift show here."""
    figure = go.FigureWidget() if widget else go.Figure()
    figure.add_trace(go.Scatter(x=series.index, y=series.to_numpy() * MS, mode="lines+markers",
                                marker={"size": 3}, name="latency"))
    figure.update_layout(title=title, xaxis_title="inference", yaxis_title="latency (ms)",
                         margin={"t": 40, "l": 50, "r": 10, "b": 40})
    return figure


def percentile_bars(results: pd.DataFrame, widget: bool = False) -> go.Figure:
    """p50, p90 and p99 latency per run, grouped."""
    figure = go.FigureWidget() if widget else go.Figure()
    labels = [_label(row) for row in results.to_dict("records")]
    for column, name in (("latency_median_s", "p50"), ("latency_p90_s", "p90"),
                         ("latency_p99_s", "p99")):
        if column in results:
            figure.add_trace(go.Bar(x=labels, y=results[column] * MS, name=name))
    figure.update_layout(title="Latency percentiles", barmode="group", yaxis_title="ms",
                         margin={"t": 40, "l": 50, "r": 10, "b": 40})
    return figure


def memory_bars(results: pd.DataFrame, widget: bool = False) -> go.Figure:
    figure = go.FigureWidget() if widget else go.Figure()
    labels = [_label(row) for row in results.to_dict("records")]
    if "peak_memory_bytes" in results:
        figure.add_trace(go.Bar(x=labels, y=results["peak_memory_bytes"] / 2**20,
                                name="peak RSS"))
    if "memory_delta_bytes" in results:
        figure.add_trace(go.Bar(x=labels, y=results["memory_delta_bytes"] / 2**20,
                                name="over baseline"))
    figure.update_layout(title="Memory", barmode="group", yaxis_title="MiB",
                         margin={"t": 40, "l": 50, "r": 10, "b": 40})
    return figure


def latency_vs_memory(results: pd.DataFrame, widget: bool = False) -> go.Figure:
    figure = go.FigureWidget() if widget else go.Figure()
    for engine, group in results.groupby("engine"):
        figure.add_trace(go.Scatter(
            x=group["peak_memory_bytes"] / 2**20, y=group["latency_mean_s"] * MS,
            mode="markers", name=str(engine), text=[_label(r) for r in group.to_dict("records")],
            marker={"size": 10}))
    figure.update_layout(title="Latency vs memory", xaxis_title="peak memory (MiB)",
                         yaxis_title="mean latency (ms)",
                         margin={"t": 40, "l": 50, "r": 10, "b": 40})
    return figure
