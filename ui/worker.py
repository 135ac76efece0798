"""Start one local worker when none is alive, so that `streamlit run app.py` is a whole product.

Every browser session reruns the app script often, and several sessions can rerun at
once; a lock file plus a pid file (with the process start time, so a recycled pid is
not mistaken for our worker) make sure only one worker is spawned per database.
Stale-job recovery is throttled here too, because the app calls it on every rerun.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from db import queue
from db.session import REPO_ROOT, data_dir

log = logging.getLogger(__name__)

DISABLE_ENV = "COMPRESSLAB_NO_AUTOWORKER"
STARTUP_GRACE_S = 120.0  # a spawned worker imports torch and registers within this
RECOVER_EVERY_S = 30.0  # how often the app side looks for stale jobs

Spawn = Callable[[list[str], Path], int]  # (command, log file) -> pid


@dataclass(frozen=True)
class LocalWorker:
    state: str  # "alive" | "started" | "starting" | "stuck" | "disabled" | "failed"
    message: str
    pid: int | None = None
    log_path: Path | None = None


def worker_command(url: str) -> list[str]:
    return [sys.executable, "-m", "workers", "serve", "--db", url]


def popen_spawn(cmd: list[str], log_path: Path) -> int:
    """Start the worker detached from the app's session, its output in ``log_path``."""
    log_file = log_path.open("ab")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in the app's terminal must not kill a running job
    )
    log_file.close()
    _stop_at_exit(proc)
    return proc.pid


def _stop_at_exit(proc: subprocess.Popen) -> None:
    """Stop the worker this app started when the app exits (SIGTERM requeues its job)."""

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    atexit.register(stop)


def _paths(url: str, folder: Path) -> tuple[Path, Path, Path]:
    tag = hashlib.sha256(url.encode()).hexdigest()[:10]
    return (
        folder / f"local-worker-{tag}.pid",
        folder / f"local-worker-{tag}.lock",
        folder / "worker.log",
    )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _recorded_process(pid_path: Path) -> tuple[int, float] | None:
    """(pid, spawn time) if the pid file names a process that is still running."""
    try:
        rec = json.loads(pid_path.read_text())
        pid, created, spawned = int(rec["pid"]), float(rec["created"]), float(rec["spawned"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap our own dead child
            return None
    except psutil.Error:
        return None
    return pid, spawned


def ensure_local_worker(
    sf: queue.Factory,
    url: str,
    *,
    spawn: Spawn | None = None,
    folder: Path | None = None,
    clock: Callable[[], float] = time.time,
) -> LocalWorker:
    """Make sure a worker serves ``url``: start one unless one is alive or starting."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return LocalWorker("disabled", f"auto-start off ({DISABLE_ENV} is set)")
    if queue.alive_workers(sf):
        return LocalWorker("alive", "a worker is alive")
    folder = folder or data_dir()
    pid_path, lock_path, log_path = _paths(url, folder)
    with _locked(lock_path):
        if queue.alive_workers(sf):  # another session started one meanwhile
            return LocalWorker("alive", "a worker is alive")
        running = _recorded_process(pid_path)
        if running is not None:
            pid, spawned = running
            if clock() - spawned < STARTUP_GRACE_S:
                return LocalWorker(
                    "starting", f"local worker (pid {pid}) is starting", pid, log_path
                )
            return LocalWorker(
                "stuck",
                f"local worker (pid {pid}) runs but does not heartbeat; see {log_path}",
                pid,
                log_path,
            )
        try:
            pid = (spawn or popen_spawn)(worker_command(url), log_path)
            created = psutil.Process(pid).create_time()
        except (OSError, psutil.Error) as e:
            log.warning("could not start a local worker: %s", e)
            return LocalWorker("failed", f"could not start a local worker: {e}")
        pid_path.write_text(json.dumps({"pid": pid, "created": created, "spawned": clock()}))
        log.info("started local worker pid %s (log %s)", pid, log_path)
        return LocalWorker("started", f"started a local worker (pid {pid})", pid, log_path)


_last_recover: dict[str, float] = {}


def maybe_recover(
    sf: queue.Factory,
    url: str,
    *,
    every_s: float = RECOVER_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> list[int]:
    """Requeue or fail stale running jobs, at most once per ``every_s`` per database."""
    t = clock()
    if t - _last_recover.get(url, -float("inf")) < every_s:
        return []
    _last_recover[url] = t
    try:
        return queue.recover_stale(sf)
    except Exception:  # a locked database must not break the page; the workers recover too
        log.warning("stale-job recovery failed", exc_info=True)
        return []
