"""Queue operations: submit, claim (atomic), heartbeat, finish, cancel, recover, read.

Every state change is one conditional UPDATE, so two workers never run the same job
and a result is never overwritten by recovery. Every time written or compared here is
the database server's clock (``db.clock.db_now``), evaluated inside the statement: hosts
whose clocks disagree still agree on which job is stale or timed out.

``attempts`` counts the claims that were not given back: a graceful ``requeue`` (a
worker shutting down) returns its attempt, a lost worker (stale heartbeat) keeps it.
A cancel that was requested survives every way back to the queue: the job ends
``cancelled`` instead. ``complete``, ``fail``, ``mark_cancelled``, ``requeue`` and the
heartbeats retry transient database errors (``is_transient``) with bounded backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import case, delete, exists, func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db.clock import db_now
from db.models import (
    ADMIN,
    CANCELLED,
    FAILED,
    FINISHED,
    LOCAL_OWNER,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    LayerStat,
    TextBlob,
    User,
    Worker,
)

HEARTBEAT_S = 5.0  # how often a worker heartbeats
STALE_S = 60.0  # a running job without a heartbeat for this long is recovered
WORKER_ALIVE_S = 20.0  # a worker is alive if it heartbeated this recently
MAX_ATTEMPTS = 2  # a job is requeued once after its worker was lost, then failed
RETRY_DELAYS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # transient errors, then give up

Factory = sessionmaker[Session]
T = TypeVar("T")
log = logging.getLogger(__name__)


def now() -> float:
    """This host's clock. Decides nothing in the queue (see ``db_time``); kept for callers
    that display ages and for tests that fabricate old heartbeats."""
    return time.time()


def db_time(sf: Factory) -> float:
    """The database server's clock, epoch seconds: what every queue decision uses."""
    with sf() as s:
        return float(s.execute(select(db_now())).scalar_one())


# --- transient errors ----------------------------------------------------------------

# SQLSTATEs worth another try: connection exceptions (class 08), serialization failure,
# deadlock, and the server shutting down or restarting (57P01-57P03).
_TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "57P01", "57P02", "57P03")
_TRANSIENT_SQLITE = ("database is locked", "database table is locked", "database is busy")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that a retry (on a new connection) may cure:
    SQLite busy/locked, a dropped or refused PostgreSQL connection, a serialization
    failure or deadlock. Integrity errors, bad SQL and the like are not."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    state = getattr(orig, "sqlstate", None)
    if state:
        return str(state).startswith(_TRANSIENT_SQLSTATES)
    if any(m in str(orig).lower() for m in _TRANSIENT_SQLITE):
        return True
    # psycopg raises OperationalError without a SQLSTATE when the connection is gone.
    return type(orig).__name__ == "OperationalError" and type(orig).__module__.startswith("psycopg")


def retry_transient(
    what: str,
    fn: Callable[[int], T],
    delays: tuple[float, ...] | None = None,
) -> T:
    """``fn(try_number)``, tried again after each transient error with the given delays
    (plus jitter); the last error is raised. ``try_number`` > 0 tells ``fn`` that an
    earlier try may have committed before its connection dropped. ``delays`` defaults
    to ``RETRY_DELAYS_S``."""
    delays = RETRY_DELAYS_S if delays is None else delays
    for n in range(len(delays) + 1):
        try:
            return fn(n)
        except DBAPIError as e:
            if n == len(delays) or not is_transient(e):
                raise
            delay = delays[n] * (1 + 0.25 * random.random())
            log.warning("%s: %s; retry %d in %.2f s", what, str(e.orig).strip(), n + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def submit(
    sf: Factory,
    *,
    model: str,
    recipe_label: str,
    spec_json: str,
    sweep_id: str | None = None,
    owner: str = LOCAL_OWNER,
) -> int:
    """Queue one job for ``owner`` (the signed-in user; "local" without logins)."""
    with sf.begin() as s:
        job = Job(
            created_at=db_now(),
            status=QUEUED,
            model=model,
            recipe_label=recipe_label,
            spec_json=spec_json,
            progress=0.0,
            message="queued",
            sweep_id=sweep_id,
            owner=owner,
        )
        s.add(job)
        s.flush()
        return job.id


def submit_sweep(
    sf: Factory, *, model: str, jobs: list[tuple[str, str]], owner: str = LOCAL_OWNER
) -> str:
    """Queue ``jobs`` ((recipe_label, spec_json) pairs) as one sweep of ``owner``, all or
    none; returns the sweep id they share (see core.sweep.expand_sweep)."""
    if not jobs:
        raise ValueError("a sweep needs at least one job")
    sweep_id = uuid.uuid4().hex[:16]
    with sf.begin() as s:
        for label, spec_json in jobs:
            s.add(
                Job(
                    created_at=db_now(),
                    status=QUEUED,
                    model=model,
                    recipe_label=label,
                    spec_json=spec_json,
                    progress=0.0,
                    message="queued",
                    sweep_id=sweep_id,
                    owner=owner,
                )
            )
    return sweep_id


def sweep_jobs(sf: Factory, sweep_id: str) -> list[Job]:
    """The jobs of one sweep, in submission order."""
    with sf() as s:
        return list(s.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))


