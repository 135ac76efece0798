"""Plotly figure builders: pure functions from DataFrames (or stored stats) to Figures.

Nothing here reads the database or calls Streamlit, so every figure is unit-tested on
small hand-made frames (tests/test_figures.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from runs import catalogue as cat

Better = cat.Better

PALETTE = qualitative.Plotly
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross", "pentagon")


def empty_note(fig: go.Figure, text: str) -> go.Figure:
    """Write ``text`` in the middle of a figure that has nothing to draw yet."""
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


BEFORE_COLOR, AFTER_COLOR = "#636EFA", "#EF553B"
PARETO_COLOR = "#111111"  # a solid dark staircase: visible over any marker colour

# Runs-frame column -> (axis title with units, which direction is better).
AXES: dict[str, tuple[str, Better]] = cat.axes()
PPL = cat.PERPLEXITY.col


def pareto_front(
    df: pd.DataFrame, x: str, y: str, *, x_better: Better = "lower", y_better: Better = "lower"
) -> pd.DataFrame:
    """The rows no other row dominates, sorted by ``x`` ascending.

    Row a dominates row b when a is at least as good on both columns and strictly better
    on one. Rows with a missing value in ``x`` or ``y`` are never on the front; exact
    duplicates do not dominate each other, so both stay.
    """
    if not {x, y} <= set(df.columns):
        return df.iloc[0:0]
    d = df.dropna(subset=[x, y])
    if d.empty:
        return d
    # Flip signs so that "smaller is better" on both axes.
    xs = d[x].to_numpy(dtype=float) * (1 if x_better == "lower" else -1)
    ys = d[y].to_numpy(dtype=float) * (1 if y_better == "lower" else -1)
    no_worse = (xs[None, :] <= xs[:, None]) & (ys[None, :] <= ys[:, None])  # [i, j]: j vs i
    better = (xs[None, :] < xs[:, None]) | (ys[None, :] < ys[:, None])
    dominated = (no_worse & better).any(axis=1)
    return d[~dominated].sort_values([x, y], kind="stable")


def _hover(df: pd.DataFrame, x: str, y: str, titles: tuple[str, str]) -> tuple[np.ndarray, str]:
    """customdata [id, recipe, model, true x, true y] (a spread point is drawn off its
    value; the hover says the stored one) and the hover template."""
    custom = df[["id", "recipe", "model"]].copy()
    custom["_x"], custom["_y"] = df[x].to_numpy(), df[y].to_numpy()
    template = (
        "run #%{customdata[0]}: %{customdata[1]}<br>%{customdata[2]}<br>"
        f"{titles[0]}: %{{customdata[3]:.4g}}<br>{titles[1]}: %{{customdata[4]:.4g}}"
        "<extra>%{fullData.name}</extra>"
    )
    return custom.to_numpy(dtype=object), template


SPREAD_FRACTION = 0.012  # of the x range: how far apart runs drawn at one place are set


def spread_overlaps(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """x positions at which runs with the same (x, y) (to 6 significant digits) are drawn
    side by side, centred on their value, so that each stays visible and clickable; the
    others keep their value."""
    out = df[x].astype(float).copy()
    if len(df) < 2:
        return out
    span = float(out.max() - out.min()) or float(abs(out.iloc[0])) or 1.0
    keys = [(f"{a:.6g}", f"{b:.6g}") for a, b in zip(df[x], df[y], strict=True)]
    groups: dict[tuple[str, str], list[Any]] = {}
    for idx, k in zip(df.index, keys, strict=True):
        groups.setdefault(k, []).append(idx)
    for members in groups.values():
        n = len(members)
        for k, idx in enumerate(members):
            out.loc[idx] += (k - (n - 1) / 2) * SPREAD_FRACTION * span
    return out


def spread_error(df: pd.DataFrame, col: str) -> dict[str, Any] | None:
    """Plotly error-bar settings for a runs-frame column that has stored quartiles
    (:data:`runs.catalogue.SPREAD`): from the median down to q1 and up to q3."""
    pair = cat.SPREAD.get(col)
    if pair is None or not {pair[0].col, pair[1].col} <= set(df.columns):
        return None
    lo, hi = (df[q.col] for q in pair)
    if lo.isna().all():
        return None
    return {
        "type": "data",
        "symmetric": False,
        "array": (hi - df[col]).to_numpy(),
        "arrayminus": (df[col] - lo).to_numpy(),
        "thickness": 1,
    }


def tradeoff_figure(
    df: pd.DataFrame,
    x: str,
    y: str = PPL,
    *,
    color: str = "method",
    title: str = "",
) -> go.Figure:
    """Scatter of finished runs (one trace per ``color`` value) with the Pareto front.

    Axis titles and the better direction come from :data:`AXES`; a single model's
    uncompressed perplexity is drawn as a dotted line for reference.
    """
    x_title, x_better = AXES.get(x) or cat.axes([x]).get(x, (x, "lower"))  # task columns too
    y_title, y_better = AXES.get(y) or cat.axes([y]).get(y, (y, "lower"))
    fig = go.Figure()
    d = df.dropna(subset=[x, y]) if {x, y} <= set(df.columns) else df.iloc[0:0]
    models = sorted(d["model"].unique()) if "model" in d else []
    drawn_x = spread_overlaps(d, x, y) if len(d) else d.get(x)
    for i, (name, group) in enumerate(d.groupby(color, sort=True)):
        custom, template = _hover(group, x, y, (x_title, y_title))
        symbols = [SYMBOLS[models.index(m) % len(SYMBOLS)] for m in group["model"]]
        fig.add_trace(
            go.Scatter(
                x=drawn_x.loc[group.index],
                y=group[y],
                mode="markers",
                name=str(name),
                marker={"size": 11, "color": PALETTE[i % len(PALETTE)], "symbol": symbols},
                customdata=custom,
                hovertemplate=template,
                error_x=spread_error(group, x),  # middle half of the timed rounds
                error_y=spread_error(group, y),
            )
        )
    front = pareto_front(d, x, y, x_better=x_better, y_better=y_better)
    if len(front):
        # The boundary of the dominated region is a staircase; which corner it turns
        # depends on whether both axes improve in the same direction.
        shape = "hv" if x_better == y_better else "vh"
        fig.add_trace(
            go.Scatter(
                x=front[x],
                y=front[y],
                mode="lines",
                name="Pareto front",
                line={"color": PARETO_COLOR, "width": 3, "shape": shape},
                hoverinfo="skip",
            )
        )
    base_col = cat.BASELINE_PERPLEXITY.col
    base = d[base_col].dropna().unique() if base_col in d else []
    if y == PPL and len(base) == 1:
        fig.add_hline(
            y=float(base[0]),
            line={"dash": "dot", "color": "grey"},
            annotation_text="uncompressed",
            annotation_position="top right",
        )
    corner = {
        ("lower", "lower"): "lower left",
        ("higher", "lower"): "lower right",
        ("lower", "higher"): "upper left",
        ("higher", "higher"): "upper right",
    }[(x_better, y_better)]
    fig.update_layout(
        title={
            "text": title or f"{y_title.split(' (')[0]} vs {x_title.split(' (')[0].lower()}",
            "subtitle": {"text": f"{corner} is better"},
        },
        xaxis_title=x_title,
        yaxis_title=y_title,
        legend={"title": {"text": color}, "orientation": "h", "y": -0.22, "x": 0},
        margin={"t": 70, "l": 60, "r": 20, "b": 40},
        height=450,
    )
    return fig


def memory_figure(df: pd.DataFrame) -> go.Figure:
    return tradeoff_figure(df, cat.WEIGHT_BYTES.col, PPL)


def latency_figure(df: pd.DataFrame, metric: str = cat.PREFILL_MS.col) -> go.Figure:
    allowed = [m.col for m in cat.LATENCY]
    if metric not in allowed:
        raise ValueError(f"latency metric must be {' or '.join(allowed)}, not {metric!r}")
    return tradeoff_figure(df, metric, PPL)


def outlier_count(stats: dict[str, Any] | None, k: float) -> int | None:
    """Stored count of |w - mean| > k * std (None if not recorded for this k)."""
    if not stats:
        return None
    value = (stats.get("outliers") or {}).get(str(float(k)))
    return int(value) if value is not None else None


def layer_summary(row: dict[str, Any]) -> str:
    """One line of a layer's stored statistics, before -> after."""
    b, a = row.get("before") or {}, row.get("after") or {}

    def pair(key: str, fmt: str) -> str:
        return " → ".join(format(s[key], fmt) if key in s else "-" for s in (b, a))

    shape = a.get("shape") or b.get("shape") or ()
    return (
        f"scheme {row.get('scheme', '?')} · shape {' × '.join(map(str, shape))} · "
        f"absmax {pair('absmax', '.4g')} · std {pair('std', '.4g')} · "
        f"excess kurtosis {pair('kurtosis', '.2f')} · zeros {pair('zeros', '.1%')}"
    )


