"""Queue load: claims per second and claim latency with 1, 4 and 16 worker processes, on
SQLite and on PostgreSQL, measured in one run.

Run: ``python bench/queue_load.py [--jobs N] [--workers 1,4,16] [--pg URL] [--json]``.

Each round submits N empty jobs (no model: the spec is ``{}``), starts P processes that
wait at one barrier, then each loops ``claim`` + ``complete`` until the queue is empty.
claims/s is N over the wall time from the barrier to the last completion; latency is the
time of one ``claim`` call (median and p99 over all N). ``x1`` is claims/s against the
same backend with one process (the ceiling for SQLite, one writer at a time, is ~1x).
PostgreSQL: ``--pg`` or ``COMPRESSLAB_TEST_PG_URL``; a fresh schema is used and dropped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _drain(url: str, start: Any, out: Any) -> None:
    """One worker process: claim + complete until the queue is empty; claim latencies."""
    from db import queue
    from db.session import session_factory

    sf = session_factory(url)
    wid = queue.new_worker_id()
    lat: list[float] = []
    start.wait()
    while True:
        t = time.perf_counter()
        job = queue.retry_transient("claim", lambda _n: queue.claim(sf, wid))
        if job is None:
            break
        lat.append(time.perf_counter() - t)
        queue.complete(sf, job.id, wid, {}, [], {})
    out.put(lat)


def measure(url: str, n_jobs: int, n_workers: int) -> dict[str, Any]:
    """One round on the (migrated) database ``url``: a table row."""
    from db import queue
    from db.session import session_factory

    sf = session_factory(url)
    for _ in range(n_jobs):
        queue.submit(sf, model="none", recipe_label="empty", spec_json="{}")
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_drain, args=(url, start, out)) for _ in range(n_workers)]
    for p in procs:
        p.start()
    time.sleep(0.5 + 0.2 * n_workers)  # let every process import and connect first
    t0 = time.perf_counter()
    start.set()
    lat = [x for _ in procs for x in out.get(timeout=600)]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    assert len(lat) == n_jobs, f"{len(lat)} claims for {n_jobs} jobs"
    ms = sorted(x * 1000 for x in lat)
    return {
        "backend": url.split(":", 1)[0].split("+", 1)[0],
        "workers": n_workers,
        "jobs": n_jobs,
        "claims_s": n_jobs / wall,
        "median_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
    }


@contextmanager
def pg_schema(base: str) -> Iterator[str]:
    """A URL on a fresh schema of PostgreSQL database ``base``, dropped afterwards."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        from db.session import dispose_engine

        dispose_engine(url.render_as_string(hide_password=False))
        with admin.connect() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def run(urls: list[str], n_jobs: int, workers: list[int]) -> list[dict[str, Any]]:
    rows = []
    for url in urls:
        base = None
        for p in workers:
            row = measure(url, n_jobs, p)
            base = base or row["claims_s"]
            rows.append(row | {"x1": row["claims_s"] / base})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'backend':<10} {'workers':>7} {'claims/s':>9} {'x1':>5} {'median ms':>10} {'p99 ms':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['backend']:<10} {r['workers']:>7} {r['claims_s']:>9.0f} {r['x1']:>5.2f} "
            f"{r['median_ms']:>10.2f} {r['p99_ms']:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=400, help="empty jobs per round")
    p.add_argument("--workers", default="1,4,16", help="worker process counts")
    p.add_argument("--pg", default=os.environ.get("COMPRESSLAB_TEST_PG_URL"), help="PostgreSQL URL")
    p.add_argument("--json", action="store_true", help="last line: the rows as JSON")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        urls = [f"sqlite:///{tmp}/queue_load.db"]
        if not args.pg:
            print("no PostgreSQL URL (--pg or COMPRESSLAB_TEST_PG_URL): SQLite only")
            rows = run(urls, args.jobs, workers)
        else:
            with pg_schema(args.pg) as pg:
                rows = run([*urls, pg], args.jobs, workers)
    print(format_table(rows))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
