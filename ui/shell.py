"""What every page shares: the database session factory, the page list, the sidebar."""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

from db import queue
from db.session import default_url, session_factory
from ui import auth
from ui.frames import fmt_duration
from ui.worker import LocalWorker, maybe_recover

# (file, title, icon); the first is the default page.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("app_pages/home.py", "Home", ":material/home:"),
    ("app_pages/new_run.py", "New run", ":material/add_circle:"),
    ("app_pages/runs.py", "Runs", ":material/pending_actions:"),
    ("app_pages/compare.py", "Compare", ":material/scatter_plot:"),
    ("app_pages/weights.py", "Weights", ":material/bar_chart:"),
    ("app_pages/leaderboard.py", "Leaderboard", ":material/leaderboard:"),
    ("app_pages/run.py", "Run", ":material/description:"),
    ("app_pages/outliers.py", "Outliers", ":material/troubleshoot:"),
    ("app_pages/sensitivity.py", "Sensitivity", ":material/tune:"),
    ("app_pages/search.py", "Search", ":material/manage_search:"),
    ("app_pages/concepts.py", "Concepts", ":material/school:"),
)
HOME, NEW_RUN, RUNS, COMPARE, WEIGHTS = (p[0] for p in PAGES[:5])
LEADERBOARD, RUN, OUTLIERS, SENSITIVITY, SEARCH, CONCEPTS = (p[0] for p in PAGES[5:])


@st.cache_resource(show_spinner=False)
def _factory(url: str) -> queue.Factory:
    return session_factory(url)


def db_url() -> str:
    return default_url()


def session() -> queue.Factory:
    """The session factory of the configured database (one engine per URL per process)."""
    return _factory(db_url())


def pages() -> list[st.Page]:
    return [
        st.Page(path, title=title, icon=icon, default=(i == 0))
        for i, (path, title, icon) in enumerate(PAGES)
    ]


MAX_QUERY_IDS = 20  # runs a link may open side by side
MAX_QUERY_CHARS = 1000  # a longer query parameter is ignored whole
_ID = re.compile(r"[0-9]{1,12}")  # ASCII digits only: "²".isdigit() is True, int("²") fails


def query_ids(value: str | None) -> list[int]:
    """Run ids from a query parameter such as ``?run=12`` or ``?run=12,15``: junk skipped,
    at most ``MAX_QUERY_IDS`` of them, nothing from an over-long value."""
    value = value or ""
    if len(value) > MAX_QUERY_CHARS:
        return []
    out: list[int] = []
    for part in value.replace(" ", ",").split(","):
        part = part.strip()
        if _ID.fullmatch(part) and int(part) not in out:
            out.append(int(part))
            if len(out) == MAX_QUERY_IDS:
                break
    return out


# Markdown that could turn stored text into links, images, HTML, colours, maths or layout.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]()!<>#$~|{}])")


def md_text(value: object, limit: int = 2000) -> str:
    """Stored, user-controlled text (labels, model ids, errors, hosts, origins) made safe
    to put inside markdown (captions, alerts, toasts): every markdown symbol escaped, one
    line, at most ``limit`` characters. Where no markdown is needed, use ``st.text``."""
    text = " ".join(str(value).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", text)


def run_page_link(ids: list[int], label: str | None = None, *, where: Any = st) -> None:
    """A link to the Run page showing ``ids`` (one run, or several side by side)."""
    text = label or (f"Open run #{ids[0]}" if len(ids) == 1 else f"Compare {len(ids)} runs")
    where.page_link(
        RUN,
        label=text,
        icon=":material/open_in_new:",
        query_params={"run": ",".join(map(str, ids))},
    )


def _short_url(url: str) -> str:
    if url.startswith("sqlite"):
        return "SQLite " + url.split("///", 1)[-1]
    return url.split("@")[-1]  # never show a password


def worker_rows(sf: queue.Factory) -> list[dict[str, Any]]:
    """Each alive worker: host, pid, device, what it runs, and its last heartbeat's age
    by the database's clock (hosts' clocks may disagree; the database decides)."""
    now = queue.db_time(sf)
    return [
        {
            "worker": w.id,
            "host": w.host,
            "pid": w.pid,
            "device": w.device or "?",
            "job": f"#{w.current_job_id}" if w.current_job_id is not None else "idle",
            "heartbeat": f"{fmt_duration(max(0.0, now - w.heartbeat_at))} ago",
            "up": fmt_duration(max(0.0, now - w.started_at)),
        }
        for w in sorted(queue.alive_workers(sf), key=lambda w: (w.host, w.id))
    ]


def worker_headline(n_alive: int, busy: int, local: LocalWorker, pid_running: bool) -> str:
    """The sidebar's one line on workers. A local worker this app just started counts as
    starting (not "no worker alive") until it heartbeats, while its process lives."""
    if n_alive:
        return f":green[●] **{n_alive} worker{'s' * (n_alive != 1)} alive** ({busy} busy)"
    if local.state in ("started", "starting") and pid_running:
        return f":orange[●] **local worker starting** (pid {local.pid}): queued jobs start soon"
    return ":red[●] **no worker alive**"


def _pid_running(pid: int | None) -> bool:
    import psutil

    return pid is not None and psutil.pid_exists(pid)


STATUS_EVERY_S = 2  # the sidebar's counts refresh this often (two cheap queries)


@st.fragment(run_every=STATUS_EVERY_S)
def _live_status(url: str, local: LocalWorker) -> None:
    sf = _factory(url)
    maybe_recover(sf, url)  # throttled; also runs while a page only reruns its fragments
    alive = worker_rows(sf)
    counts = queue.queue_counts(sf)
    busy = sum(1 for w in alive if w["job"] != "idle")
    headline = worker_headline(len(alive), busy, local, _pid_running(local.pid))
    st.markdown(headline)
    for w in alive:
        st.caption(
            f"{md_text(w['host'])} · {md_text(w['device'])} · {w['job']} · beat {w['heartbeat']}"
        )
    if headline.startswith(":red"):
        if local.state in ("stuck", "failed"):
            st.caption(local.message)
        st.caption("Start one with `python -m workers serve`; queued jobs wait until then.")
    st.markdown(
        f"Jobs: **{counts.get('queued', 0)}** queued · **{counts.get('running', 0)}** running"
    )


FLASH = "_queued_flash"  # the message of what was just queued, shown after the rerun


def queued(message: str, link_label: str = "Follow its progress on Runs") -> None:
    """After a queue action: rerun the whole app at once, so that the sidebar's counts,
    drawn before the page, already include the new jobs (they would otherwise say "0
    queued" until the next refresh); the page shows ``message`` on that rerun
    (:func:`show_queued`). Does not return."""
    st.session_state[FLASH] = (message, link_label)
    st.rerun()


def show_queued() -> None:
    """The message :func:`queued` left, once, with a link to the Runs page."""
    item = st.session_state.pop(FLASH, None)
    if item:
        st.success(item[0])
        st.page_link(RUNS, label=item[1], icon=":material/arrow_forward:")


def sidebar(local: LocalWorker) -> None:
    url = db_url()
    with st.sidebar:
        auth.account(session())
        _live_status(url, local)  # one status: a starting worker is not "none alive"
        st.caption(f"Database: {md_text(_short_url(url))}")