def claim(sf: Factory, worker_id: str, job_id: int | None = None) -> Job | None:
    """Atomically take the oldest queued job (or ``job_id``) for ``worker_id``.

    PostgreSQL picks the row with ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite has one
    writer at a time, so the guarded UPDATE with a subquery is atomic there. A pending
    ``cancel_requested`` is kept: the worker's first heartbeat then stops the job."""
    with sf.begin() as s:
        if s.bind.dialect.name == "postgresql":
            q = select(Job.id).where(Job.status == QUEUED)
            q = q.where(Job.id == job_id) if job_id else q
            picked = s.execute(q.order_by(Job.id).limit(1).with_for_update(skip_locked=True))
            target = picked.scalar_one_or_none()
            if target is None:
                return None
        elif job_id is not None:
            target = job_id
        else:
            target = (
                select(Job.id)
                .where(Job.status == QUEUED)
                .order_by(Job.id)
                .limit(1)
                .scalar_subquery()
            )
        stmt = (
            update(Job)
            .where(Job.id == target, Job.status == QUEUED)
            .values(
                status=RUNNING,
                worker_id=worker_id,
                started_at=db_now(),
                heartbeat_at=db_now(),
                finished_at=None,
                attempts=Job.attempts + 1,
                message="claimed",
            )
            .returning(Job.id)
        )
        got = s.execute(stmt).scalar_one_or_none()
        if got is None:
            return None
        return s.get(Job, got)


def heartbeat(sf: Factory, job_id: int, worker_id: str, progress: float, message: str) -> bool:
    """Record progress; returns False if the job is no longer this worker's to run or a
    cancel was requested (the worker then stops between layers)."""

    def once(_n: int) -> bool:
        with sf.begin() as s:
            res = s.execute(
                _mine(job_id, worker_id).values(
                    heartbeat_at=db_now(), progress=progress, message=message[:500]
                )
            )
            if res.rowcount == 0:
                return False
            cancel = select(Job.cancel_requested).where(Job.id == job_id)
            return not s.execute(cancel).scalar_one()

    return retry_transient(f"heartbeat of job {job_id}", once)


def _mine(job_id: int, worker_id: str) -> Any:
    """UPDATE of ``job_id`` only while ``worker_id`` runs it."""
    return update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)


def _ended_as(s: Session, job_id: int, worker_id: str, status: str) -> bool:
    """Whether an earlier try already ended the job as ``status`` for this worker (its
    commit went through, the acknowledgement was lost with the connection)."""
    row = s.execute(select(Job.status, Job.worker_id).where(Job.id == job_id)).one_or_none()
    return row is not None and tuple(row) == (status, worker_id)


def _finish(sf: Factory, job_id: int, worker_id: str, status: str, **values: Any) -> bool:
    def once(n: int) -> bool:
        with sf.begin() as s:
            res = s.execute(
                _mine(job_id, worker_id).values(status=status, finished_at=db_now(), **values)
            )
            return res.rowcount == 1 or (n > 0 and _ended_as(s, job_id, worker_id, status))

    return retry_transient(f"{status} job {job_id}", once)


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """Identity of a run for deduplication: what determines its numbers."""
    keys = (
        "model",
        "revision",
        "recipe",
        "eval_set",
        "calib_set",
        "eval_settings",
        "calib_settings",
        "device",
    )
    core = {k: fingerprint.get(k) for k in keys}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:32]


