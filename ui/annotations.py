"""A run's identity on every page that shows one: its name, tags and notes (editable by
its owner or an admin), archive / restore / delete, and "Clone into New run"."""

from __future__ import annotations

from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException

from db import queue
from db.models import Job
from ui import auth, forms, shell
from ui.frames import recipe_details, recipe_steps, run_title, tags_text

CLONE_PARAM = "clone"  # New run's query parameter: the run to pre-fill from


def clone_into_new_run(job: Any) -> None:
    """Pre-fill New run (on its next run) with this run's model, recipe and settings."""
    spec = job.spec or {}
    forms.prefill_new_run(
        st.session_state,
        model=job.model,
        steps=recipe_steps(job),
        source=f"run #{job.id} ({run_title(job)})",
        calib=spec.get("calib"),
        eval_set=spec.get("eval_set"),
        eval=spec.get("eval"),
        calib_settings=spec.get("calib_settings"),
    )


def clone_link(job: Any) -> None:
    """A link to New run with ``?clone=<id>``. A link, not a button with st.switch_page:
    a page switched to from the server while the old page's timed fragments (the Runs
    history) still tick could be left blank, when a tick arriving mid-switch reran the
    old page's fragment instead. The browser navigates a link itself, as the sidebar."""
    st.page_link(
        shell.NEW_RUN,
        label="Clone into New run",
        icon=":material/content_copy:",
        help="Opens New run with this run's model, recipe and settings filled in.",
        query_params={CLONE_PARAM: str(job.id)},
    )


def prefill_from_clone_param(sf: Any, params: Any) -> str | None:
    """New run's ``clone`` query parameter (forms.pop_param): pre-fill from that run.
    Returns why not, None when done or when there was no parameter."""
    raw = forms.pop_param(params, CLONE_PARAM)
    if raw is None:
        return None
    text = raw.strip().lstrip("#")
    if len(text) > forms.MAX_PARAM_CHARS or not text.isdigit():
        shown = shell.md_text(text[: forms.MAX_PARAM_CHARS])
        return f"clone={shown} is not a run number: nothing was pre-filled."
    job = queue.get_job(sf, int(text))
    if job is None:
        return f"There is no run #{int(text)} (deleted?): nothing was pre-filled."
    clone_into_new_run(job)
    return None


def summary(job: Any) -> None:
    """Name, full recipe, tags and notes, as text (never markdown: they are user input)."""
    st.text(f"{run_title(job)}  ·  {recipe_details(recipe_steps(job))}")
    if getattr(job, "tags", None):
        st.caption(f"Tags: {shell.md_text(tags_text(job))}")
    if getattr(job, "notes", None):
        st.text(f"Notes: {job.notes}")
    if getattr(job, "archived", False):
        st.caption("Archived: hidden from lists until restored.")


def _rerun_here() -> None:
    """Rerun the fragment this click ran in (Runs' history), else the whole app (Compare).

    Not the whole app from inside a timed fragment: an app rerun raised from the history's
    fragment run could clear its Tag filter in the browser (CI, under load). Streamlit
    refuses a fragment rerun outside a fragment run (a whole-page run), and then the app
    reruns."""
    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()


def _say(job_id: int, outcome: str) -> None:
    """A toast and a rerun (the lists it reruns show the change) when done, else why not."""
    if outcome in ("saved", "deleted"):
        st.toast(f"Run #{job_id}: {outcome}")
        _rerun_here()
    st.error(f"Run #{job_id}: {shell.md_text(outcome)}")


def _save(job: Job, name: str, tags: str, notes: str) -> None:
    try:
        outcome = queue.annotate(
            shell.session(), job.id, name, tags, notes, user=auth.current_user()
        )
    except queue.AnnotationError as e:
        st.error(f"Not saved: {shell.md_text(e)}")
        return
    _say(job.id, outcome)


def _edit_form(job: Job, allowed: bool, key: str) -> None:
    with st.form(f"annotate_{key}_{job.id}", border=False):
        name = st.text_input(
            "Name", job.name or "", max_chars=queue.MAX_NAME, placeholder=job.recipe_label
        )
        tags = st.text_input("Tags (comma-separated)", tags_text(job), placeholder="paper, int4")
        notes = st.text_area("Notes", job.notes or "", height=80)
        saved = st.form_submit_button(
            "Save name, tags and notes",
            disabled=not allowed,
            help=None if allowed else queue.refusal(job.owner),
        )
    if saved:
        _save(job, name, tags, notes)


def _lifecycle(job: Job, allowed: bool, key: str) -> None:
    sf, user = shell.session(), auth.current_user()
    why = None if allowed else queue.refusal(job.owner)
    c1, c2, c3 = st.columns(3)
    if not job.archived:
        if c1.button("Archive", key=f"arch_{key}_{job.id}", disabled=not allowed, help=why):
            _say(job.id, queue.archive_job(sf, job.id, user=user))
    elif c1.button("Restore", key=f"rest_{key}_{job.id}", disabled=not allowed, help=why):
        _say(job.id, queue.restore_job(sf, job.id, user=user))
    if c2.button("Delete", key=f"del_{key}_{job.id}", disabled=not allowed, help=why):
        _say(job.id, queue.delete_job(sf, job.id, user=user))
    with c3:
        clone_link(job)


def panel(job: Job, key: str) -> None:
    """The run's name, tags and notes with an editor, archive / restore / delete, clone."""
    allowed = queue.may_change(shell.session(), job, auth.current_user())
    with st.container(border=True):
        st.markdown(f"**Run #{job.id}** · {shell.md_text(job.status)}")
        summary(job)
        _edit_form(job, allowed, key)
        if queue.is_finished(job.status):
            _lifecycle(job, allowed, key)
        else:
            clone_link(job)
        if job.status == "succeeded":
            shell.run_page_link([job.id])
