"""Seed-group chart: a metric's mean per seed group with its spread as an error bar.

Pure: a DataFrame in (rows from ``runs.sweep.seed_group_summary``: label, n and the
``<key>_mean`` / ``_std`` / ``_min`` / ``_max`` columns), a Plotly Figure out.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from runs import catalogue as cat
from ui.figures import PALETTE, empty_note


def seed_spread_figure(df: pd.DataFrame, metric: cat.Metric = cat.PERPLEXITY) -> go.Figure:
    """One point per seed group at the mean of ``metric``, its error bar one sample
    standard deviation each way, the min..max range as a thin grey bar behind it."""
    fig = go.Figure()
    mean, std = f"{metric.key}_mean", f"{metric.key}_std"
    lo, hi = f"{metric.key}_min", f"{metric.key}_max"
    d = df.dropna(subset=[mean]) if mean in df.columns else df.iloc[0:0]
    if not d.empty:
        labels = [f"{r.label} ({r.n} seeds)" for r in d.itertuples()]
        fig.add_trace(
            go.Bar(
                x=labels,
                base=d[lo],
                y=d[hi] - d[lo],
                marker={"color": "rgba(150,150,150,0.25)"},
                name="min..max",
                hovertemplate="min %{base:.4g}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=d[mean],
                mode="markers",
                marker={"color": PALETTE[0], "size": 10},
                error_y={"type": "data", "array": d[std], "visible": True},
                name="mean ± std",
                hovertemplate="mean %{y:.4g} ± %{error_y.array:.3g}<extra></extra>",
            )
        )
    fig.update_layout(
        yaxis_title=metric.axis or f"{metric.label} ({metric.unit})".replace(" ()", ""),
        xaxis_title="seed group",
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        showlegend=True,
    )
    if d.empty:
        empty_note(fig, "no finished seed group yet")
    return fig