def complete(
    sf: Factory,
    job_id: int,
    worker_id: str,
    metrics: dict[str, Any],
    layers: list[dict[str, Any]],
    fingerprint: dict[str, Any],
) -> bool:
    """Record a result and its layer rows in one transaction; False if the job is no
    longer this worker's. Transient errors are retried, so a result is not lost to a
    locked SQLite file or a dropped connection."""
    values = {
        "status": SUCCEEDED,
        "progress": 1.0,
        "message": "done",
        "result_json": json.dumps(metrics),
        "fingerprint_json": json.dumps(fingerprint),
        "fingerprint_hash": fingerprint_hash(fingerprint),
    }
    rows = [(row["name"], json.dumps(row)) for row in layers]

    def once(n: int) -> bool:
        with sf.begin() as s:
            res = s.execute(_mine(job_id, worker_id).values(finished_at=db_now(), **values))
            if res.rowcount != 1:
                return n > 0 and _ended_as(s, job_id, worker_id, SUCCEEDED)
            s.add_all(LayerStat(job_id=job_id, name=name, data_json=data) for name, data in rows)
            return True

    return retry_transient(f"complete job {job_id}", once)


def fail(sf: Factory, job_id: int, worker_id: str, error: str) -> bool:
    return _finish(sf, job_id, worker_id, FAILED, error=error, message="failed")


def mark_cancelled(sf: Factory, job_id: int, worker_id: str) -> bool:
    return _finish(sf, job_id, worker_id, CANCELLED, message="cancelled while running")


def fail_if_timed_out(sf: Factory, job_id: int, worker_id: str, timeout_s: float) -> bool:
    """End ``job_id`` as failed if it has run longer than ``timeout_s`` by the database's
    clock; True if it did (the worker then abandons the job)."""
    error = f"timed out: ran longer than the limit of {timeout_s:.0f} s"

    def once(_n: int) -> bool:
        with sf.begin() as s:
            res = s.execute(
                _mine(job_id, worker_id)
                .where(Job.started_at < db_now() - timeout_s)
                .values(status=FAILED, finished_at=db_now(), message="failed", error=error)
            )
            return res.rowcount == 1

    return retry_transient(f"timeout of job {job_id}", once)


def running_for(sf: Factory, job_id: int) -> float | None:
    """Seconds since ``job_id`` was claimed, by the database's clock (None: not running)."""
    with sf() as s:
        q = select(db_now() - Job.started_at).where(Job.id == job_id, Job.status == RUNNING)
        age = s.execute(q).scalar_one_or_none()
    return None if age is None else float(age)


def _back_to_queue(reason: str, *, graceful: bool) -> dict[str, Any]:
    """UPDATE values that put a running job back in the queue, or end it ``cancelled`` if
    a cancel is pending. A graceful return gives its attempt back."""
    cancelled = Job.cancel_requested.is_(True)
    values: dict[str, Any] = {
        "status": case((cancelled, CANCELLED), else_=QUEUED),
        "worker_id": case((cancelled, Job.worker_id), else_=None),
        "finished_at": case((cancelled, db_now()), else_=None),
        "message": case(
            (cancelled, "cancelled (requested before the worker stopped)"), else_=reason
        ),
    }
    if graceful:
        values["attempts"] = case((Job.attempts > 0, Job.attempts - 1), else_=0)
    return values


def requeue(sf: Factory, job_id: int, worker_id: str, reason: str) -> bool:
    """Give a running job back to the queue (its worker is shutting down): not counted as
    an attempt; a job with a pending cancel ends ``cancelled`` instead."""

    def once(n: int) -> bool:
        with sf.begin() as s:
            stmt = _mine(job_id, worker_id).values(
                progress=0.0, **_back_to_queue(reason[:500], graceful=True)
            )
            if s.execute(stmt).rowcount == 1:
                return True
            return (
                n > 0
                and s.execute(
                    select(Job.id).where(Job.id == job_id, Job.status.in_((QUEUED, CANCELLED)))
                ).scalar_one_or_none()
                is not None
            )

    return retry_transient(f"requeue job {job_id}", once)


def requeue_worker_jobs(sf: Factory, worker_id: str, reason: str) -> list[int]:
    """Give back every job a stopping worker holds (covers a signal between claim and run)."""
    with sf.begin() as s:
        ids = list(
            s.scalars(select(Job.id).where(Job.worker_id == worker_id, Job.status == RUNNING))
        )
    return [j for j in ids if requeue(sf, j, worker_id, reason)]