def _bars(stats: dict[str, Any], name: str, color: str) -> go.Bar:
    edges = np.asarray(stats["edges"], dtype=float)
    counts = np.asarray(stats["counts"], dtype=float)
    return go.Bar(
        x=(edges[:-1] + edges[1:]) / 2,
        y=np.where(counts > 0, counts, np.nan),  # log axis: empty bins are simply absent
        width=np.diff(edges),
        name=name,
        marker={"color": color, "line": {"width": 0}},
        opacity=0.55,
        hovertemplate="w in [%{x:.4g} ± half a bin]: %{y:.0f} weights<extra>" + name + "</extra>",
    )


def histogram_figure(
    before: dict[str, Any] | None, after: dict[str, Any] | None, k: float, *, title: str = ""
) -> go.Figure:
    """Before/after weight histograms on shared bins, log-scale counts, with the outlier
    thresholds mean ± k·std drawn (solid: before, dashed: after) and the tails shaded."""
    fig = go.Figure()
    series = [("before", before, BEFORE_COLOR, "solid"), ("after", after, AFTER_COLOR, "dash")]
    for label, stats, color, dash in series:
        if not stats:
            continue
        n = outlier_count(stats, k)
        fig.add_trace(_bars(stats, f"{label}: {n if n is not None else '?'} beyond {k:g}σ", color))
        lo, hi = stats["mean"] - k * stats["std"], stats["mean"] + k * stats["std"]
        for xv in (lo, hi):
            fig.add_vline(x=xv, line={"color": color, "dash": dash, "width": 1.5})
        if label == "before":
            left, right = stats["edges"][0], stats["edges"][-1]
            if lo > left:
                fig.add_vrect(x0=left, x1=lo, fillcolor="orange", opacity=0.08, line_width=0)
            if hi < right:
                fig.add_vrect(x0=hi, x1=right, fillcolor="orange", opacity=0.08, line_width=0)
    fig.update_layout(
        title=title or f"Weight histogram before and after (outliers: |w − mean| > {k:g}·std)",
        barmode="overlay",
        bargap=0,
        xaxis_title="Weight value",
        yaxis_title="Number of weights (log scale)",
        yaxis={"type": "log", "dtick": 1},  # label powers of ten only
        legend={"orientation": "h", "y": -0.2},
        margin={"t": 60, "l": 60, "r": 20, "b": 60},
        height=430,
    )
    return fig


