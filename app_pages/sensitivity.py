"""Sensitivity: quantize one layer (or block) at a time, chart what each costs in perplexity,
then keep the most sensitive ones in higher precision with one click."""

from __future__ import annotations

import streamlit as st

from db import queue
from ui import auth, forms, sensitivity_view, shell
from ui.sensitivity_view import (
    DEFAULT_HIGH_STEP,
    PlanError,
    keep_recipe,
    most_sensitive,
    plan_units,
)
from ui.submit import submit_sensitivity_sweep

sf = shell.session()
st.title("Sensitivity")
st.caption(
    "Which layers can take low precision? A sweep queues one job per layer (or per block), "
    "each quantizing only that one; the perplexity each job loses ranks the layers."
)


def _data_settings() -> tuple[str, str, object, object]:
    """Calibration and evaluation sets, and their settings."""
    calib, eval_set = forms.data_pickers(sf, "sens_calib", "sens_eval", upload_calib=False)
    ev, cs = forms.eval_settings(prefix="sens_")
    return calib, eval_set, ev, cs


def _queue(model: str, step: dict, units: list, data: tuple) -> str | None:
    """The queue button; the new sweep's id once queued."""
    if not st.button("Queue sensitivity sweep", type="primary", icon=":material/play_arrow:"):
        return None
    try:
        sweep_id, n_jobs = submit_sensitivity_sweep(
            sf, model, step, units, *data, owner=auth.current_user()
        )
    except ValueError as e:
        st.error(f"Not queued: {e}")
        return None
    st.session_state["sens_sweep"] = sweep_id
    st.session_state["sens_flash"] = f"Queued {n_jobs} jobs as sweep {sweep_id[:8]}."
    return sweep_id


def _new_sweep(expanded: bool) -> str | None:
    """The form that queues a sweep; returns the new sweep's id when one was queued."""
    with st.expander("Start a sweep", expanded=expanded, icon=":material/add_circle:"):
        st.markdown("**Model**")
        model = forms.model_picker(prefix="sens_")
        st.markdown("**What each job does to its one unit**")
        step = forms.step_editor(0, prefix="sens_")
        unit = st.radio(
            "Sweep over",
            ["layer", "block"],
            format_func={"layer": "each linear layer", "block": "each decoder block"}.get,
            horizontal=True,
            key="sens_unit",
        )
        data = _data_settings()
        if not model:
            st.info("Choose a model above.")
            return None
        try:
            units = plan_units(model, step, unit)
        except PlanError as e:
            st.error(f"Cannot plan the sweep: {e}")
            return None
        st.caption(
            f"{len(units)} job(s), one per {unit}: "
            + ", ".join(u.label for u in units[:6])
            + (", ..." if len(units) > 6 else "")
        )
        st.caption(sensitivity_view.duration_estimate(model, len(units), data[2], data[3]))
        return _queue(model, step, units, data)


def _sweeps() -> dict[str, list]:
    return sensitivity_view.sensitivity_sweeps(queue.list_jobs(sf, limit=100_000))


def _keep_recipe(sweep_id: str) -> None:
    """N most costly units in 8 bits, the rest as swept; one click pre-fills New run.
    Reads the sweep as it is now (full reruns only, not the live fragment)."""
    jobs = queue.sweep_jobs(sf, sweep_id)
    points = sensitivity_view.points_of(jobs)
    finished = [p for p in points if p["delta_ppl"] == p["delta_ppl"]]
    st.subheader("Keep the most sensitive in higher precision")
    if not finished:
        st.caption("Once jobs finish, the most costly units can be kept in 8 bits here.")
        return
    c1, c2 = st.columns([1, 2])
    n_keep = c1.number_input(
        "Units to keep in higher precision",
        0,
        len(finished),
        min(3, len(finished)),
        key="sens_keep",
    )
    keep = most_sensitive(points, int(n_keep))
    try:
        base, steps = keep_recipe(jobs, keep)
    except ValueError as e:
        st.error(str(e))
        return
    c2.caption(
        f"{sensitivity_view.step_name(base)} everywhere except {len(keep)} unit(s), which get "
        f"{sensitivity_view.step_name(DEFAULT_HIGH_STEP)}: " + (", ".join(keep) if keep else "none")
    )
    with st.expander("The recipe"):
        st.json(steps)
    # A link, not a button with st.switch_page (see annotations.clone_link): the recipe
    # shown is kept for New run on every run of this page.
    sensitivity_view.prefill_kept_recipe(st.session_state, jobs, steps, len(keep))
    st.page_link(
        shell.NEW_RUN,
        label="Open this recipe in New run",
        icon=":material/edit_note:",
        query_params={forms.PREFILL_PARAM: sensitivity_view.PREFILL_SLOT},
    )


def _results(sweeps: dict[str, list]) -> None:
    st.subheader("Results")
    flash = st.session_state.pop("sens_flash", None)
    if flash:
        st.success(flash)
    if st.session_state.get("sens_sweep") not in sweeps:
        st.session_state["sens_sweep"] = next(iter(sweeps))
    sweep_id = st.selectbox(
        "Sweep",
        list(sweeps),
        format_func=lambda s: sensitivity_view.sweep_title(sweeps[s]),
        key="sens_sweep",
    )
    sensitivity_view.live_results(sweep_id)
    _keep_recipe(sweep_id)


# With sweeps, their results come first: the form below may take seconds the first time
# (it reads the model's layer names), and it must not hold the results back.
sweeps = _sweeps()
if sweeps:
    _results(sweeps)
    st.divider()
    if _new_sweep(expanded=False):
        st.rerun()  # show the new sweep at once
else:
    if _new_sweep(expanded=True):
        st.rerun()
    st.info(
        "No sensitivity sweep yet: start one above. On the demo model a per-block sweep of "
        "4-bit RTN is four short jobs."
    )
