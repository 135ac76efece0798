"""Queue semantics across hosts (issue 13): each test here failed on the queue before it,
and runs on SQLite and PostgreSQL (see tests/conftest.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from db import queue
from db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from db.session import session_factory


def _submit(sf, n: int = 1) -> list[int]:
    return [queue.submit(sf, model="demo", recipe_label="rtn", spec_json="{}") for _ in range(n)]


def _age_heartbeat(sf, job_id: int, seconds: float) -> None:
    """Move the job's last heartbeat ``seconds`` into the past."""
    with sf.begin() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=Job.heartbeat_at - seconds)
        )


def _complete(sf, job_id: int, worker: str = "w") -> bool:
    return queue.complete(sf, job_id, worker, {"perplexity": 2.5}, [{"name": "l0"}], {"m": 1})


@contextmanager
def _skewed_host_clock(monkeypatch: pytest.MonkeyPatch, offset_s: float) -> Iterator[None]:
    """This process's clock ``offset_s`` off, as on a host whose clock drifted."""
    real = time.time
    with monkeypatch.context() as m:
        m.setattr(queue, "now", lambda: real() + offset_s)
        m.setattr(time, "time", lambda: real() + offset_s)
        yield


# --- cancel survives a requeue ----------------------------------------------------------


def test_a_cancel_requested_before_a_graceful_requeue_ends_the_job_cancelled(sf) -> None:
    (jid,) = _submit(sf)
    assert queue.claim(sf, "w1") is not None
    assert queue.request_cancel(sf, jid) == "cancel requested"
    assert queue.requeue(sf, jid, "w1", "worker shutting down (SIGTERM)")
    job = queue.get_job(sf, jid)
    assert job.status == CANCELLED and job.finished_at is not None
    assert queue.claim(sf, "w2") is None  # it never runs again


def test_a_cancel_requested_before_the_worker_was_lost_ends_the_job_cancelled(sf) -> None:
    (jid,) = _submit(sf)
    queue.claim(sf, "w1")
    queue.request_cancel(sf, jid)
    _age_heartbeat(sf, jid, queue.STALE_S + 5)
    assert queue.recover_stale(sf) == [jid]
    assert queue.get_job(sf, jid).status == CANCELLED
    assert queue.claim(sf, "w2") is None


def test_claim_keeps_a_pending_cancel(sf) -> None:
    (jid,) = _submit(sf)
    with sf.begin() as s:  # as an older worker's requeue could leave it
        s.execute(update(Job).where(Job.id == jid).values(cancel_requested=True))
    assert queue.claim(sf, "w").id == jid
    assert not queue.heartbeat(sf, jid, "w", 0.0, "starting")  # told to stop at once


# --- attempts count only real losses ------------------------------------------------------


def test_graceful_requeues_do_not_count_as_lost_attempts(sf) -> None:
    (jid,) = _submit(sf)
    for _ in range(2):  # two SIGTERMs
        assert queue.claim(sf, "w").id == jid
        assert queue.requeue(sf, jid, "w", "worker shutting down")
    assert queue.claim(sf, "w").id == jid
    _age_heartbeat(sf, jid, queue.STALE_S + 5)  # one crash
    assert queue.recover_stale(sf) == [jid]
    job = queue.get_job(sf, jid)
    assert job.status == QUEUED and job.attempts == 1
    assert queue.claim(sf, "w").attempts == 2
    _age_heartbeat(sf, jid, queue.STALE_S + 5)  # a second crash
    queue.recover_stale(sf)
    assert "worker lost 2 times" in queue.get_job(sf, jid).error


# --- the database's clock decides ------------------------------------------------------------


def test_a_worker_whose_clock_is_behind_is_not_judged_stale(sf, monkeypatch) -> None:
    (jid,) = _submit(sf)
    with _skewed_host_clock(monkeypatch, -90.0):  # the worker's host is 90 s behind
        queue.claim(sf, "slow-clock")
        assert queue.heartbeat(sf, jid, "slow-clock", 0.3, "layer 3")
    assert queue.recover_stale(sf) == []
    assert queue.get_job(sf, jid).status == RUNNING