# --- permissions ---------------------------------------------------------------------


def _is_admin(user: str) -> Any:
    """SQL: ``user`` has the admin role."""
    return exists().where(User.name == user, User.role == ADMIN)


def _may_change(user: str) -> Any:
    """SQL: the job is ``user``'s, or ``user`` is an admin."""
    return or_(Job.owner == user, _is_admin(user))


def may_change(sf: Factory, job: Job, user: str) -> bool:
    """Whether ``user`` may cancel or delete ``job``: its owner or an admin."""
    if job.owner == user:
        return True
    with sf() as s:
        return bool(s.execute(select(_is_admin(user))).scalar())


def refusal(owner: str) -> str:
    return f"refused: only {owner} (who queued it) or an admin may change this job"


def _why_not(sf: Factory, job_id: int, finished_ok: bool) -> str:
    """Why a guarded UPDATE or DELETE of ``job_id`` matched nothing."""
    job = get_job(sf, job_id)
    if job is None:
        return "no such job"
    if not finished_ok and job.status in FINISHED:
        return "already finished"
    if finished_ok and job.status not in FINISHED:
        return "still active: cancel it first"
    return refusal(job.owner)


def request_cancel(sf: Factory, job_id: int, user: str = LOCAL_OWNER) -> str:
    """Cancel a queued job at once, or ask its worker to stop a running one, if ``user``
    owns it or is an admin (else a "refused: ..." message). One UPDATE, so a job that
    moves between queued and running meanwhile is still caught."""
    queued = Job.status == QUEUED
    with sf.begin() as s:
        new_status = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_((QUEUED, RUNNING)), _may_change(user))
            .values(
                status=case((queued, CANCELLED), else_=Job.status),
                finished_at=case((queued, db_now()), else_=Job.finished_at),
                cancel_requested=True,
                message=case((queued, "cancelled before it started"), else_="cancel requested"),
            )
            .returning(Job.status)
        ).scalar_one_or_none()
    if new_status is None:
        return _why_not(sf, job_id, finished_ok=False)
    return "cancelled" if new_status == CANCELLED else "cancel requested"


def delete_job(sf: Factory, job_id: int, user: str = LOCAL_OWNER) -> str:
    """Delete a finished job and its layer rows if ``user`` owns it or is an admin;
    returns "deleted" or why not."""
    with sf.begin() as s:
        s.execute(
            delete(LayerStat).where(
                LayerStat.job_id == job_id,
                select(Job.id)
                .where(Job.id == job_id, Job.status.in_(FINISHED), _may_change(user))
                .exists(),
            )
        )
        gone = s.execute(
            delete(Job).where(Job.id == job_id, Job.status.in_(FINISHED), _may_change(user))
        ).rowcount
    return "deleted" if gone == 1 else _why_not(sf, job_id, finished_ok=True)


# --- run annotations: name, tags, notes, archive (issue 18) ---------------------------

MAX_NAME = 200  # the column's length
MAX_TAG, MAX_TAGS = 40, 20
MAX_NOTES = 20_000


class AnnotationError(ValueError):
    """A name, tag or note the database would not keep as typed; says what to change."""


def clean_name(name: str | None) -> str | None:
    """A run's name, stripped; None (the recipe label stands in) when empty."""
    text = " ".join((name or "").split())
    if len(text) > MAX_NAME:
        raise AnnotationError(f"a run name has at most {MAX_NAME} characters ({len(text)} given)")
    return text or None


def clean_tags(tags: list[str] | str) -> list[str]:
    """Tags as stored: stripped, lower-cased, without duplicates, in the order given; a
    string is split at commas."""
    parts = tags.split(",") if isinstance(tags, str) else list(tags)
    out: list[str] = []
    for raw in parts:
        tag = " ".join(str(raw).split()).lower()
        if not tag or tag in out:
            continue
        if len(tag) > MAX_TAG:
            raise AnnotationError(f"tag {tag[:20]!r}... is longer than {MAX_TAG} characters")
        out.append(tag)
    if len(out) > MAX_TAGS:
        raise AnnotationError(f"a run has at most {MAX_TAGS} tags ({len(out)} given)")
    return out


