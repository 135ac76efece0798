"""The app starts one local worker when none is alive, never one per rerun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from db import queue
from ui import worker
from ui.worker import ensure_local_worker, maybe_recover


class FakeSpawn:
    """Starts a harmless sleeping process instead of a worker and records the command."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.procs: list[subprocess.Popen] = []

    def __call__(self, cmd: list[str], log_path: Path) -> int:
        self.calls.append(cmd)
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.procs.append(proc)
        return proc.pid

    def stop_all(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def spawn(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(worker.DISABLE_ENV, raising=False)
    fake = FakeSpawn()
    yield fake
    fake.stop_all()


def test_spawns_once_then_reports_starting(sf, db_url, spawn, tmp_path: Path) -> None:
    first = ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path)
    assert first.state == "started" and first.pid == spawn.procs[0].pid
    assert spawn.calls == [[sys.executable, "-m", "workers", "serve", "--db", db_url]]
    for _ in range(3):  # reruns while the worker imports torch
        again = ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path)
        assert again.state == "starting" and again.pid == first.pid
    assert len(spawn.calls) == 1


def test_respawns_after_the_worker_died(sf, db_url, spawn, tmp_path: Path) -> None:
    ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path)
    spawn.procs[0].kill()
    spawn.procs[0].wait()
    again = ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path)
    assert again.state == "started" and len(spawn.calls) == 2


def test_no_spawn_when_a_worker_is_alive(sf, db_url, spawn, tmp_path: Path) -> None:
    queue.register_worker(sf, "elsewhere-1")
    status = ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path)
    assert status.state == "alive" and spawn.calls == []


def test_stuck_worker_is_reported_not_duplicated(sf, db_url, spawn, tmp_path: Path) -> None:
    t = [1000.0]
    ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path, clock=lambda: t[0])
    t[0] += worker.STARTUP_GRACE_S + 1
    status = ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path, clock=lambda: t[0])
    assert status.state == "stuck" and "heartbeat" in status.message
    assert len(spawn.calls) == 1


def test_disabled_by_environment(sf, db_url, spawn, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(worker.DISABLE_ENV, "1")
    assert ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path).state == "disabled"
    assert spawn.calls == []


def test_spawn_failure_is_reported(sf, db_url, spawn, tmp_path: Path) -> None:
    def broken(cmd: list[str], log_path: Path) -> int:
        raise OSError("no such interpreter")

    status = ensure_local_worker(sf, db_url, spawn=broken, folder=tmp_path)
    assert status.state == "failed" and "no such interpreter" in status.message


def test_pid_file_of_another_process_is_not_trusted(sf, db_url, spawn, tmp_path: Path) -> None:
    ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path)
    pid_file = next(tmp_path.glob("local-worker-*.pid"))
    # A recycled pid: same number, different start time -> not our worker.
    pid_file.write_text(pid_file.read_text().replace('"created": ', '"created": 1'))
    assert ensure_local_worker(sf, db_url, spawn=spawn, folder=tmp_path).state == "started"


def test_recovery_is_throttled(sf, db_url) -> None:
    job_id = queue.submit(sf, model="m", recipe_label="r", spec_json="{}")
    queue.claim(sf, "w1")
    t = [0.0]
    # Not stale yet: nothing recovered, and the next call within the period does not look.
    assert maybe_recover(sf, db_url, clock=lambda: t[0]) == []
    with sf.begin() as s:
        from db.models import Job

        s.get(Job, job_id).heartbeat_at = 0.0
    t[0] += 1.0
    assert maybe_recover(sf, db_url, clock=lambda: t[0]) == []
    t[0] += worker.RECOVER_EVERY_S
    assert maybe_recover(sf, db_url, clock=lambda: t[0]) == [job_id]
    assert queue.get_job(sf, job_id).status == "queued"