def test_a_recoverer_whose_clock_is_ahead_requeues_nothing_healthy(sf, monkeypatch) -> None:
    (jid,) = _submit(sf)
    queue.claim(sf, "w")
    queue.heartbeat(sf, jid, "w", 0.3, "layer 3")
    queue.register_worker(sf, "w")
    with _skewed_host_clock(monkeypatch, +90.0):
        assert queue.recover_stale(sf) == []
        assert [w.id for w in queue.alive_workers(sf)] == ["w"]
    assert queue.get_job(sf, jid).status == RUNNING


def test_times_are_written_by_the_database(sf, monkeypatch) -> None:
    with _skewed_host_clock(monkeypatch, -3600.0):
        (jid,) = _submit(sf)
        queue.claim(sf, "w")
    job = queue.get_job(sf, jid)
    t = queue.db_time(sf)
    for stamp in (job.created_at, job.started_at, job.heartbeat_at):
        assert abs(t - stamp) < 60


def test_a_job_past_its_timeout_is_failed_by_the_database_clock(sf) -> None:
    (jid,) = _submit(sf)
    queue.claim(sf, "w")
    assert queue.running_for(sf, jid) is not None and queue.running_for(sf, jid) < 60
    assert not queue.fail_if_timed_out(sf, jid, "w", timeout_s=3600)
    with sf.begin() as s:
        s.execute(update(Job).where(Job.id == jid).values(started_at=Job.started_at - 7200))
    assert queue.fail_if_timed_out(sf, jid, "w", timeout_s=3600)
    job = queue.get_job(sf, jid)
    assert job.status == FAILED and "timed out" in job.error and "3600 s" in job.error
    assert queue.running_for(sf, jid) is None


# --- complete / fail survive transient errors -----------------------------------------------


def _engine(sf) -> Engine:
    return sf.kw["bind"]


@contextmanager
def _flaky_updates(
    engine: Engine, n: int, make_error: Callable[[], Exception]
) -> Iterator[list[int]]:
    """Within the block, the first ``n`` UPDATEs of jobs fail with ``make_error()``."""
    seen: list[int] = []

    def boom(_conn, _cur, statement: str, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE JOBS") and len(seen) < n:
            seen.append(1)
            raise make_error()

    event.listen(engine, "before_cursor_execute", boom)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", boom)


def _transient_error(engine: Engine) -> Exception:
    if engine.dialect.name == "postgresql":
        import psycopg

        return psycopg.OperationalError("server closed the connection unexpectedly")
    return sqlite3.OperationalError("database is locked")


@pytest.mark.parametrize("finish", ["complete", "fail"])
def test_complete_and_fail_retry_transient_errors(sf, monkeypatch, finish: str) -> None:
    monkeypatch.setattr(queue, "RETRY_DELAYS_S", (0.01,) * 8, raising=False)
    (jid,) = _submit(sf)
    queue.claim(sf, "w")
    engine = _engine(sf)
    with _flaky_updates(engine, 3, lambda: _transient_error(engine)) as seen:
        if finish == "complete":
            assert _complete(sf, jid)
        else:
            assert queue.fail(sf, jid, "w", "out of memory")
    job = queue.get_job(sf, jid)
    assert len(seen) == 3
    if finish == "complete":
        assert job.status == SUCCEEDED and job.result == {"perplexity": 2.5}
        assert [r.name for r in queue.layer_stats(sf, jid)] == ["l0"]
    else:
        assert job.status == FAILED and job.error == "out of memory"


def test_a_permanent_error_is_not_retried(sf) -> None:
    (jid,) = _submit(sf)
    queue.claim(sf, "w")
    engine = _engine(sf)
    with (
        _flaky_updates(engine, 1, lambda: ValueError("bad value")) as seen,
        pytest.raises(Exception, match="bad value"),
    ):
        _complete(sf, jid)
    assert len(seen) == 1


def test_a_result_whose_commit_acknowledgement_was_lost_is_not_lost(sf, monkeypatch) -> None:
    """The commit went through, the connection dropped before the worker heard of it:
    the retry finds its own result instead of reporting the job as taken away."""
    monkeypatch.setattr(queue, "RETRY_DELAYS_S", (0.01,) * 3, raising=False)
    (jid,) = _submit(sf)
    queue.claim(sf, "w")
    lost: list[int] = []

    def drop_after_commit(_session) -> None:  # type: ignore[no-untyped-def]
        if not lost:
            lost.append(1)
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))

    event.listen(sf, "after_commit", drop_after_commit)
    try:
        assert _complete(sf, jid)
    finally:
        event.remove(sf, "after_commit", drop_after_commit)
    assert lost and queue.get_job(sf, jid).status == SUCCEEDED
    assert len(queue.layer_stats(sf, jid)) == 1


