"""The Runs page's live parts: active jobs with progress and cancel, the job history."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db import queue
from db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from ui import annotations, auth, shell, tables
from ui.frames import (
    FilterError,
    elapsed_s,
    fmt_duration,
    history_frame,
    job_text,
    matches_params,
    method_label,
    parse_param_filter,
    recipe_steps,
    run_title,
)

STATUS_ICON = {
    QUEUED: ":material/schedule:",
    RUNNING: ":material/autorenew:",
    SUCCEEDED: ":material/check_circle:",
    FAILED: ":material/error:",
    CANCELLED: ":material/cancel:",
}


def _cancel(job_id: int) -> None:
    outcome = queue.request_cancel(shell.session(), job_id, user=auth.current_user())
    st.toast(f"Job #{job_id}: {shell.md_text(outcome)}")


def _cancel_button(job: Job, allowed: bool) -> None:
    """Cancel, for the job's owner or an admin; for anyone else disabled, saying why."""
    if job.cancel_requested:
        st.button("Cancelling...", key=f"cancel{job.id}", disabled=True)
        return
    st.button(
        "Cancel",
        key=f"cancel{job.id}",
        on_click=_cancel,
        args=(job.id,),
        icon=":material/stop_circle:",
        disabled=not allowed,
        help=None if allowed else f"Only {shell.md_text(job.owner)} or an admin may cancel it.",
    )


def _job_status(job: Job, position: int | None, now: float) -> None:
    if job.status == RUNNING:
        st.progress(
            min(max(job.progress or 0.0, 0.0), 1.0),
            text=f"{job.progress:.0%} · {shell.md_text(job.message, 300)}",
        )
        st.caption(
            f"running for {fmt_duration(elapsed_s(job, now))} on "
            f"{shell.md_text(job.worker_id)} (attempt {job.attempts})"
        )
    else:
        waited = fmt_duration(now - job.created_at)
        st.caption(
            f"position {position} in the queue, waiting for {waited} · "
            f"{shell.md_text(job.message, 300)}"
        )


def _job_card(job: Job, position: int | None, now: float, allowed: bool) -> None:
    with st.container(border=True):
        left, right = st.columns([5, 1], vertical_alignment="center")
        with left:
            st.markdown(f"{STATUS_ICON[job.status]} **#{job.id}** — **{job.status}**")
            st.text(f"{job.model} · {job.recipe_label} · by {job.owner}")  # never markdown
            _job_status(job, position, now)
        with right:
            _cancel_button(job, allowed)


@st.fragment(run_every=2)
def active_jobs() -> None:
    """Queued and running jobs, refreshed every 2 s without reloading the page."""
    sf = shell.session()
    now = queue.db_time(sf)  # ages by the database's clock, like every queue decision
    running = sorted(queue.list_jobs(sf, status=RUNNING), key=lambda j: j.id)
    queued = sorted(queue.list_jobs(sf, status=QUEUED), key=lambda j: j.id)
    st.subheader(f"Active ({len(running)} running, {len(queued)} queued)")
    if not running and not queued:
        st.caption("Nothing queued or running. Queue a job on New run.")
    user = auth.current_user()
    for job in running:
        _job_card(job, None, now, queue.may_change(sf, job, user))
    for i, job in enumerate(queued, start=1):
        _job_card(job, i, now, queue.may_change(sf, job, user))
    if queued and not queue.alive_workers(sf):
        st.warning("No worker is alive: start one with `python -m workers serve`.")


@st.fragment(run_every=5)
def workers() -> None:
    """Every alive worker: host, device, current job and last heartbeat."""
    rows = shell.worker_rows(shell.session())
    st.subheader(f"Workers ({len(rows)} alive)")
    if not rows:
        st.caption(
            "No worker is alive. Start one on any host that reaches the database: "
            "`python -m workers serve --db URL`."
        )
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="workers_table")


def _options(values: list[str]) -> list[str]:
    return sorted({v for v in values if v}, key=str.lower)


def _history_filters(jobs: list[Job]) -> list[Job]:
    """Model, method, status, owner, tag, any parameter, free text; archived hidden."""
    f = st.columns(5)
    models = f[0].multiselect("Model", _options([j.model for j in jobs]), key="hist_model")
    methods = f[1].multiselect(
        "Method", _options([method_label(recipe_steps(j)) for j in jobs]), key="hist_method"
    )
    statuses = f[2].multiselect("Status", [SUCCEEDED, FAILED, CANCELLED], key="hist_status")
    owners = f[3].multiselect("Owner", _options([j.owner for j in jobs]), key="hist_owner")
    tags = f[4].multiselect(
        "Tag", _options([t for j in jobs for t in j.tags]), key="hist_tag", placeholder="any"
    )
    g = st.columns([2, 2, 1])
    params = g[0].text_input(
        "Parameters",
        key="hist_params",
        placeholder="bits=4, group_size>=64, sparsity<0.6",
        help="Any recipe parameter or setting: name=value, name>=value, name<value; "
        "several separated by commas must all hold (method=gptq too).",
    )
    text = g[1].text_input("Search", key="hist_text", placeholder="name, recipe, tag, note")
    archived = g[2].toggle("Show archived", key="hist_archived")
    try:
        clauses = parse_param_filter(params)
    except FilterError as e:
        st.error(str(e))
        clauses = []
    keep = [
        j
        for j in jobs
        if (archived or not j.archived)
        and (not models or j.model in models)
        and (not methods or method_label(recipe_steps(j)) in methods)
        and (not statuses or j.status in statuses)
        and (not owners or j.owner in owners)
        and (not tags or set(tags) & set(j.tags))
        and matches_params(j, clauses)
        and (not text.strip() or text.strip().lower() in job_text(j))
    ]
    return keep


def _pick_row(shown: list[Job]) -> None:
    rows = st.session_state["jobs_history"].selection.rows
    if rows and rows[0] < len(shown):
        st.session_state["hist_open"] = shown[rows[0]].id


@st.fragment(run_every=5)
def history() -> None:
    """Every finished job: filters, a table whose rows open their run, and the selected
    run's name, tags, notes, archive / delete and clone (the table is the page's last grid)."""
    sf = shell.session()
    jobs = [j for j in queue.list_jobs(sf, limit=500) if queue.is_finished(j.status)]
    st.subheader(f"History ({len(jobs)} finished)")
    if not jobs:
        st.caption("No finished jobs yet.")
        return
    for job in [j for j in jobs if j.status == FAILED and not j.archived][:5]:
        st.error(
            f"Job #{job.id} ({shell.md_text(job.model, 300)} · "
            f"{shell.md_text(job.recipe_label, 300)}) failed: {shell.md_text(job.error)}"
        )
    shown = _history_filters(jobs)
    st.caption(
        f"{len(shown)} of {len(jobs)} shown. Select a row to name, tag, archive or clone "
        "its run; 'open' opens the run's page."
    )
    tables.history_table(
        history_frame(shown), key="jobs_history", on_select=lambda: _pick_row(shown)
    )
    by_id = {j.id: j for j in shown}
    if st.session_state.get("hist_open") not in by_id:
        st.session_state.pop("hist_open", None)
    picked = st.selectbox(
        "Run",
        list(by_id),
        index=None,
        format_func=lambda i: f"#{i}: {run_title(by_id[i])}",
        key="hist_open",
        placeholder="select a row above, or pick a run here",
    )
    if picked is not None:
        annotations.panel(by_id[picked], key="hist")
