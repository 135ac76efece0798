"""Figures of the outlier explorer: the layers x metric heatmap, per-channel weight and
activation maxima, and how SmoothQuant's alpha reshapes them.

Pure: stored layer rows / DataFrames / tensors in, Plotly Figures out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.actstats import Smoothed, difficulty, smoothed_ranges
from core.stats import OUTLIER_KS
from ui.figures import AFTER_COLOR, BEFORE_COLOR, short_names

# The outlier thresholds k the layer statistics are stored for (the pickers offer them).
OUTLIER_CHOICES: tuple[float, ...] = tuple(OUTLIER_KS)

# Heatmap columns: (layers_frame column or "outliers_before", label, unit/format, log-scaled).
HEATMAP_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("rel_error", "Layer output<br>error", ".3g", True),
    ("outliers_before", "Weight outliers<br>(count)", ",.0f", True),
    ("kurtosis_before", "Weight excess<br>kurtosis", ".2f", True),
    ("zeros_after", "Sparsity after<br>(fraction)", ".1%", False),
    ("act_absmax", "Activation<br>max |x|", ".3g", True),
    ("act_above", "Activations > 6.0<br>(count)", ",.0f", True),
)


def heatmap_columns(table: pd.DataFrame, k: float) -> list[tuple[str, str, str, bool]]:
    """The heatmap metrics this run recorded (a column of NaN only is left out)."""
    out = []
    for col, label, fmt, log in HEATMAP_METRICS:
        real = f"outliers_before_{float(k)}" if col == "outliers_before" else col
        if real in table and table[real].notna().any():
            out.append(
                (
                    real,
                    label.replace("(count)", f"(count > {k:g}σ)")
                    if col == "outliers_before"
                    else label,
                    fmt,
                    log,
                )
            )
    return out


def _relative(values: pd.Series, log: bool) -> np.ndarray:
    """0..1 within the column (min to max), on a log scale for heavy-tailed metrics, so
    columns in different units share one colour scale; NaN stays NaN."""
    v = values.to_numpy(dtype=float)
    if log:
        v = np.log10(np.where(v > 0, v, np.nan)) if np.nanmax(np.abs(v), initial=0) > 0 else v
    lo, hi = np.nanmin(v, initial=np.inf), np.nanmax(v, initial=-np.inf)
    if not np.isfinite(lo) or hi <= lo:
        return np.where(np.isnan(v), np.nan, 0.5)
    return (v - lo) / (hi - lo)


def heatmap_figure(table: pd.DataFrame, k: float, selected: str | None = None) -> go.Figure:
    """Layers (rows) x metrics (columns), each column coloured from its own minimum (light)
    to maximum (dark), the true value written in the cell. Clicking a cell selects its
    layer: an invisible marker sits on every cell because Plotly heatmaps do not emit
    point selections."""
    cols = heatmap_columns(table, k)
    layers = list(table["layer"])
    y = short_names(layers)
    z = (
        np.column_stack([_relative(table[c], log) for c, _, _, log in cols])
        if cols
        else np.zeros((len(layers), 0))
    )
    text = [
        [
            "" if pd.isna(table[c].iloc[i]) else format(table[c].iloc[i], fmt)
            for c, _, fmt, _ in cols
        ]
        for i in range(len(layers))
    ]
    labels = [label for _, label, _, _ in cols]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=y,
            text=text,
            texttemplate="%{text}",
            colorscale="Oranges",
            zmin=0,
            zmax=1,
            colorbar={
                "title": {"text": "within column"},
                "tickvals": [0, 1],
                "ticktext": ["min", "max"],
            },
            hoverinfo="skip",
            xgap=1,
            ygap=1,
        )
    )
    xs = [lab for _ in layers for lab in labels]
    ys = [yy for yy in y for _ in labels]
    cells = [
        [layers[i], labels[j], text[i][j] or "not recorded"]
        for i in range(len(layers))
        for j in range(len(labels))
    ]
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            marker={"symbol": "square", "size": 18, "opacity": 0},
            customdata=cells,
            hovertemplate="%{customdata[0]}<br>%{customdata[1]}: %{customdata[2]}<br>"
            "click to open its histograms<extra></extra>",
            showlegend=False,
            selected={"marker": {"opacity": 0}},
            unselected={"marker": {"opacity": 0}},
        )
    )
    if selected in layers:
        i = layers.index(selected)
        fig.add_shape(
            type="rect",
            xref="paper",
            x0=0,
            x1=1,
            yref="y",
            y0=i - 0.5,
            y1=i + 0.5,
            line={"color": "#222", "width": 2},
        )
    fig.update_layout(
        title={
            "text": "Every layer at a glance",
            "subtitle": {
                "text": "darker = larger within its column; click a cell to open that layer"
            },
        },
        xaxis_title="Metric",
        yaxis_title="Linear layer",
        xaxis={"side": "top", "tickangle": 0, "title": {"standoff": 4}},
        yaxis={"autorange": "reversed", "type": "category"},
        height=max(320, 120 + 24 * len(layers)),
        margin={"t": 150, "l": 160, "r": 20, "b": 30},
        clickmode="event+select",
        dragmode=False,
    )
    return fig


def layer_from_selection(selection: Any) -> str | None:
    """The layer name of a clicked heatmap cell (Streamlit's plotly selection state)."""
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        data = p.get("customdata") if isinstance(p, dict) else None
        if data:
            return str(data[0])
    return None


def channel_figure(before: Sequence[float] | None, after: Sequence[float] | None) -> go.Figure:
    """Max |w| per input channel (column of W) before and after compression."""
    fig = go.Figure()
    for label, values, color in (("before", before, BEFORE_COLOR), ("after", after, AFTER_COLOR)):
        if values:
            fig.add_trace(
                go.Scatter(
                    x=np.arange(len(values)),
                    y=values,
                    mode="lines",
                    name=label,
                    line={
                        "color": color,
                        "width": 1.2,
                        "dash": "solid" if label == "before" else "dot",
                    },
                    hovertemplate="channel %{x}: max |w| %{y:.4g}<extra>" + label + "</extra>",
                )
            )
    fig.update_layout(
        title={
            "text": "Max |w| per input channel",
            "subtitle": {
                "text": "one channel with large weights stretches a per-row scale for every row"
            },
        },
        xaxis_title="Input channel j (column of W)",
        yaxis_title="max |W_ij| over rows",
        legend={"orientation": "h", "y": -0.25},
        height=330,
        margin={"t": 80, "l": 70, "r": 20, "b": 60},
    )
    return fig


def activation_figure(act: dict[str, Any]) -> go.Figure:
    """Max |x| per input channel over the calibration set, the outlier threshold drawn,
    channels above it in red (the hidden dimensions LLM.int8() keeps in 16 bits)."""
    values = np.asarray(act.get("channel_absmax") or [], dtype=float)
    thr = float(act.get("threshold", 6.0))
    colors = np.where(values > thr, AFTER_COLOR, BEFORE_COLOR)
    fig = go.Figure(
        go.Bar(
            x=np.arange(len(values)),
            y=values,
            marker={"color": colors.tolist(), "line": {"width": 0}},
            hovertemplate="channel %{x}: max |x| %{y:.4g}<extra></extra>",
            name="max |x|",
        )
    )
    fig.add_hline(
        y=thr,
        line={"dash": "dash", "color": "#444"},
        annotation_text=f"outlier threshold {thr:g}",
        annotation_position="top left",
    )
    n_above, n_values = act.get("n_above", 0), act.get("n_values", 0)
    fig.update_layout(
        title={
            "text": "Input activations: max |x| per channel",
            "subtitle": {
                "text": f"{n_above:,} of {n_values:,} values above {thr:g} ({act.get('channels_above', 0)} channels) over {act.get('n_tokens', 0):,} calibration tokens"
            },
        },
        xaxis_title="Input channel j (hidden dimension)",
        yaxis_title="max |X_j| over tokens",
        bargap=0,
        height=330,
        margin={"t": 80, "l": 70, "r": 20, "b": 50},
    )
    return fig


def smoothing_figure(sm: Smoothed, alpha: float) -> go.Figure:
    """Per-channel maxima of the activations (top) and weights (bottom), before (grey) and
    after dividing X_j / multiplying W_j by s_j; log scale, the spread max/median noted."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=(
            f"activations: max|X_j| / s_j — spread (max/median) {difficulty(sm.act_before):.1f} → {difficulty(sm.act_after):.1f}",
            f"weights: max|W_j| · s_j — spread {difficulty(sm.weight_before):.1f} → {difficulty(sm.weight_after):.1f}",
        ),
    )
    x = np.arange(sm.scale.numel())
    for row, before, after, color, what in (
        (1, sm.act_before, sm.act_after, BEFORE_COLOR, "activation"),
        (2, sm.weight_before, sm.weight_after, AFTER_COLOR, "weight"),
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=before.numpy(),
                mode="lines",
                name=f"{what} before",
                line={"color": "#BBBBBB", "width": 1},
                hovertemplate="channel %{x}: %{y:.4g}<extra>before</extra>",
            ),
            row=row,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=after.numpy(),
                mode="lines",
                name=f"{what} after (α = {alpha:g})",
                line={"color": color, "width": 1.5},
                hovertemplate="channel %{x}: %{y:.4g}<extra>after</extra>",
            ),
            row=row,
            col=1,
        )
    # Powers of ten only: the default minor digits crowd a short log axis.
    fig.update_yaxes(type="log", dtick=1, title_text="max |X_j| (log)", row=1, col=1)
    fig.update_yaxes(type="log", dtick=1, title_text="max |W_j| (log)", row=2, col=1)
    fig.update_xaxes(title_text="Input channel j", row=2, col=1)
    fig.update_layout(
        title={
            "text": f"SmoothQuant with α = {alpha:g}: s_j = max|X_j|^α / max|W_j|^(1−α)",
            "subtitle": {
                "text": "the product max|X_j| · max|W_j| never changes; α moves the spread from X to W"
            },
        },
        legend={"orientation": "h", "y": -0.15},
        height=600,
        margin={"t": 130, "l": 70, "r": 20, "b": 60},
    )
    return fig


def smoothing_for(
    act_absmax: Sequence[float], weight_absmax: Sequence[float], alpha: float
) -> go.Figure:
    """SmoothQuant's per-channel rescaling at strength ``alpha``, as a figure."""
    return smoothing_figure(smoothed_ranges(act_absmax, weight_absmax, alpha), alpha)
