"""Workers through database outages, timeouts, hung jobs, SIGKILLed `run`s and specs from
newer versions (both backends)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError

from core.metrics import EvalSettings
from db import queue
from db.models import FAILED, QUEUED, RUNNING, SUCCEEDED
from tests.test_workers import _long_job, _spec, _submit, _wait
from workers import lifecycle, runner
from workers.runner import Runner, WorkerStuck

pytestmark = pytest.mark.both_backends
ROOT = Path(__file__).resolve().parent.parent


def _flaky(real, failures: int):  # type: ignore[no-untyped-def]
    """``real`` that first raises a transient database error ``failures`` times."""
    left = [failures]

    def call(*args, **kw):  # type: ignore[no-untyped-def]
        if left[0] > 0:
            left[0] -= 1
            raise OperationalError("UPDATE jobs ...", {}, Exception("database is locked"))
        return real(*args, **kw)

    return call


@pytest.fixture(autouse=True)
def _fast_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "RECONNECT_DELAYS_S", (0.01, 0.02))
    monkeypatch.setattr(queue, "RETRY_DELAYS_S", (0.01,))


def test_a_result_whose_complete_fails_is_retried_not_lost(
    sf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    jid = _submit(sf, _spec())
    monkeypatch.setattr(queue, "complete", _flaky(queue.complete, 5))
    assert Runner(sf, cache_dir=tmp_path / "cache").serve(poll_s=0.05, max_jobs=1) == 1
    job = queue.get_job(sf, jid)
    assert job.status == SUCCEEDED and job.result["perplexity"] > 1
    assert len(queue.layer_stats(sf, jid)) == 15
    assert "database unavailable" in caplog.text


def test_serve_waits_for_the_database_and_registers_its_device(
    sf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    jid = _submit(sf, _spec())
    monkeypatch.setattr(queue, "claim", _flaky(queue.claim, 3))
    monkeypatch.setattr(queue, "register_worker", _flaky(queue.register_worker, 2))
    r = Runner(sf, cache_dir=tmp_path / "cache")
    seen: list[str | None] = []
    real_run = r.run_claimed
    monkeypatch.setattr(
        r,
        "run_claimed",
        lambda job: seen.extend(w.device for w in queue.alive_workers(sf)) or real_run(job),
    )
    assert r.serve(poll_s=0.05, max_jobs=1) == 1
    assert queue.get_job(sf, jid).status == SUCCEEDED
    assert seen == ["cpu"]
    assert caplog.text.count("reconnecting in") == 5


def test_a_job_past_its_timeout_fails_saying_so(sf, tmp_path: Path) -> None:
    slow = _long_job(sf)
    quick = _submit(sf, _spec())
    r = Runner(sf, cache_dir=tmp_path / "cache", heartbeat_s=0.2, job_timeout_s=2.0)
    assert r.serve(poll_s=0.05, max_jobs=2) == 2  # the worker goes on with the next job
    job = queue.get_job(sf, slow)
    assert job.status == FAILED
    assert job.error == "timed out: ran longer than the limit of 2 s"
    assert queue.get_job(sf, quick).status == SUCCEEDED


def test_a_hung_job_is_failed_and_abandoned(
    sf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hang(*_a, **_kw):  # type: ignore[no-untyped-def]
        time.sleep(30)  # never asks should_cancel

    monkeypatch.setattr(runner, "run_job", hang)
    jid = _submit(sf, _spec())
    r = Runner(sf, cache_dir=tmp_path / "cache", heartbeat_s=0.1, job_timeout_s=0.5, grace_s=0.5)
    started = time.monotonic()
    with pytest.raises(WorkerStuck, match=f"job {jid} ended failed"):
        r.serve(poll_s=0.05, max_jobs=1)
    assert time.monotonic() - started < 15
    job = queue.get_job(sf, jid)
    assert job.status == FAILED and job.error.startswith("timed out")
    assert queue.alive_workers(sf) == []


def test_a_spec_from_a_newer_version_runs_and_names_what_it_ignored(
    sf, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = json.loads(_spec().to_json())
    d["priority"] = 3
    d["eval"]["speculative"] = True
    jid = queue.submit(sf, model="tiny-random", recipe_label="rtn-int8", spec_json=json.dumps(d))
    Runner(sf, cache_dir=tmp_path / "cache").serve(poll_s=0.05, max_jobs=1)
    job = queue.get_job(sf, jid)
    assert job.status == SUCCEEDED, job.error
    assert job.result["notes"].endswith("were ignored: priority, eval.speculative")
    assert "does not know are ignored: priority, eval.speculative" in caplog.text


def _cli(*args: str, db_url: str, data: Path, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    env = os.environ | {"DATABASE_URL": db_url, "COMPRESSLAB_DATA": str(data)}
    return subprocess.Popen(
        [sys.executable, "-m", "workers", *args, "--db", db_url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_a_killed_run_command_is_recovered_by_recover(sf, db_url: str, tmp_path: Path) -> None:
    args = ("run", "--model", "tiny-random", "--recipe", "rtn-int8", "--ctx", "32")
    proc = _cli(*args, "--eval-tokens", "40000", db_url=db_url, data=tmp_path / "data")
    try:
        _wait(lambda: queue.queue_counts(sf).get(RUNNING, 0) == 1)
        proc.kill()  # SIGKILL: nothing is given back
        proc.wait(timeout=30)
    finally:
        proc.kill()
    (job,) = queue.list_jobs(sf)
    assert job.status == RUNNING
    rec = _cli("recover", "--stale-s", "0", db_url=db_url, data=tmp_path / "data")
    out, err = rec.communicate(timeout=120)
    assert rec.returncode == 0, err
    assert out.splitlines()[0] == "recovered 1 stale job:"
    assert f"job {job.id}: queued (requeued: worker" in out
    assert queue.get_job(sf, job.id).status == QUEUED
    again = _cli("recover", db_url=db_url, data=tmp_path / "data")
    assert again.communicate(timeout=120)[0].startswith("no stale jobs")


def _restartable(db_url: str) -> bool:
    url = make_url(db_url)
    return os.geteuid() == 0 and url.host == "127.0.0.1" and url.drivername.startswith("postgres")


def test_serve_survives_a_postgresql_restart(
    sf, db_url: str, db_backend: str, tmp_path: Path
) -> None:
    if db_backend != "postgresql" or not _restartable(db_url):
        pytest.skip("restarts the local PostgreSQL server (root, 127.0.0.1 only)")
    spec = _spec(
        eval=EvalSettings(ctx=32, eval_tokens=6000, prompt_len=16, decode_tokens=2, repeats=1)
    )
    first = _submit(sf, spec)
    proc = _cli("serve", "--poll", "0.1", db_url=db_url, data=tmp_path / "data")
    try:
        _wait(lambda: queue.get_job(sf, first).status == RUNNING)
        subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True, timeout=60)
        _wait(lambda: queue.get_job(sf, first).status == SUCCEEDED, timeout=120)
        second = _submit(sf, _spec())
        _wait(lambda: queue.get_job(sf, second).status == SUCCEEDED, timeout=120)
        assert proc.poll() is None  # the same worker, still serving
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    jobs = [queue.get_job(sf, j) for j in (first, second)]
    assert jobs[0].worker_id == jobs[1].worker_id and jobs[0].attempts == 1
