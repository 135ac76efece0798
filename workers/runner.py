"""The worker loop: claim a job, run it with heartbeats, record a result or a readable error.

A job runs in its own thread; this (main) thread waits for it, so a job that hangs in
code that never checks for cancellation cannot hold the worker forever: after a timeout,
a cancel or a shutdown the job gets ``grace_s`` to reach its next check, then it is
abandoned (the worker then exits: a stuck thread may hold the model's memory).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from core.data import DataError, TextSet, get_text_set, text_set_from_text
from core.errors import Cancelled, ModelLoadError
from core.kernels.ops import tune_in_background
from core.registry import ConfigError
from db import queue
from db.models import CANCELLED, FAILED, SUCCEEDED, Job
from db.session import data_dir
from runs.pipeline import JobResult, run_job
from runs.spec import JobSpec, unknown_keys
from workers.gc import remove_stale_temps
from workers.lifecycle import (
    Shutdown,
    WorkerShutdown,
    attempt_log,
    device_name,
    install_signal_handlers,
    sleep,
    with_reconnect,
)

log = logging.getLogger(__name__)

USER_ERRORS = (ModelLoadError, ConfigError, DataError, ValueError)
JOB_TIMEOUT_S = 6 * 3600.0  # a job running longer than this (database clock) is failed
GRACE_S = 30.0  # how long a timed-out, cancelled or stopping job may take to stop
__all__ = ["Runner", "WorkerShutdown", "WorkerStuck", "install_signal_handlers"]


class WorkerStuck(Exception):
    """A job thread did not stop within the grace period; the worker process must exit."""


class _Beat:
    """Background heartbeat for one job: writes progress, reads cancel requests, and ends
    the job as failed once it ran past the timeout (by the database's clock)."""

    def __init__(
        self, sf: queue.Factory, job_id: int, worker_id: str, interval: float, timeout_s: float
    ) -> None:
        self.sf, self.job_id, self.worker_id, self.interval = sf, job_id, worker_id, interval
        self.timeout_s, self.started = timeout_s, time.monotonic()
        self.progress, self.message = 0.0, "started"
        self.keep_going, self.timed_out = True, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            ok = queue.heartbeat(self.sf, self.job_id, self.worker_id, self.progress, self.message)
            queue.worker_heartbeat(self.sf, self.worker_id, self.job_id)
            self.keep_going = self.keep_going and ok
            self._check_timeout()
        except Exception:  # a locked or briefly unreachable database must not kill the job
            log.warning("heartbeat failed for job %s", self.job_id, exc_info=True)

    def _check_timeout(self) -> None:
        # This host's monotonic clock only decides when to ask; the database's decides.
        if self.timed_out or time.monotonic() - self.started < self.timeout_s - 1.0:
            return
        if queue.fail_if_timed_out(self.sf, self.job_id, self.worker_id, self.timeout_s):
            log.error("job %s timed out after %.0f s; stopping it", self.job_id, self.timeout_s)
            self.timed_out, self.keep_going = True, False

    def should_cancel(self) -> bool:
        """The job's cancel callback: WorkerShutdown on a signal, True to stop the job."""
        Shutdown.check()
        return not self.keep_going

    def update(self, fraction: float, message: str) -> None:
        self.progress, self.message = max(0.0, min(1.0, fraction)), message

    def __enter__(self) -> _Beat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class _Outcome:
    result: JobResult | None = None
    error: BaseException | None = None
    abandoned: bool = False  # the job thread was still running after the grace period


class Runner:
    def __init__(
        self,
        sf: queue.Factory,
        worker_id: str | None = None,
        cache_dir: Path | None = None,
        heartbeat_s: float = queue.HEARTBEAT_S,
        models_dir: Path | None = None,
        *,
        job_timeout_s: float = JOB_TIMEOUT_S,
        stale_s: float = queue.STALE_S,
        grace_s: float = GRACE_S,
    ) -> None:
        self.sf = sf
        self.worker_id = worker_id or queue.new_worker_id()
        self.cache_dir = cache_dir or data_dir() / "baselines"
        # Saved compressed models, one folder per run (beside the baseline caches).
        self.models_dir = models_dir or self.cache_dir.parent / "models"
        self.heartbeat_s, self.job_timeout_s = heartbeat_s, job_timeout_s
        self.stale_s, self.grace_s = stale_s, grace_s
        self._registered, self._last_recover = False, 0.0

    def register(self) -> None:
        """Record this worker, its host and its device (waits for the database); once."""
        if self._registered:
            return
        self._registered = True
        device = device_name()
        with_reconnect(
            "register worker", lambda: queue.register_worker(self.sf, self.worker_id, device)
        )

    def resolve_text(self, name: str) -> TextSet:
        if name.startswith("upload:"):
            blob = queue.get_text(self.sf, name)
            if blob is None:
                raise DataError(f"uploaded text {name!r} is not in the database")
            return text_set_from_text(name, blob.text, f"upload {blob.filename}", blob.filename)
        return get_text_set(name)

    def run_claimed(self, job: Job) -> str:
        """Run a job this worker has claimed; returns its final status. WorkerShutdown
        (after the job went back to the queue) if a signal stopped it."""
        log.info("job %s: %s / %s", job.id, job.model, job.recipe_label)
        attempt_log(job.id, self.worker_id, "start")
        status = "stopped"
        try:
            with _Beat(
                self.sf, job.id, self.worker_id, self.heartbeat_s, self.job_timeout_s
            ) as beat:
                outcome = self._run_in_thread(job, beat)
            status = self._record(job, beat, outcome)
            return status
        finally:
            attempt_log(job.id, self.worker_id, "end", status)

    def _execute(self, job: Job, beat: _Beat) -> JobResult:
        spec = JobSpec.from_json(job.spec_json)
        return run_job(
            spec,
            cache_dir=self.cache_dir,
            resolve_text=self.resolve_text,
            on_progress=beat.update,
            should_cancel=beat.should_cancel,
            save_dir=self.models_dir / f"run-{job.id}",
        )

    def _run_in_thread(self, job: Job, beat: _Beat) -> _Outcome:
        """Run the job in a thread; wait for it, at most ``grace_s`` once it was told to
        stop (timeout, cancel, shutdown)."""
        out = _Outcome()

        def target() -> None:
            try:
                out.result = self._execute(job, beat)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                out.error = e

        thread = threading.Thread(target=target, name=f"job-{job.id}", daemon=True)
        thread.start()
        deadline: float | None = None
        while thread.is_alive():
            thread.join(0.1)
            if deadline is None and (Shutdown.reason is not None or not beat.keep_going):
                deadline = time.monotonic() + self.grace_s
            if deadline is not None and time.monotonic() > deadline and thread.is_alive():
                log.error("job %s did not stop within %.0f s", job.id, self.grace_s)
                out.abandoned = True
                break
        return out

    def _record(self, job: Job, beat: _Beat, out: _Outcome) -> str:
        """Write the outcome (retrying through a database restart); the final status."""
        stopping = isinstance(out.error, WorkerShutdown) or (
            out.abandoned and Shutdown.reason is not None
        )
        if stopping:
            reason = f"requeued: worker stopped ({Shutdown.reason})"
            with_reconnect(
                "requeue", lambda: queue.requeue(self.sf, job.id, self.worker_id, reason)
            )
            raise WorkerShutdown(Shutdown.reason or "stopped")
        status = self._final_status(job, beat, out)
        if out.abandoned:
            raise WorkerStuck(f"job {job.id} ended {status} but its thread is still running")
        return status

    def _final_status(self, job: Job, beat: _Beat, out: _Outcome) -> str:
        jid, wid, e = job.id, self.worker_id, out.error
        if beat.timed_out:
            return FAILED  # fail_if_timed_out recorded it, with the reason
        if out.abandoned or isinstance(e, Cancelled):
            with_reconnect("cancel", lambda: queue.mark_cancelled(self.sf, jid, wid))
            return CANCELLED
        if e is not None:
            error = _error_text(jid, e)
            with_reconnect("fail", lambda: queue.fail(self.sf, jid, wid, error))
            return FAILED
        assert out.result is not None
        return self._complete(job, out.result)

    def _complete(self, job: Job, result: JobResult) -> str:
        """Store the result; a database restart meanwhile delays it, never loses it. Spec
        keys this (older) worker does not know are named in the result's ``notes``."""
        job_id, metrics = job.id, result.metrics
        if ignored := unknown_keys(job.spec_json):
            metrics["notes"] = f"spec keys this worker does not know were ignored: {ignored}"
        ok = with_reconnect(
            f"complete job {job_id}",
            lambda: queue.complete(
                self.sf, job_id, self.worker_id, metrics, result.layers, result.fingerprint
            ),
        )
        if ok:
            return SUCCEEDED
        now = queue.get_job(self.sf, job_id)  # an earlier try may have committed
        mine = now is not None and now.worker_id == self.worker_id
        return SUCCEEDED if mine and now.status == SUCCEEDED else CANCELLED

    def _poll(self) -> Job | None:
        """One round of the loop's database work: heartbeat, recovery, claim."""
        queue.worker_heartbeat(self.sf, self.worker_id, None)
        if time.monotonic() - self._last_recover > self.heartbeat_s:
            if recovered := queue.recover_stale(self.sf, self.stale_s):
                log.info("recovered stale jobs %s", recovered)
            self._last_recover = time.monotonic()
        return queue.claim(self.sf, self.worker_id)

    def serve(
        self,
        *,
        poll_s: float = 1.0,
        stop: threading.Event | None = None,
        max_jobs: int | None = None,
    ) -> int:
        """Claim and run jobs until ``stop`` is set, ``max_jobs`` ran, or a signal arrives
        (WorkerShutdown, after the running job went back to the queue)."""
        stop = stop or threading.Event()
        self.register()
        remove_stale_temps([self.cache_dir, self.models_dir])  # a killed job's partial files
        tune_in_background()  # kernel paths timed on this machine before a job needs them
        done = 0
        try:
            while not stop.is_set() and (max_jobs is None or done < max_jobs):
                Shutdown.check()
                job = with_reconnect("poll the queue", self._poll)
                if job is None:
                    sleep(poll_s, stop)
                    continue
                self.run_claimed(job)
                done += 1
        except WorkerShutdown as e:
            reason = f"requeued: worker stopped ({e})"
            with_reconnect(
                "requeue", lambda: queue.requeue_worker_jobs(self.sf, self.worker_id, reason)
            )
            raise
        finally:
            _stopped(self.sf, self.worker_id)
        return done


def _error_text(job_id: int, e: BaseException) -> str:
    if isinstance(e, USER_ERRORS):
        return str(e) or type(e).__name__
    log.error(
        "job %s crashed:\n%s",
        job_id,
        "".join(traceback.format_exception(type(e), e, e.__traceback__)),
    )
    return f"internal error: {type(e).__name__}: {e}"


def _stopped(sf: queue.Factory, worker_id: str) -> None:
    try:
        queue.worker_stopped(sf, worker_id)
    except Exception:  # the database is gone; the worker row simply ages out
        log.warning("could not mark worker %s stopped", worker_id, exc_info=True)