def _annotate(sf: Factory, job_id: int, user: str, finished_only: bool, **values: Any) -> str:
    """One guarded UPDATE of annotation columns: "saved", or why not."""
    where = [Job.id == job_id, _may_change(user)]
    if finished_only:
        where.append(Job.status.in_(FINISHED))
    with sf.begin() as s:
        n = s.execute(update(Job).where(*where).values(**values)).rowcount
    if n == 1:
        return "saved"
    if finished_only:
        return _why_not(sf, job_id, finished_ok=True)
    job = get_job(sf, job_id)
    return "no such job" if job is None else refusal(job.owner)


def rename_job(sf: Factory, job_id: int, name: str | None, user: str = LOCAL_OWNER) -> str:
    """Name a run (empty: no name) if ``user`` owns it or is an admin."""
    return _annotate(sf, job_id, user, False, name=clean_name(name))


def set_tags(sf: Factory, job_id: int, tags: list[str] | str, user: str = LOCAL_OWNER) -> str:
    """Replace a run's tags (see ``clean_tags``) if ``user`` owns it or is an admin."""
    cleaned = clean_tags(tags)
    return _annotate(sf, job_id, user, False, tags_json=json.dumps(cleaned) if cleaned else None)


def clean_notes(notes: str | None) -> str | None:
    text = (notes or "").strip()
    if len(text) > MAX_NOTES:
        raise AnnotationError(f"notes have at most {MAX_NOTES} characters ({len(text)} given)")
    return text or None


def set_notes(sf: Factory, job_id: int, notes: str | None, user: str = LOCAL_OWNER) -> str:
    """Replace a run's notes if ``user`` owns it or is an admin."""
    return _annotate(sf, job_id, user, False, notes=clean_notes(notes))


def annotate(
    sf: Factory,
    job_id: int,
    name: str | None,
    tags: list[str] | str,
    notes: str | None,
    user: str = LOCAL_OWNER,
) -> str:
    """Name, tags and notes at once (all checked before anything is written)."""
    cleaned = clean_tags(tags)
    values = {
        "name": clean_name(name),
        "tags_json": json.dumps(cleaned) if cleaned else None,
        "notes": clean_notes(notes),
    }
    return _annotate(sf, job_id, user, False, **values)


def archive_job(sf: Factory, job_id: int, user: str = LOCAL_OWNER) -> str:
    """Hide a finished run from the default lists (kept, restorable): "saved" or why not."""
    return _annotate(sf, job_id, user, True, archived=True)


def restore_job(sf: Factory, job_id: int, user: str = LOCAL_OWNER) -> str:
    """Bring an archived run back into the default lists: "saved" or why not."""
    return _annotate(sf, job_id, user, True, archived=False)


def _recovery_values(attempts: int, wid: str | None, cancel: bool, stale_s: float) -> dict:
    """What a job whose worker was lost becomes: cancelled if a cancel was pending,
    requeued while it has attempts left, else failed with the reason."""
    if cancel:
        return {
            "status": CANCELLED,
            "finished_at": db_now(),
            "message": f"cancelled (requested; worker {wid} stopped heartbeating)",
        }
    if attempts < MAX_ATTEMPTS:
        return {
            "status": QUEUED,
            "worker_id": None,
            "progress": 0.0,
            "message": f"requeued: worker {wid} stopped heartbeating",
        }
    return {
        "status": FAILED,
        "finished_at": db_now(),
        "message": "failed",
        "error": f"worker lost {attempts} times (no heartbeat for {stale_s:.0f} s); "
        "the job may exhaust memory or crash the worker",
    }


def recover_stale(sf: Factory, stale_s: float = STALE_S) -> list[int]:
    """Requeue (once) or fail running jobs whose worker stopped heartbeating for
    ``stale_s`` seconds of the database's clock; any worker, the app or the CLI may call
    it, at the same time too: each job is taken by exactly one conditional UPDATE."""
    stale = (Job.status == RUNNING, Job.heartbeat_at < db_now() - stale_s)
    recovered = []
    with sf.begin() as s:
        rows = s.execute(
            select(Job.id, Job.attempts, Job.worker_id, Job.cancel_requested).where(*stale)
        ).all()
        for job_id, attempts, wid, cancel in rows:
            values = _recovery_values(attempts, wid, bool(cancel), stale_s)
            cond = (Job.id == job_id, Job.attempts == attempts, *stale)
            if s.execute(update(Job).where(*cond).values(**values)).rowcount:
                recovered.append(job_id)
    return recovered


