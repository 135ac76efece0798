"""The Sensitivity page's parts: finding sensitivity sweeps among the jobs, and their live
results (progress, the cost-per-unit chart, the table)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from core.errors import ModelLoadError
from core.models import model_skeleton
from core.recipe import recipe_from_steps
from core.registry import ConfigError
from core.sensitivity import model_layers
from db import queue
from db.models import FAILED, QUEUED, RUNNING, SUCCEEDED
from runs import catalogue as cat
from runs.sensitivity import (
    DEFAULT_HIGH_STEP,
    Unit,
    UnitKind,
    is_sensitivity_sweep,
    keep_sensitive_recipe,
    most_sensitive,
    sensitivity_points,
    sweep_units,
)
from runs.spec import recipe_label
from ui import forms, shell
from ui.figures_runs import sensitivity_figure

__all__ = ["DEFAULT_HIGH_STEP", "PlanError", "keep_recipe", "most_sensitive", "plan_units"]


class PlanError(ValueError):
    """A sweep that cannot be planned: the model does not load, or the step selects nothing."""


@st.cache_resource(show_spinner="Reading the model's layers (no weights are loaded)...")
def _layers(model: str) -> tuple[list[str], str]:
    return model_layers(model_skeleton(model))


def plan_units(model: str, step: dict[str, Any], unit: UnitKind) -> list[Unit]:
    """The units a sweep of ``step`` over ``model`` visits (PlanError says why not)."""
    try:
        names, block_path = _layers(model)
        return sweep_units(names, step, unit, block_path)
    except (ModelLoadError, ValueError) as e:
        raise PlanError(str(e)) from None


def prefill_kept_recipe(
    state: Any, jobs: list[Any], steps: list[dict[str, Any]], n_kept: int
) -> None:
    """Pre-fill New run with the mixed recipe, on the sweep's model and data settings."""
    spec, sweep_id = jobs[0].spec, str(jobs[0].sweep_id)
    forms.prefill_new_run(
        state,
        model=jobs[0].model,
        steps=steps,
        source=f"sensitivity sweep {sweep_id[:8]} ({n_kept} unit(s) kept in 8 bits, "
        f"{time.strftime('%H:%M')})",
        calib=spec.get("calib"),
        eval_set=spec.get("eval_set"),
        eval=spec.get("eval"),
        calib_settings=spec.get("calib_settings"),
    )


def keep_recipe(jobs: list[Any], keep: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the swept step applied everywhere, the mixed recipe keeping ``keep`` in 8 bits);
    ConfigError if the recipe is refused."""
    base = {k: v for k, v in jobs[0].spec["recipe"][0].items() if k != "targets"}
    base["targets"] = ["*"]
    return base, keep_sensitive_recipe(base, keep, DEFAULT_HIGH_STEP)


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
        st.error(
            f"Job #{j.id} ({shell.md_text(j.recipe_label, 300)}) failed: {shell.md_text(j.error)}"
        )
    points = points_of(jobs)
    keep = st.session_state.get("sens_keep", 3)
    st.plotly_chart(
        sensitivity_figure(points, most_sensitive(points, int(keep or 0))), key="sens_chart"
    )
    ppl, err = cat.PERPLEXITY, cat.LAYER_ERROR
    table = pd.DataFrame(points)[
        ["unit", "status", ppl.key, "delta_ppl", "rel_cost", err.key, "id"]
    ]
    table["rel_cost"] = 100 * table["rel_cost"]
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="sens_table",
        column_config={
            "unit": st.column_config.TextColumn("quantized unit"),
            ppl.key: st.column_config.NumberColumn(ppl.header, format="%.4f", help=ppl.definition),
            "delta_ppl": st.column_config.NumberColumn("Δ perplexity", format="%+.4f"),
            "rel_cost": st.column_config.NumberColumn("relative cost (%)", format="%+.3f"),
            err.key: st.column_config.NumberColumn(
                "layer error", format=err.fmt, help=cat.MEAN_LAYER_ERROR.definition
            ),
            "id": st.column_config.NumberColumn("job", format="%d"),
        },
    )
