"""Sweeps in the UI: the New run form that queues one run per value of one parameter,
and the Compare chart of a metric against the swept value, one line per method."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.registry import ConfigError, describe_params, get_method
from runs import catalogue as cat
from runs.records import as_float
from runs.sweep import numeric_params, sweep_points, sweep_values
from ui.figures_sweep import sweep_figure
from ui.frames import recipe_steps


def default_range(method: str, param: str, current: Any) -> tuple[float, float, float]:
    """(start, stop, step) offered first: sparsity 10% to 70% by 10%, else the
    parameter's allowed range in about 6 steps (whole steps for integers)."""
    if param == "sparsity":
        return 0.1, 0.7, 0.1
    p = next(p for p in describe_params(get_method(method).config_cls) if p["name"] == param)
    if isinstance(current, bool) or not isinstance(current, int | float):
        current = p["default"] if isinstance(p["default"], int | float) else 0
    lo = p["min"] if p["min"] is not None else current
    hi = p["max"] if p["max"] is not None else current
    if "float" in p["type"].split("|"):
        return float(lo), float(hi), float(hi - lo) / 4 or 1.0
    return float(lo), float(hi), float(max(1, (hi - lo) // 6))  # at most 7 runs


def sweep_form(steps: list[dict[str, Any]] | None) -> tuple[int, str, list[float]] | None:
    """Which step, parameter and values to sweep; None while that is not a valid choice."""
    if not steps:
        st.caption("A sweep needs a recipe with at least one step.")
        return None
    labels = [f"step {i + 1}: {s.get('method', '?')}" for i, s in enumerate(steps)]
    c1, c2 = st.columns(2)
    index = c1.selectbox(
        "Step", range(len(steps)), format_func=labels.__getitem__, key="sweep_step"
    )
    method = str(steps[index].get("method", ""))
    try:
        params = numeric_params(method)
    except ConfigError as e:  # an unknown method: the recipe check will say so too
        st.caption(str(e))
        return None
    if not params:
        st.caption(f"{method} has no numeric parameter to sweep.")
        return None
    param = c2.selectbox("Parameter", params, key=f"sweep_param:{index}:{method}")
    start, stop, step = default_range(method, param, steps[index].get(param))
    key = f"sweep:{index}:{method}:{param}"
    r1, r2, r3 = st.columns(3)
    start = r1.number_input("From", value=start, key=f"{key}:start", format="%g")
    stop = r2.number_input("To (inclusive)", value=stop, key=f"{key}:stop", format="%g")
    step = r3.number_input("Step", value=step, key=f"{key}:step", format="%g")
    try:
        values = sweep_values(start, stop, step)
    except ConfigError as e:
        st.caption(f"No sweep: {e}")
        return None
    st.caption(f"{len(values)} run(s): {param} = {', '.join(f'{v:g}' for v in values)}")
    return index, param, values


def sweep_frame(jobs: list[Any], metric: str = cat.PERPLEXITY.key) -> pd.DataFrame:
    """Plot rows of the finished jobs that belong to parameter sweeps (others are skipped)."""
    records = [
        {"sweep_id": j.sweep_id, "recipe": recipe_steps(j), "metrics": j.result or {}}
        for j in jobs
        if getattr(j, "sweep_id", None)
    ]
    return pd.DataFrame(sweep_points(records, metric))


def baseline_of(jobs: list[Any]) -> float | None:
    """The median uncompressed perplexity the jobs recorded (None if none did)."""
    bases = [as_float((j.result or {}).get(cat.BASELINE_PERPLEXITY.key)) for j in jobs]
    bases = [b for b in bases if b == b]
    return float(pd.Series(bases).median()) if bases else None


def sweep_chart(jobs: list[Any], metric: str = cat.PERPLEXITY.key) -> bool:
    """A "Sweeps" section with the chart of the parameter sweeps among ``jobs``; nothing
    (False) when there is none (sensitivity sweeps, one layer at a time, are not drawn)."""
    df = sweep_frame(jobs, metric)
    if df.empty:
        return False
    baseline = baseline_of(jobs) if metric == cat.PERPLEXITY.key else None
    st.subheader("Sweeps")
    st.caption(
        f"{cat.BY_KEY[metric].label} against the swept parameter, one line per "
        "method (queued with 'Sweep one parameter' on New run, or `python -m workers run "
        "--sweep`)."
    )
    st.plotly_chart(sweep_figure(df, metric, baseline=baseline), key="fig_sweep")
    return True