# --- workers -------------------------------------------------------------------------


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def register_worker(sf: Factory, worker_id: str, device: str | None = None) -> None:
    """Record a starting worker (host, pid, and the device it computes on if given)."""
    with sf.begin() as s:
        s.add(
            Worker(
                id=worker_id,
                host=socket.gethostname()[:200],
                pid=os.getpid(),
                device=device,
                started_at=db_now(),
                heartbeat_at=db_now(),
            )
        )


def worker_heartbeat(sf: Factory, worker_id: str, current_job_id: int | None) -> None:
    def once(_n: int) -> None:
        with sf.begin() as s:
            s.execute(
                update(Worker)
                .where(Worker.id == worker_id)
                .values(heartbeat_at=db_now(), current_job_id=current_job_id, stopped=False)
            )

    retry_transient(f"heartbeat of worker {worker_id}", once)


def worker_stopped(sf: Factory, worker_id: str) -> None:
    def once(_n: int) -> None:
        with sf.begin() as s:
            s.execute(
                update(Worker)
                .where(Worker.id == worker_id)
                .values(stopped=True, current_job_id=None)
            )

    retry_transient(f"stop of worker {worker_id}", once)


def alive_workers(sf: Factory, max_age: float = WORKER_ALIVE_S) -> list[Worker]:
    """Workers that heartbeated within ``max_age`` seconds of the database's clock."""
    with sf() as s:
        q = select(Worker).where(
            Worker.stopped.is_(False), Worker.heartbeat_at > db_now() - max_age
        )
        return list(s.scalars(q))


# --- reading -------------------------------------------------------------------------


def queue_counts(sf: Factory) -> dict[str, int]:
    with sf() as s:
        rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: n for status, n in rows}


def list_jobs(
    sf: Factory, status: str | None = None, limit: int = 500, archived: bool | None = None
) -> list[Job]:
    """Newest first; ``archived`` False/True keeps only runs (not) archived, None all."""
    with sf() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
        if archived is not None:
            q = q.where(Job.archived == archived)
        return list(s.scalars(q))


def get_job(sf: Factory, job_id: int) -> Job | None:
    with sf() as s:
        return s.get(Job, job_id)


def finished_runs(sf: Factory) -> list[Job]:
    with sf() as s:
        return list(s.scalars(select(Job).where(Job.status == SUCCEEDED).order_by(Job.id)))


def layer_stats(sf: Factory, job_id: int) -> list[LayerStat]:
    with sf() as s:
        return list(
            s.scalars(select(LayerStat).where(LayerStat.job_id == job_id).order_by(LayerStat.id))
        )


def is_finished(status: str) -> bool:
    return status in FINISHED


# --- uploaded texts ------------------------------------------------------------------


def store_text(sf: Factory, filename: str, text: str, owner: str = LOCAL_OWNER) -> str:
    """Store a validated upload once (by content hash; the first uploader owns it);
    returns its set name."""
    raw = text.encode("utf-8")
    sha = hashlib.sha256(raw).hexdigest()
    name = f"upload:{sha[:12]}"
    with sf.begin() as s:
        if s.get(TextBlob, name) is None:
            s.add(
                TextBlob(
                    name=name,
                    filename=filename,
                    sha256=sha,
                    n_bytes=len(raw),
                    text=text,
                    created_at=db_now(),
                    owner=owner,
                )
            )
    return name


def get_text(sf: Factory, name: str) -> TextBlob | None:
    with sf() as s:
        return s.get(TextBlob, name)


def text_exists(sf: Factory) -> Callable[[str], bool]:
    """The job builder's upload check (``runs.spec.build_spec(text_exists=...)``) against
    this database: whether an uploaded text set is stored here."""
    return lambda name: get_text(sf, name) is not None


def text_bytes(sf: Factory) -> Callable[[str], int | None]:
    """The size of an uploaded text set stored here (None: not an upload here), for the
    job builder's check that a calibration set holds one window
    (``runs.spec.build_spec(text_bytes=...)``)."""

    def size(name: str) -> int | None:
        blob = get_text(sf, name)
        return int(blob.n_bytes) if blob is not None else None

    return size


def list_texts(sf: Factory) -> list[TextBlob]:
    with sf() as s:
        return list(s.scalars(select(TextBlob).order_by(TextBlob.created_at.desc())))
