"""The Runs page's live parts: active jobs with progress and cancel, the job history."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db import queue
from db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from ui import auth, shell, tables
from ui.frames import elapsed_s, fmt_duration, jobs_frame

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


def _delete(job_id: int) -> None:
    outcome = queue.delete_job(shell.session(), job_id, user=auth.current_user())
    st.toast(f"Job #{job_id}: {shell.md_text(outcome)}")


def _delete_control(jobs: list[Job]) -> None:
    """Delete one finished job: only those the user owns (an admin: any)."""
    who = auth.current_identity()
    mine = [j.id for j in jobs if who.admin or j.owner == who.name]
    with st.expander("Delete a finished job", icon=":material/delete:"):
        if not mine:
            st.caption("Only a job's owner or an admin may delete it; none here is yours.")
            return
        choice = st.selectbox("Job", mine, index=None, format_func=lambda i: f"#{i}", key="del_job")
        st.button(
            "Delete",
            key="del_button",
            on_click=_delete,
            args=(choice,),
            disabled=choice is None,
            icon=":material/delete:",
            help="Its result and layer rows are removed for everyone.",
        )


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


@st.fragment(run_every=5)
def history() -> None:
    """Every finished job with its status, elapsed time and readable error."""
    sf = shell.session()
    jobs = [j for j in queue.list_jobs(sf, limit=500) if queue.is_finished(j.status)]
    st.subheader(f"History ({len(jobs)} finished)")
    if not jobs:
        st.caption("No finished jobs yet.")
        return
    failed = [j for j in jobs if j.status == FAILED][:5]
    for job in failed:
        st.error(
            f"Job #{job.id} ({shell.md_text(job.model, 300)} · "
            f"{shell.md_text(job.recipe_label, 300)}) failed: {shell.md_text(job.error)}"
        )
    statuses = st.multiselect(
        "Show",
        [SUCCEEDED, FAILED, CANCELLED],
        default=[SUCCEEDED, FAILED, CANCELLED],
        key="hist_status",
    )
    shown = [j for j in jobs if j.status in statuses]
    df = jobs_frame(shown).drop(columns=["progress"])
    df.insert(2, "owner", [j.owner for j in shown])
    tables.jobs_table(df, key="jobs_history")
    _delete_control(jobs)
