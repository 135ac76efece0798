"""What a worker process shares across jobs: the shutdown flag its signal handlers set,
reconnecting to a database that went away, the device it computes on, and the optional
attempt log (one JSON line per attempt start and end, for the chaos test).

The signal handler only records the signal: the loop and the job's cancel callback read
the flag, so no exception ever lands inside SQLAlchemy or the database driver.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from db import queue

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPT_LOG_ENV = "COMPRESSLAB_ATTEMPT_LOG"  # append one JSON line per attempt start / end
RECONNECT_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # then every 30 s, for as long as it takes


class WorkerShutdown(BaseException):
    """The worker was asked to stop (SIGTERM / SIGINT): its job goes back to the queue.

    Raised by the job's cancel callback and by the loop, never by the signal handler."""


class Shutdown:
    """Set by SIGTERM / SIGINT: the name of the signal, read between layers and polls."""

    reason: str | None = None

    @classmethod
    def check(cls) -> None:
        if cls.reason is not None:
            raise WorkerShutdown(cls.reason)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT set ``Shutdown.reason``; nothing else happens in the handler."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        Shutdown.reason = signal.Signals(signum).name

    Shutdown.reason = None
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def sleep(seconds: float, stop: threading.Event | None = None) -> None:
    """Sleep in short steps; WorkerShutdown as soon as a signal asks the worker to stop."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        Shutdown.check()
        if stop is not None and stop.is_set():
            return
        time.sleep(min(left, 0.1))
    Shutdown.check()


def with_reconnect(what: str, fn: Callable[[], T], delays: tuple[float, ...] | None = None) -> T:
    """``fn()``, tried again with growing pauses (logged; ``RECONNECT_DELAYS_S`` by
    default) for as long as the database is unreachable or locked; a signal ends the
    wait with WorkerShutdown."""
    delays = delays or RECONNECT_DELAYS_S
    failures = 0
    while True:
        try:
            out = fn()
        except DBAPIError as e:
            if not queue.is_transient(e):
                raise
            delay = delays[min(failures, len(delays) - 1)]
            failures += 1
            log.warning(
                "%s: database unavailable (%s); reconnecting in %.0f s (try %d)",
                what,
                str(e.orig).strip().splitlines()[0] if str(e.orig).strip() else type(e).__name__,
                delay,
                failures,
            )
            sleep(delay)
            continue
        if failures:
            log.info("%s: database reachable again after %d failed tries", what, failures)
        return out


def device_name() -> str:
    """ "cpu", or the CUDA device's name (what the sidebar shows for this worker)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def attempt_log(job_id: int, worker_id: str, event: str, status: str | None = None) -> None:
    """Append ``event`` ("start" | "end") of this worker's attempt at ``job_id`` to the file
    ``$COMPRESSLAB_ATTEMPT_LOG`` names (one write with O_APPEND: lines never interleave)."""
    path = os.environ.get(ATTEMPT_LOG_ENV)
    if not path:
        return
    rec = {"job": job_id, "worker": worker_id, "pid": os.getpid(), "event": event}
    rec |= {"t": time.time(), "status": status}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)
