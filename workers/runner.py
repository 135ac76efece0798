"""The worker loop: claim a job, run it with heartbeats, record a result or a readable error."""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from pathlib import Path
from types import FrameType

from core.data import DataError, TextSet, get_text_set, text_set_from_text
from core.errors import Cancelled, ModelLoadError
from core.registry import ConfigError
from db import queue
from db.models import CANCELLED, FAILED, SUCCEEDED, Job
from db.session import data_dir
from runs.pipeline import run_job
from runs.spec import JobSpec

log = logging.getLogger(__name__)

USER_ERRORS = (ModelLoadError, ConfigError, DataError, ValueError)


class WorkerShutdown(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT so the current job is requeued."""


def install_signal_handlers() -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        raise WorkerShutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class _Beat:
    """Background heartbeat for one job: writes progress, reads cancel requests."""

    def __init__(self, sf: queue.Factory, job_id: int, worker_id: str, interval: float) -> None:
        self.sf, self.job_id, self.worker_id, self.interval = sf, job_id, worker_id, interval
        self.progress, self.message = 0.0, "started"
        self.keep_going = True
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
        except Exception:  # a locked or briefly unreachable database must not kill the job
            log.warning("heartbeat failed for job %s", self.job_id, exc_info=True)

    def update(self, fraction: float, message: str) -> None:
        self.progress, self.message = max(0.0, min(1.0, fraction)), message

    def __enter__(self) -> _Beat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Runner:
    def __init__(
        self,
        sf: queue.Factory,
        worker_id: str | None = None,
        cache_dir: Path | None = None,
        heartbeat_s: float = queue.HEARTBEAT_S,
        models_dir: Path | None = None,
    ) -> None:
        self.sf = sf
        self.worker_id = worker_id or queue.new_worker_id()
        self.cache_dir = cache_dir or data_dir() / "baselines"
        # Saved compressed models, one folder per run (beside the baseline caches).
        self.models_dir = models_dir or self.cache_dir.parent / "models"
        self.heartbeat_s = heartbeat_s

    def resolve_text(self, name: str) -> TextSet:
        if name.startswith("upload:"):
            blob = queue.get_text(self.sf, name)
            if blob is None:
                raise DataError(f"uploaded text {name!r} is not in the database")
            return text_set_from_text(name, blob.text, f"upload {blob.filename}", blob.filename)
        return get_text_set(name)

    def run_claimed(self, job: Job) -> str:
        """Run a job this worker has claimed; returns its final status."""
        log.info("job %s: %s / %s", job.id, job.model, job.recipe_label)
        with _Beat(self.sf, job.id, self.worker_id, self.heartbeat_s) as beat:
            try:
                spec = JobSpec.from_json(job.spec_json)
                result = run_job(
                    spec,
                    cache_dir=self.cache_dir,
                    resolve_text=self.resolve_text,
                    on_progress=beat.update,
                    should_cancel=lambda: not beat.keep_going,
                    save_dir=self.models_dir / f"run-{job.id}",
                )
            except Cancelled:
                queue.mark_cancelled(self.sf, job.id, self.worker_id)
                return CANCELLED
            except USER_ERRORS as e:
                queue.fail(self.sf, job.id, self.worker_id, str(e) or type(e).__name__)
                return FAILED
            except Exception as e:  # report, keep the worker alive for the next job
                log.error("job %s crashed:\n%s", job.id, traceback.format_exc())
                queue.fail(
                    self.sf, job.id, self.worker_id, f"internal error: {type(e).__name__}: {e}"
                )
                return FAILED
        ok = queue.complete(
            self.sf, job.id, self.worker_id, result.metrics, result.layers, result.fingerprint
        )
        return SUCCEEDED if ok else CANCELLED

    def serve(
        self,
        *,
        poll_s: float = 1.0,
        stop: threading.Event | None = None,
        max_jobs: int | None = None,
    ) -> int:
        """Claim and run jobs until ``stop`` is set, ``max_jobs`` ran, or a signal arrives."""
        stop = stop or threading.Event()
        queue.register_worker(self.sf, self.worker_id)
        done, last_recover = 0, 0.0
        try:
            while not stop.is_set() and (max_jobs is None or done < max_jobs):
                queue.worker_heartbeat(self.sf, self.worker_id, None)
                if time.monotonic() - last_recover > queue.HEARTBEAT_S:
                    queue.recover_stale(self.sf)
                    last_recover = time.monotonic()
                job = queue.claim(self.sf, self.worker_id)
                if job is None:
                    stop.wait(poll_s)
                    continue
                self.run_claimed(job)
                done += 1
        except WorkerShutdown as e:
            queue.requeue_worker_jobs(self.sf, self.worker_id, f"requeued: worker stopped ({e})")
            raise
        finally:
            queue.worker_stopped(self.sf, self.worker_id)
        return done
