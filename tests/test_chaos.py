"""Chaos: 4 worker processes, 40 short jobs, a random worker SIGKILLed and restarted every
1-3 s, and (PostgreSQL, local server, root) the database server restarted once mid-run.

Every worker appends each attempt's start and end to one log (COMPRESSLAB_ATTEMPT_LOG);
an attempt of a SIGKILLed worker ends when the test killed it. At the end every job is
``succeeded`` or ``failed`` with a reason, no job ran on two workers at once, and no
finished result changed afterwards. Bounded: the kills stop after KILL_PHASE_S, the
test fails after DEADLINE_S.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

from core.calib import CalibSettings
from core.metrics import EvalSettings
from core.recipe import parse_recipe
from db import queue
from db.models import FAILED, SUCCEEDED
from runs.spec import build_spec

pytestmark = pytest.mark.both_backends
ROOT = Path(__file__).resolve().parent.parent
N_WORKERS, N_JOBS = 4, 40
KILL_PHASE_S, DEADLINE_S = 20.0, 120.0  # typically done in 40-65 s
STALE_S, HEARTBEAT_S = "5", "0.5"  # short, for the test: a killed job is back within ~6 s
EVAL = EvalSettings(ctx=32, eval_tokens=96, prompt_len=8, decode_tokens=2, repeats=1)


@dataclass
class Chaos:
    db_url: str
    data: Path
    log: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    killed_at: dict[int, float] = field(default_factory=dict)  # pid -> time of SIGKILL
    seen: dict[int, tuple] = field(default_factory=dict)  # job -> first finished state
    changed: list[int] = field(default_factory=list)
    restarts: int = 0
    took: float = float("nan")

    def start(self) -> subprocess.Popen:
        env = os.environ | {
            "COMPRESSLAB_DATA": str(self.data),
            "COMPRESSLAB_ATTEMPT_LOG": str(self.log),
            # 4 processes on a 2-core CI machine: one thread each, or they spin on each other
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        cmd = [sys.executable, "-m", "workers", "serve", "--db", self.db_url, "--poll", "0.2"]
        cmd += ["--stale-s", STALE_S, "--heartbeat-s", HEARTBEAT_S]
        log = (self.data / "workers.log").open("a")
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill_one(self) -> None:
        i = random.randrange(len(self.procs))
        proc = self.procs[i]
        proc.kill()
        proc.wait(timeout=30)
        self.killed_at[proc.pid] = time.time()
        self.procs[i] = self.start()

    def watch(self, sf) -> bool:  # type: ignore[no-untyped-def]
        """Record each job's first finished state, note any change; True when all ended."""
        try:
            jobs = queue.list_jobs(sf, limit=N_JOBS + 10)
        except DBAPIError:  # the server is restarting
            return False
        for job in jobs:
            if not queue.is_finished(job.status):
                continue
            state = (job.status, job.result_json, job.error, job.finished_at, job.worker_id)
            if self.seen.setdefault(job.id, state) != state and job.id not in self.changed:
                self.changed.append(job.id)
        return len(jobs) == N_JOBS and all(queue.is_finished(j.status) for j in jobs)


def _restartable(db_url: str) -> bool:
    url = make_url(db_url)
    return url.drivername.startswith("postgresql") and url.host == "127.0.0.1" and os.geteuid() == 0


def _attempts(log: Path, killed_at: dict[int, float], end: float) -> list[dict]:
    """(job, worker, start, end) of every attempt; a killed worker's ends at its kill."""
    open_: dict[tuple[int, str], dict] = {}
    done = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        key = (rec["job"], rec["worker"])
        if rec["event"] == "start":
            open_[key] = {"job": rec["job"], "worker": rec["worker"], "start": rec["t"]}
            open_[key]["pid"] = rec["pid"]
        else:
            done.append(open_.pop(key) | {"end": rec["t"]})
    for a in open_.values():
        done.append(a | {"end": killed_at.get(a["pid"], end)})
    return done


def _overlaps(attempts: list[dict]) -> list[tuple[dict, dict]]:
    by_job: dict[int, list[dict]] = {}
    for a in attempts:
        by_job.setdefault(a["job"], []).append(a)
    out = []
    for runs in by_job.values():
        runs.sort(key=lambda a: a["start"])
        for i, a in enumerate(runs):
            out += [(a, b) for b in runs[i + 1 :] if b["start"] < a["end"]]
    return out


def _submit_jobs(sf) -> None:  # type: ignore[no-untyped-def]
    spec, label = build_spec(
        "tiny-random",
        parse_recipe('[{"method": "rtn", "bits": 8}]'),
        text_exists=lambda _name: False,
        eval_settings=vars(EVAL),
        calib_settings=vars(CalibSettings(n_samples=2, seq_len=32)),
    )
    for _ in range(N_JOBS):
        queue.submit(sf, model=spec.model, recipe_label=label, spec_json=spec.to_json())


def _run_chaos(chaos: Chaos, sf, restart_db: bool) -> tuple[int, bool]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    kills, next_kill = 0, started + random.uniform(1, 3)
    restart_at = started + KILL_PHASE_S / 3 if restart_db else None
    while time.monotonic() - started < DEADLINE_S:
        if chaos.watch(sf):
            chaos.took = time.monotonic() - started
            return kills, True
        now = time.monotonic()
        if now - started < KILL_PHASE_S and now >= next_kill:
            chaos.kill_one()
            kills, next_kill = kills + 1, now + random.uniform(1, 3)
        if restart_at is not None and now >= restart_at:
            subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True, timeout=60)
            chaos.restarts, restart_at = chaos.restarts + 1, None
        time.sleep(0.2)
    return kills, False


def test_chaos(sf, db_url: str, db_backend: str, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    chaos = Chaos(db_url, tmp_path / "data", tmp_path / "attempts.jsonl")
    _submit_jobs(sf)
    chaos.procs = [chaos.start() for _ in range(N_WORKERS)]
    try:
        kills, finished = _run_chaos(chaos, sf, db_backend == "postgresql" and _restartable(db_url))
    finally:
        for p in chaos.procs:
            p.send_signal(signal.SIGTERM)
        for p in chaos.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    end = time.time()
    jobs = queue.list_jobs(sf, limit=N_JOBS + 10)
    chaos.watch(sf)  # a last look: nothing finished may have changed
    attempts = _attempts(chaos.log, chaos.killed_at, end)
    overlaps = _overlaps(attempts)
    counts = {s: sum(j.status == s for j in jobs) for s in (SUCCEEDED, FAILED)}
    print(
        f"\nchaos[{db_backend}]: jobs={len(jobs)} succeeded={counts[SUCCEEDED]} "
        f"failed={counts[FAILED]} kills={kills} db_restarts={chaos.restarts} "
        f"attempts={len(attempts)} overlaps={len(overlaps)} changed={len(chaos.changed)} took={chaos.took:.0f}s"
    )
    log_tail = (chaos.data / "workers.log").read_text()[-3000:]
    assert finished, f"not all jobs ended within {DEADLINE_S} s:\n{log_tail}"
    assert len(jobs) == N_JOBS and counts[SUCCEEDED] + counts[FAILED] == N_JOBS
    assert all(j.error for j in jobs if j.status == FAILED)
    assert all(j.result.get("perplexity") for j in jobs if j.status == SUCCEEDED)
    assert overlaps == [], overlaps
    assert chaos.changed == []
    assert kills >= 6
