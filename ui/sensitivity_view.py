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
from ui.frames import fmt_duration

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


PREFILL_SLOT = "sensitivity"  # New run opened with ?prefill=sensitivity takes this recipe


def prefill_kept_recipe(
    state: Any, jobs: list[Any], steps: list[dict[str, Any]], n_kept: int
) -> None:
    """Keep the mixed recipe, on the sweep's model and data settings, for New run opened
    with ``?prefill=sensitivity``."""
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
        slot=PREFILL_SLOT,
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
    """The picker's label: what the sweep is, not how far it got (the live progress under
    the picker says that; a label fixed at the last full rerun would go stale)."""
    first = jobs[0]
    step = (first.spec.get("recipe") or [{}])[0]
    when = datetime.fromtimestamp(first.created_at).strftime("%Y-%m-%d %H:%M")
    return f"{first.model} · {step_name(step)} · {len(jobs)} jobs · {when}"


# --- how long a sweep will take, before it is queued ----------------------------------

HISTORY = 10  # finished jobs of the model whose wall times predict the next ones


def past_job_seconds(jobs: Iterable[Any], model: str) -> list[float]:
    """Wall seconds (start to finish) of the latest finished compressing jobs on ``model``."""
    out = []
    for j in jobs:
        timed = j.started_at is not None and j.finished_at is not None
        if j.model == model and j.status == SUCCEEDED and timed:
            if (j.spec or {}).get("recipe"):
                out.append(float(j.finished_at - j.started_at))
        if len(out) >= HISTORY:
            break
    return out


def forward_seconds_per_job(
    result: dict[str, Any], ev: dict[str, int], cs: dict[str, int]
) -> float:
    """Seconds of the forward passes one job makes, from a finished run's measured
    prefill (ms for prompt_len tokens) and decode speed on this model: the evaluation
    windows, two passes over the calibration samples (activations, then the walker) and
    the interleaved latency rounds (baseline and compressed). Loading not included."""
    pre_ms = float(result.get(cat.BASELINE_PREFILL_MS.key) or 0.0)
    tok_s = float(result.get(cat.BASELINE_DECODE_TOK_S.key) or 0.0)
    prompt = float(ev.get("prompt_len", 128))
    if pre_ms <= 0 or tok_s <= 0:
        return 0.0
    per_token_s = pre_ms / 1000 / prompt
    evaluate = ev.get("eval_tokens", 4096) * per_token_s
    calibrate = 2 * cs.get("n_samples", 32) * cs.get("seq_len", 256) * per_token_s
    rounds = 1 + max(3, ev.get("repeats", 5))
    decode = 2 * ev.get("decode_tokens", 16) / tok_s
    latency = rounds * 2 * (3.25 * prompt * per_token_s + decode)
    return evaluate + calibrate + latency


def sweep_duration_text(n_jobs: int, per_job_s: float | None, basis: str, workers: int) -> str:
    """One sentence: about how long ``n_jobs`` take on ``workers`` workers, and why."""
    if per_job_s is None or per_job_s <= 0:
        return (
            f"How long {n_jobs} jobs take is not known yet: no job on this model has finished "
            "here (the first one will tell)."
        )
    w = max(1, workers)
    total = per_job_s * -(-n_jobs // w)
    return (
        f"About {fmt_duration(total)} for {n_jobs} jobs ({fmt_duration(per_job_s)} each, "
        f"{basis}; {w} worker{'s' * (w != 1)}). The jobs share one baseline: its log-probs "
        "are computed once and read from the cache by the others."
    )


def duration_estimate(model: str, n_jobs: int, ev: dict[str, int], cs: dict[str, int]) -> str:
    """The sentence for the sweep about to be queued, from this database's history."""
    sf = shell.session()
    jobs = queue.list_jobs(sf, status=SUCCEEDED, limit=500)
    workers = len(queue.alive_workers(sf))
    past = past_job_seconds(jobs, model)
    if past:
        median = float(pd.Series(past).median())
        return sweep_duration_text(
            n_jobs, median, f"the median of the last {len(past)} finished jobs on it", workers
        )
    measured = next((j.result for j in jobs if j.model == model and j.result), None)
    per_job = forward_seconds_per_job(measured, ev, cs) if measured else None
    basis = "its measured forward time x the passes one job makes, loading not included"
    return sweep_duration_text(n_jobs, per_job, basis, workers)


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


SEEN = "sens_seen"  # (sweep id, jobs ended) as the page last showed them


def ended_since_last_look(state: Any, sweep_id: str, ended: int) -> bool:
    """Whether more (or fewer) of the sweep's jobs have ended than the page last showed:
    then the whole page reruns, so that what is drawn outside the live fragment (the
    recipe that keeps the most costly units) follows too. Records what it saw."""
    seen = state.get(SEEN)
    state[SEEN] = (sweep_id, ended)
    return seen is not None and seen[0] == sweep_id and seen[1] != ended


@st.fragment(run_every=3)
def live_results(sweep_id: str) -> None:
    """Progress of the sweep and the cost per unit so far, refreshed every 3 s; the whole
    page once a job has ended since the last look."""
    jobs = queue.sweep_jobs(shell.session(), sweep_id)
    if not jobs:
        st.caption("This sweep has no jobs.")
        return
    counts = {s: sum(j.status == s for j in jobs) for s in (SUCCEEDED, RUNNING, QUEUED, FAILED)}
    if ended_since_last_look(st.session_state, sweep_id, counts[SUCCEEDED] + counts[FAILED]):
        st.rerun(scope="app")  # the sections outside this fragment (the kept recipe) too
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
