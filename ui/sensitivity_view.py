"""The Sensitivity page's parts: finding sensitivity sweeps among the jobs, and their live
results (progress, the cost-per-unit chart, the table)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from core.recipe import recipe_from_steps
from core.registry import ConfigError
from core.sensitivity import is_sensitivity_sweep, most_sensitive, sensitivity_points
from db import queue
from db.models import FAILED, QUEUED, RUNNING, SUCCEEDED
from ui import shell
from ui.figures_runs import sensitivity_figure
from ui.submit import recipe_label


def sensitivity_sweeps(jobs: Iterable[Any]) -> dict[str, list[Any]]:
    """Sweep id -> its jobs (submission order), for sweeps whose recipes differ only in
    their targets; the most recent sweep first."""
    by_sweep: dict[str, list[Any]] = {}
    for j in sorted(jobs, key=lambda j: j.id):
        if j.sweep_id:
            by_sweep.setdefault(j.sweep_id, []).append(j)
    found = {
        sid: js
        for sid, js in by_sweep.items()
        if is_sensitivity_sweep([(j.spec or {}).get("recipe") or [] for j in js])
    }
    return dict(sorted(found.items(), key=lambda kv: -kv[1][0].id))


def step_name(step: dict[str, Any]) -> str:
    """Like "rtn(bits=4, granularity=group)": the method with its non-default parameters,
    and its bit width even when that is the default (what a mixed recipe is about)."""
    try:
        label = recipe_label(recipe_from_steps([dict(step)]))
    except ConfigError:
        return str(step.get("method", "?"))
    bits = step.get("bits")
    if isinstance(bits, int) and "bits=" not in label:
        label = (
            label.replace("(", f"(bits={bits}, ", 1) if "(" in label else f"{label}(bits={bits})"
        )
    return label


def sweep_title(jobs: list[Any]) -> str:
    first = jobs[0]
    done = sum(j.status == SUCCEEDED for j in jobs)
    step = (first.spec.get("recipe") or [{}])[0]
    when = datetime.fromtimestamp(first.created_at).strftime("%Y-%m-%d %H:%M")
    return f"{first.model} · {step_name(step)} · {done}/{len(jobs)} done · {when}"


def points_of(jobs: list[Any]) -> list[dict[str, Any]]:
    return sensitivity_points(
        [
            {
                "id": j.id,
                "status": j.status,
                "recipe": (j.spec or {}).get("recipe") or [],
                "metrics": j.result if j.status == SUCCEEDED else {},
            }
            for j in jobs
        ]
    )


@st.fragment(run_every=3)
def live_results(sweep_id: str) -> None:
    """Progress of the sweep and the cost per unit so far, refreshed every 3 s."""
    jobs = queue.sweep_jobs(shell.session(), sweep_id)
    if not jobs:
        st.caption("This sweep has no jobs.")
        return
    counts = {s: sum(j.status == s for j in jobs) for s in (SUCCEEDED, RUNNING, QUEUED, FAILED)}
    n = len(jobs)
    running = [j for j in jobs if j.status == RUNNING]
    detail = f" · now: {running[0].recipe_label} ({running[0].progress:.0%})" if running else ""
    st.progress(
        counts[SUCCEEDED] / n,
        text=f"{counts[SUCCEEDED]}/{n} finished · {counts[RUNNING]} running · "
        f"{counts[QUEUED]} queued · {counts[FAILED]} failed{detail}",
    )
    if counts[QUEUED] and not queue.alive_workers(shell.session()):
        st.warning("No worker is alive: start one with `python -m workers serve`.")
    for j in [j for j in jobs if j.status == FAILED][:3]:
        st.error(f"Job #{j.id} ({j.recipe_label}) failed: {j.error}")
    points = points_of(jobs)
    keep = st.session_state.get("sens_keep", 3)
    st.plotly_chart(
        sensitivity_figure(points, most_sensitive(points, int(keep or 0))), key="sens_chart"
    )
    table = pd.DataFrame(points)[
        ["unit", "status", "perplexity", "delta_ppl", "rel_cost", "layer_error", "id"]
    ]
    table["rel_cost"] = 100 * table["rel_cost"]
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="sens_table",
        column_config={
            "unit": st.column_config.TextColumn("quantized unit"),
            "perplexity": st.column_config.NumberColumn("perplexity", format="%.4f"),
            "delta_ppl": st.column_config.NumberColumn("Δ perplexity", format="%+.4f"),
            "rel_cost": st.column_config.NumberColumn("relative cost (%)", format="%+.3f"),
            "layer_error": st.column_config.NumberColumn("layer error", format="%.2e"),
            "id": st.column_config.NumberColumn("job", format="%d"),
        },
    )