def test_complete_waits_out_a_sqlite_writer_holding_the_lock(tmp_path: Path, monkeypatch) -> None:
    """A real lock, not an injected error: another process's write transaction outlasts
    the busy timeout once; the result is recorded when it ends."""
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    session_factory(url)  # creates and migrates the file
    impatient = create_engine(url, connect_args={"timeout": 0.2, "check_same_thread": False})
    sf = sessionmaker(impatient, expire_on_commit=False)
    (jid,) = _submit(sf)
    queue.claim(sf, "w")
    monkeypatch.setattr(queue, "RETRY_DELAYS_S", (0.1, 0.2, 0.4, 0.8, 1.6), raising=False)
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.0, holder.rollback)
    release.start()
    try:
        assert _complete(sf, jid)
    finally:
        release.join()
        holder.close()
    assert queue.get_job(sf, jid).status == SUCCEEDED
    impatient.dispose()


# --- claim ----------------------------------------------------------------------------------


def test_claim_skips_a_row_another_transaction_holds(sf, db_backend: str) -> None:
    if db_backend != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite has one writer at a time)")
    first, second = _submit(sf, 2)
    engine = _engine(sf)
    with engine.connect() as other:
        other.execute(text("SELECT id FROM jobs WHERE id = :i FOR UPDATE"), {"i": first})
        got: list[Job | None] = []
        t = threading.Thread(target=lambda: got.append(queue.claim(sf, "w")))
        t.start()
        t.join(timeout=10)
        assert not t.is_alive(), "claim waited on a locked row instead of skipping it"
        other.rollback()
    assert got[0].id == second
    assert queue.get_job(sf, first).status == QUEUED


def test_long_worker_ids_fit(sf) -> None:
    wid = "gpu-node-" + "x" * 180 + "-12345-abcdef"  # Kubernetes pod names run long
    (jid,) = _submit(sf)
    queue.register_worker(sf, wid)
    assert queue.claim(sf, wid).worker_id == wid
    assert queue.heartbeat(sf, jid, wid, 0.5, "half")
    queue.worker_heartbeat(sf, wid, jid)
    assert _complete(sf, jid, wid)
    assert [w.id for w in queue.alive_workers(sf)] == [wid]


def test_a_worker_records_its_device(sf) -> None:
    queue.register_worker(sf, "w", device="cuda:0 (H100)")
    (w,) = queue.alive_workers(sf)
    assert w.device == "cuda:0 (H100)" and w.host


def test_is_transient_tells_retryable_errors_apart() -> None:
    locked = OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    syntax = OperationalError("UPDATE", {}, sqlite3.OperationalError("near x: syntax error"))
    assert queue.is_transient(locked)
    assert not queue.is_transient(syntax)
    assert not queue.is_transient(ValueError("database is locked"))