def short_names(names: list[str]) -> list[str]:
    """Layer names without the dotted prefix most of them share ("model.layers.0.mlp" ->
    "0.mlp"); a name outside that prefix (an lm_head) stays whole."""
    parts = [n.split(".") for n in names]
    if len(parts) < 2:
        return [p[-1] for p in parts]
    firsts = [p[0] for p in parts if len(p) > 1]
    if not firsts:
        return list(names)
    head = max(set(firsts), key=firsts.count)  # the prefix family most names belong to
    family = [p for p in parts if len(p) > 1 and p[0] == head]
    common = 0
    while all(len(p) > common + 1 for p in family) and len({p[common] for p in family}) == 1:
        common += 1
    if len(family) < 2:
        common = len(family[0]) - 1 if family else 0
    return [".".join(p[common:]) if len(p) > 1 and p[0] == head else ".".join(p) for p in parts]


def layer_error_figure(layers: pd.DataFrame, selected: str | None = None) -> go.Figure:
    """Relative output error per linear layer (bars), the selected layer highlighted."""
    d = layers.dropna(subset=["rel_error"])
    colors = [AFTER_COLOR if name == selected else "#A0A0A0" for name in d["layer"]]
    fig = go.Figure(
        go.Bar(
            x=short_names(list(d["layer"])),
            customdata=d["layer"],
            y=d["rel_error"],
            marker={"color": colors},
            hovertemplate="%{customdata}<br>relative error %{y:.3g}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Layer error on calibration inputs: ‖WX − W′X‖ / ‖WX‖",
        xaxis_title="Linear layer",
        yaxis_title="Relative output error (unitless)",
        margin={"t": 50, "l": 60, "r": 20, "b": 120},
        height=360,
    )
    return fig


def axis_options(df: pd.DataFrame) -> dict[str, str]:
    """Runs-frame column -> axis title of every catalogued metric (task scores and any
    other the catalogue defines included) that at least one of these runs recorded."""
    out = {}
    for col, (title, _) in cat.axes(df.columns).items():
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any():
            out[col] = title
    return out


def parallel_figure(df: pd.DataFrame, columns: list[str], color: str = PPL) -> go.Figure:
    """Parallel coordinates over runs: one axis per column (numbers as they are; text
    such as the method as numbered categories), coloured by ``color``."""
    dims = []
    for col in columns:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        label = AXES.get(col, (col, ""))[0]
        if values.notna().all():
            dims.append({"label": label, "values": values.to_numpy(dtype=float)})
            continue
        cats = sorted({str(v) for v in df[col]})
        codes = [cats.index(str(v)) for v in df[col]]
        dims.append({"label": label, "values": codes, "tickvals": list(range(len(cats)))})
        dims[-1]["ticktext"] = cats
    fig = go.Figure()
    if not dims or df.empty:
        return empty_note(fig, "Pick runs and at least one axis.")
    shade = pd.to_numeric(df[color], errors="coerce") if color in df else None
    line: dict[str, Any] = {"color": "#636EFA"}
    if shade is not None and shade.notna().any():
        line = {
            "color": shade.fillna(shade.max()).to_numpy(dtype=float),
            "colorscale": "Viridis",
            "showscale": True,
            "colorbar": {"title": {"text": AXES.get(color, (color, ""))[0]}},
        }
    fig.add_trace(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(
        title="Parameters and metrics of the chosen runs (drag along an axis to filter)",
        margin={"t": 90, "l": 60, "r": 60, "b": 40},
        height=460,
    )
    return fig
