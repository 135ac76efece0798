"""Figures that put runs side by side (overlaid histograms, per-layer error curves) and the
sensitivity sweep's cost per layer. Pure: stored stats / rows in, Plotly Figures out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from runs import catalogue as cat
from ui.figures import AFTER_COLOR, PALETTE, empty_note, short_names


def overlaid_histograms(
    series: Sequence[tuple[str, dict[str, Any] | None]],
    reference: dict[str, Any] | None = None,
    *,
    title: str = "",
) -> go.Figure:
    """One step line per run (its weights after compression), log-scale counts; the
    uncompressed weights (``reference``) as a grey area behind them."""
    fig = go.Figure()

    def centers_counts(stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        edges = np.asarray(stats["edges"], dtype=float)
        counts = np.asarray(stats["counts"], dtype=float)
        return (edges[:-1] + edges[1:]) / 2, np.where(counts > 0, counts, np.nan)

    if reference:
        x, y = centers_counts(reference)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name="uncompressed",
                line={"color": "#BBBBBB", "shape": "hvh"},
                fill="tozeroy",
                fillcolor="rgba(180,180,180,0.25)",
                hovertemplate="w ≈ %{x:.4g}: %{y:.0f} weights<extra>uncompressed</extra>",
            )
        )
    for i, (label, stats) in enumerate(series):
        if not stats:
            continue
        x, y = centers_counts(stats)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=label,
                line={"color": PALETTE[i % len(PALETTE)], "shape": "hvh", "width": 1.5},
                hovertemplate="w ≈ %{x:.4g}: %{y:.0f} weights<extra>" + label + "</extra>",
            )
        )
    fig.update_layout(
        title=title or "Weight histograms after compression",
        xaxis_title="Weight value",
        yaxis_title="Number of weights (log scale)",
        yaxis={"type": "log", "dtick": 1},
        legend={"orientation": "h", "y": -0.2},
        height=420,
        margin={"t": 60, "l": 60, "r": 20, "b": 60},
    )
    return fig


def layer_error_curves(curves: dict[str, pd.DataFrame]) -> go.Figure:
    """Relative output error per linear, one line per run, layers in model order (the order
    of the first run that has them)."""
    order: list[str] = []
    for df in curves.values():
        order += [n for n in df["layer"] if n not in order]
    short = dict(zip(order, short_names(order), strict=True))
    fig = go.Figure()
    for i, (label, df) in enumerate(curves.items()):
        d = df.dropna(subset=["rel_error"])
        d = d.assign(pos=d["layer"].map(order.index)).sort_values("pos")
        fig.add_trace(
            go.Scatter(
                x=[short[n] for n in d["layer"]],
                y=d["rel_error"],
                mode="lines+markers",
                name=label,
                line={"color": PALETTE[i % len(PALETTE)]},
                customdata=d["layer"],
                hovertemplate="%{customdata}<br>relative error %{y:.3g}<extra>"
                + label
                + "</extra>",
            )
        )
    fig.update_layout(
        title="Layer error per linear: ‖WX − W′X‖ / ‖WX‖ on calibration inputs",
        xaxis_title="Linear layer (model order)",
        xaxis={"categoryorder": "array", "categoryarray": [short[n] for n in order]},
        yaxis_title="Relative output error (log scale)",
        yaxis_type="log",
        legend={"orientation": "h", "y": -0.45},
        height=430,
        margin={"t": 50, "l": 60, "r": 20, "b": 130},
    )
    return fig


def sensitivity_figure(points: Sequence[dict[str, Any]], keep: Sequence[str] = ()) -> go.Figure:
    """Perplexity increase when only that layer (or block) is quantized, most costly first;
    the units a mixed recipe would keep in higher precision in red."""
    done = [p for p in points if np.isfinite(p["delta_ppl"])]
    units = [p["unit"] for p in done]
    labels = short_names(units) if len(units) > 1 else units
    colors = [AFTER_COLOR if u in keep else "#8C9BB5" for u in units]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[p["delta_ppl"] for p in done],
            marker={"color": colors},
            customdata=[[p["unit"], p[cat.PERPLEXITY.key], 100 * p["rel_cost"]] for p in done],
            hovertemplate="%{customdata[0]}<br>perplexity %{customdata[1]:.4f} "
            "(+%{y:.4g}, %{customdata[2]:+.2f}%)<extra></extra>",
        )
    )
    pending = len(points) - len(done)
    fig.update_layout(
        title={
            "text": "Sensitivity: perplexity cost of quantizing one unit alone",
            "subtitle": {
                "text": "red: kept in higher precision · below zero: no measurable harm (noise)"
                + (f" · {pending} unit(s) not finished" if pending else "")
            },
        },
        xaxis_title="Quantized unit (all others left in float)",
        xaxis_type="category",
        yaxis_title="Perplexity − uncompressed perplexity",
        height=420,
        margin={"t": 70, "l": 60, "r": 20, "b": 130},
    )
    if not done:
        empty_note(fig, "no finished sweep jobs yet")
    return fig


def _spread_cell(s: dict[str, Any] | None) -> tuple[float, float, float]:
    """(median, median - q1, q3 - median) of a stored spread (NaN where absent)."""
    if not s:
        return float("nan"), float("nan"), float("nan")
    return s["median"], s["median"] - s["q1"], s["q3"] - s["median"]


def latency_report_figure(report: Sequence[dict[str, Any]] | None) -> go.Figure:
    """Each timed workload of a run (runs/latency.py): baseline and compressed medians
    side by side with their middle half (q1-q3) as error bars; prefill in ms (lower is
    better), decode in tokens/s (higher is better), one panel each."""
    from plotly.subplots import make_subplots

    rows = list(report or [])
    if not rows:
        return empty_note("No latency report stored for this run (older runs timed one median).")
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("Prefill (ms, lower is better)", "Decode (tokens/s, higher is better)"),
    )
    for col, kind in ((1, "prefill"), (2, "decode")):
        of_kind = [r for r in rows if r.get("kind") == kind]
        for i, (label, key) in enumerate((("baseline", "baseline"), ("compressed", "compressed"))):
            cells = [_spread_cell(r.get(key)) for r in of_kind]
            fig.add_trace(
                go.Bar(
                    x=[r["name"] for r in of_kind],
                    y=[c[0] for c in cells],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [c[2] for c in cells],
                        "arrayminus": [c[1] for c in cells],
                    },
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    marker={"color": PALETTE[i] if i else "rgba(120,120,120,0.7)"},
                    hovertemplate="%{x}: %{y:.4g} (error bar: middle half of the rounds)"
                    f"<extra>{label}</extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group", height=380, margin={"t": 60, "l": 50, "r": 20, "b": 40})
    return fig
