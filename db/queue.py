"""Queue operations: submit, claim (atomic), heartbeat, finish, cancel, recover, read.

Every state change is one conditional UPDATE, so two workers never run the same job
and a result is never overwritten by recovery.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    CANCELLED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    LayerStat,
    TextBlob,
    Worker,
)

HEARTBEAT_S = 5.0  # how often a worker heartbeats
STALE_S = 60.0  # a running job without a heartbeat for this long is recovered
WORKER_ALIVE_S = 20.0  # a worker is alive if it heartbeated this recently
MAX_ATTEMPTS = 2  # a job is requeued once after its worker was lost, then failed

Factory = sessionmaker[Session]


def now() -> float:
    return time.time()


def submit(
    sf: Factory,
    *,
    model: str,
    recipe_label: str,
    spec_json: str,
    sweep_id: str | None = None,
) -> int:
    with sf.begin() as s:
        job = Job(
            created_at=now(),
            status=QUEUED,
            model=model,
            recipe_label=recipe_label,
            spec_json=spec_json,
            progress=0.0,
            message="queued",
            sweep_id=sweep_id,
        )
        s.add(job)
        s.flush()
        return job.id


def submit_sweep(sf: Factory, *, model: str, jobs: list[tuple[str, str]]) -> str:
    """Queue ``jobs`` ((recipe_label, spec_json) pairs) as one sweep, all or none;
    returns the sweep id they share (see core.sweep.expand_sweep)."""
    if not jobs:
        raise ValueError("a sweep needs at least one job")
    sweep_id = uuid.uuid4().hex[:16]
    with sf.begin() as s:
        for label, spec_json in jobs:
            s.add(
                Job(
                    created_at=now(),
                    status=QUEUED,
                    model=model,
                    recipe_label=label,
                    spec_json=spec_json,
                    progress=0.0,
                    message="queued",
                    sweep_id=sweep_id,
                )
            )
    return sweep_id


def sweep_jobs(sf: Factory, sweep_id: str) -> list[Job]:
    """The jobs of one sweep, in submission order."""
    with sf() as s:
        return list(s.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))


def claim(sf: Factory, worker_id: str, job_id: int | None = None) -> Job | None:
    """Atomically take the oldest queued job (or ``job_id``) for ``worker_id``."""
    t = now()
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
                started_at=t,
                heartbeat_at=t,
                attempts=Job.attempts + 1,
                cancel_requested=False,
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
    with sf.begin() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
            .values(heartbeat_at=now(), progress=progress, message=message[:500])
        )
        if res.rowcount == 0:
            return False
        return not s.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one()


def _finish(sf: Factory, job_id: int, worker_id: str, **values: Any) -> bool:
    with sf.begin() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
            .values(finished_at=now(), **values)
        )
        return res.rowcount == 1


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
    with sf.begin() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
            .values(
                status=SUCCEEDED,
                finished_at=now(),
                progress=1.0,
                message="done",
                result_json=json.dumps(metrics),
                fingerprint_json=json.dumps(fingerprint),
                fingerprint_hash=fingerprint_hash(fingerprint),
            )
        )
        if res.rowcount != 1:
            return False
        s.add_all(
            LayerStat(job_id=job_id, name=row["name"], data_json=json.dumps(row)) for row in layers
        )
        return True


def fail(sf: Factory, job_id: int, worker_id: str, error: str) -> bool:
    return _finish(sf, job_id, worker_id, status=FAILED, error=error, message="failed")


def mark_cancelled(sf: Factory, job_id: int, worker_id: str) -> bool:
    return _finish(sf, job_id, worker_id, status=CANCELLED, message="cancelled while running")


def requeue(sf: Factory, job_id: int, worker_id: str, reason: str) -> bool:
    """Give a running job back to the queue (its worker is shutting down)."""
    with sf.begin() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == RUNNING)
            .values(status=QUEUED, worker_id=None, progress=0.0, message=reason)
        )
        return res.rowcount == 1


def requeue_worker_jobs(sf: Factory, worker_id: str, reason: str) -> list[int]:
    """Give back every job a stopping worker holds (covers a signal between claim and run)."""
    with sf.begin() as s:
        ids = list(
            s.scalars(select(Job.id).where(Job.worker_id == worker_id, Job.status == RUNNING))
        )
    return [j for j in ids if requeue(sf, j, worker_id, reason)]


def request_cancel(sf: Factory, job_id: int) -> str:
    """Cancel a queued job at once, or ask its worker to stop a running one."""
    with sf.begin() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == QUEUED)
            .values(status=CANCELLED, finished_at=now(), message="cancelled before it started")
        )
        if res.rowcount:
            return "cancelled"
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == RUNNING)
            .values(cancel_requested=True, message="cancel requested")
        )
        return "cancel requested" if res.rowcount else "already finished"


def recover_stale(sf: Factory, stale_s: float = STALE_S) -> list[int]:
    """Requeue (once) or fail running jobs whose worker stopped heartbeating."""
    cutoff = now() - stale_s
    recovered = []
    with sf.begin() as s:
        stale = s.execute(
            select(Job.id, Job.attempts, Job.worker_id).where(
                Job.status == RUNNING, Job.heartbeat_at < cutoff
            )
        ).all()
        for job_id, attempts, wid in stale:
            cond = (Job.id == job_id, Job.status == RUNNING, Job.heartbeat_at < cutoff)
            if attempts < MAX_ATTEMPTS:
                values = {
                    "status": QUEUED,
                    "worker_id": None,
                    "progress": 0.0,
                    "message": f"requeued: worker {wid} stopped heartbeating",
                }
            else:
                values = {
                    "status": FAILED,
                    "finished_at": now(),
                    "message": "failed",
                    "error": f"worker lost {attempts} times (no heartbeat for {stale_s:.0f} s); "
                    "the job may exhaust memory or crash the worker",
                }
            if s.execute(update(Job).where(*cond).values(**values)).rowcount:
                recovered.append(job_id)
    return recovered


# --- workers -------------------------------------------------------------------------


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def register_worker(sf: Factory, worker_id: str) -> None:
    t = now()
    with sf.begin() as s:
        s.add(
            Worker(
                id=worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=t,
                heartbeat_at=t,
            )
        )


def worker_heartbeat(sf: Factory, worker_id: str, current_job_id: int | None) -> None:
    with sf.begin() as s:
        s.execute(
            update(Worker)
            .where(Worker.id == worker_id)
            .values(heartbeat_at=now(), current_job_id=current_job_id, stopped=False)
        )


def worker_stopped(sf: Factory, worker_id: str) -> None:
    with sf.begin() as s:
        s.execute(
            update(Worker).where(Worker.id == worker_id).values(stopped=True, current_job_id=None)
        )


def alive_workers(sf: Factory, max_age: float = WORKER_ALIVE_S) -> list[Worker]:
    with sf() as s:
        q = select(Worker).where(Worker.stopped.is_(False), Worker.heartbeat_at > now() - max_age)
        return list(s.scalars(q))


# --- reading -------------------------------------------------------------------------


def queue_counts(sf: Factory) -> dict[str, int]:
    with sf() as s:
        rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: n for status, n in rows}


def list_jobs(sf: Factory, status: str | None = None, limit: int = 500) -> list[Job]:
    with sf() as s:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
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


def store_text(sf: Factory, filename: str, text: str) -> str:
    """Store a validated upload once (by content hash); returns its set name."""
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
                    created_at=now(),
                )
            )
    return name


def get_text(sf: Factory, name: str) -> TextBlob | None:
    with sf() as s:
        return s.get(TextBlob, name)


def list_texts(sf: Factory) -> list[TextBlob]:
    with sf() as s:
        return list(s.scalars(select(TextBlob).order_by(TextBlob.created_at.desc())))
