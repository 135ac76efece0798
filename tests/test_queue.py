"""The job queue: atomic claims under contention, heartbeats, recovery, cancellation."""

from __future__ import annotations

import json
import threading

from sqlalchemy import update

from db import queue
from db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job


def _submit(sf, n: int) -> list[int]:
    return [
        queue.submit(sf, model="demo", recipe_label="baseline", spec_json="{}") for _ in range(n)
    ]


def _age_heartbeat(sf, job_id: int, seconds: float) -> None:
    """Move the job's last heartbeat ``seconds`` into the past (heartbeats are the
    database's clock, which need not be this host's)."""
    with sf.begin() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=Job.heartbeat_at - seconds)
        )


def test_racing_workers_claim_every_job_exactly_once(sf) -> None:
    ids = _submit(sf, 120)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        mine = claimed.setdefault(name, [])
        try:
            while (job := queue.claim(sf, name)) is not None:
                mine.append(job.id)
                assert queue.complete(sf, job.id, name, {"perplexity": 1.0}, [], {"model": "demo"})
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    everything = [j for js in claimed.values() for j in js]
    assert sorted(everything) == ids  # each job once, none lost
    assert sum(1 for js in claimed.values() if js) >= 2  # the race really had rivals
    assert queue.queue_counts(sf) == {SUCCEEDED: 120}


def test_a_claimed_job_cannot_be_claimed_again(sf) -> None:
    (jid,) = _submit(sf, 1)
    assert queue.claim(sf, "a", job_id=jid) is not None
    assert queue.claim(sf, "b", job_id=jid) is None
    assert queue.claim(sf, "b") is None


def test_stale_job_is_requeued_once_then_failed(sf) -> None:
    (jid,) = _submit(sf, 1)
    job = queue.claim(sf, "w1")
    assert job is not None and job.attempts == 1
    _age_heartbeat(sf, jid, queue.STALE_S + 5)
    assert queue.recover_stale(sf) == [jid]
    job = queue.get_job(sf, jid)
    assert job.status == QUEUED and job.worker_id is None and "stopped heartbeating" in job.message
    # The lost worker comes back: it may no longer write to the job.
    assert not queue.heartbeat(sf, jid, "w1", 0.5, "still here?")
    assert not queue.complete(sf, jid, "w1", {"perplexity": 1.0}, [], {})
    assert queue.claim(sf, "w2").id == jid
    _age_heartbeat(sf, jid, queue.STALE_S + 5)
    assert queue.recover_stale(sf) == [jid]
    job = queue.get_job(sf, jid)
    assert job.status == FAILED and "worker lost 2 times" in job.error


def test_recovery_never_touches_finished_or_fresh_jobs(sf) -> None:
    done, fresh = _submit(sf, 2)
    queue.claim(sf, "w", job_id=done)
    assert queue.complete(sf, done, "w", {"perplexity": 3.0}, [{"name": "l"}], {"model": "demo"})
    queue.claim(sf, "w", job_id=fresh)
    _age_heartbeat(sf, done, 10_000)
    assert queue.recover_stale(sf) == []
    assert queue.get_job(sf, done).status == SUCCEEDED
    assert queue.get_job(sf, done).result == {"perplexity": 3.0}
    assert queue.get_job(sf, fresh).status == RUNNING


def test_cancel_queued_and_running(sf) -> None:
    queued, running = _submit(sf, 2)
    assert queue.request_cancel(sf, queued) == "cancelled"
    assert queue.get_job(sf, queued).status == CANCELLED
    assert queue.claim(sf, "w", job_id=queued) is None  # a cancelled job is never run
    queue.claim(sf, "w", job_id=running)
    assert queue.heartbeat(sf, running, "w", 0.1, "working")
    assert queue.request_cancel(sf, running) == "cancel requested"
    assert not queue.heartbeat(sf, running, "w", 0.2, "working")  # the worker is told to stop
    assert queue.mark_cancelled(sf, running, "w")
    assert queue.get_job(sf, running).status == CANCELLED
    assert queue.request_cancel(sf, running) == "already finished"


def test_uploaded_texts_are_stored_once_by_content(sf) -> None:
    a = queue.store_text(sf, "a.txt", "hello world")
    b = queue.store_text(sf, "b.txt", "hello world")
    assert a == b and a.startswith("upload:")
    assert queue.get_text(sf, a).text == "hello world"
    assert len(queue.list_texts(sf)) == 1


def test_fingerprint_hash_depends_on_what_determines_the_numbers() -> None:
    fp = {"model": "demo", "revision": "r", "recipe": [{"method": "rtn"}], "device": "cpu"}
    same = json.loads(json.dumps(fp)) | {"packages": {"torch": "other"}}
    assert queue.fingerprint_hash(fp) == queue.fingerprint_hash(same)
    assert queue.fingerprint_hash(fp) != queue.fingerprint_hash(fp | {"revision": "s"})
