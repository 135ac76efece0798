"""Sweep chart: a metric against the swept parameter value, one line per method.

Pure: a DataFrame in (rows from ``runs.sweep.sweep_points``: series, param, value and
the metric column), a Plotly Figure out.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from runs import catalogue as cat
from ui.figures import PALETTE, SYMBOLS, empty_note


def _title(metric: str) -> str:
    m = cat.lookup(metric)
    return (m.axis or m.label) if m else metric.replace("_", " ")


def sweep_figure(
    df: pd.DataFrame, metric: str = cat.PERPLEXITY.key, baseline: float | None = None
) -> go.Figure:
    """Lines of ``metric`` against the swept value per ``series``; x title from ``param``.

    ``baseline`` (the uncompressed model's value) is drawn as a dotted horizontal line.
    Perplexity grows fast with sparsity, so its axis is logarithmic.
    """
    fig = go.Figure()
    d = df.dropna(subset=["value", metric]) if not df.empty else df
    params = sorted(d["param"].unique()) if not d.empty else []
    for i, (series, g) in enumerate(d.groupby("series", sort=True) if not d.empty else []):
        g = g.sort_values("value")
        fig.add_trace(
            go.Scatter(
                x=g["value"],
                y=g[metric],
                mode="lines+markers",
                name=str(series),
                line={"color": PALETTE[i % len(PALETTE)]},
                marker={"symbol": SYMBOLS[i % len(SYMBOLS)], "size": 8},
                hovertemplate=f"{series}<br>%{{x:.4g}}: {metric} %{{y:.4g}}<extra></extra>",
            )
        )
    if baseline is not None:
        fig.add_hline(
            y=baseline, line_dash="dot", line_color="gray", annotation_text="uncompressed"
        )
    x_title = " / ".join(params) if params else "swept value"
    fig.update_layout(
        xaxis_title=f"{x_title} (swept)",
        yaxis_title=_title(metric),
        yaxis_type="log" if metric == cat.PERPLEXITY.key else "linear",
        legend_title="method",
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
    )
    if d.empty:
        empty_note(fig, "no finished sweep runs yet")
    return fig
