"""Schema migrations (issue 13): databases written before migrations keep every row,
a database newer than the code is refused in one line, the revisions reproduce the models,
and several processes starting at once on a fresh database all come up."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

from db import migrate, queue
from db.migrations import schema_v0
from db.models import Base, Job
from db.session import dispose_engine, get_engine, make_engine, session_factory

ROOT = Path(__file__).resolve().parent.parent
V0_GZ = ROOT / "tests" / "data" / "compresslab_v0.db.gz"
TABLES = ("jobs", "layer_stats", "workers", "texts")


def _v0_copy(tmp_path: Path) -> Path:
    path = tmp_path / "compresslab_v0.db"
    with gzip.open(V0_GZ) as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def _rows(engine: Engine, table: str) -> list[dict[str, Any]]:
    with engine.connect() as c:
        res = c.execute(text(f"SELECT * FROM {table} ORDER BY 1"))
        return [dict(r._mapping) for r in res]


def _snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    return {t: _rows(engine, t) for t in TABLES}


def _assert_kept(before: dict, after: dict) -> None:
    """Every row of ``before`` is in ``after`` with every old column's value unchanged."""
    for table, rows in before.items():
        assert len(after[table]) == len(rows), table
        for old, new in zip(rows, after[table], strict=True):
            assert {k: new[k] for k in old} == old, (table, old)


def _assert_v0_content(sf) -> None:
    jobs = queue.list_jobs(sf)
    assert len(jobs) == 8
    done = queue.finished_runs(sf)
    assert len(done) >= 4 and all(j.result.get("perplexity") for j in done)
    assert all(queue.layer_stats(sf, j.id) for j in done)
    assert {j.origin for j in jobs} == {"local"}
    assert len(queue.list_texts(sf)) == 1
    assert len({j.sweep_id for j in jobs if j.sweep_id}) == 1


def _revision(engine: Engine) -> str | None:
    with engine.connect() as c:
        return migrate.current_revision(c)


def test_the_v0_sqlite_file_upgrades_with_every_row_intact(tmp_path: Path) -> None:
    path = _v0_copy(tmp_path)
    url = f"sqlite:///{path}"
    before = _snapshot(make_engine(url))
    sf = session_factory(url)
    engine = get_engine(url)
    assert _revision(engine) == migrate.head()
    _assert_kept(before, _snapshot(engine))
    _assert_v0_content(sf)
    ddl = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE name='jobs'")
    assert "worker_id VARCHAR(255)" in ddl.fetchone()[0]
    fks = inspect(engine).get_foreign_keys("layer_stats")
    assert fks[0]["referred_table"] == "jobs" and fks[0]["options"]["ondelete"] == "CASCADE"
    dispose_engine(url)


def _load_v0_rows(url: str, tmp_path: Path, drop: tuple[str, ...] = ()) -> Engine:
    """Today's pre-migration schema on ``url`` (less the ``drop``ped jobs columns), holding
    the rows of the v0 file."""
    v0 = make_engine(f"sqlite:///{_v0_copy(tmp_path)}")
    engine = make_engine(url)
    md = schema_v0.metadata()
    md.create_all(engine)
    with engine.begin() as c:
        for table in md.sorted_tables:
            rows = _rows(v0, table.name)
            if rows:
                c.execute(table.insert(), rows)
        if engine.dialect.name == "postgresql":  # ids were given; move the sequences on
            for t in ("jobs", "layer_stats"):
                c.execute(text(f"SELECT setval('{t}_id_seq', (SELECT max(id) FROM {t}))"))
        for col in drop:
            c.execute(text(f"DROP INDEX IF EXISTS ix_jobs_{col}"))
            c.execute(text(f"ALTER TABLE jobs DROP COLUMN {col}"))
    v0.dispose()
    return engine


def test_v0_rows_upgrade_intact_on_each_backend(db_url: str, tmp_path: Path) -> None:
    legacy = _load_v0_rows(db_url, tmp_path)
    before = _snapshot(legacy)
    legacy.dispose()
    sf = session_factory(db_url)
    engine = get_engine(db_url)
    assert _revision(engine) == migrate.head()
    _assert_kept(before, _snapshot(engine))
    _assert_v0_content(sf)
    cols = {c["name"]: c["type"] for c in inspect(engine).get_columns("jobs")}
    assert cols["worker_id"].length == 255
    assert {c["name"] for c in inspect(engine).get_columns("workers")} >= {"id", "device"}
    (jid,) = [queue.submit(sf, model="m", recipe_label="r", spec_json="{}")]
    assert jid > max(j["id"] for j in before["jobs"])


def test_a_pre_migration_database_lacking_columns_gains_them(db_url: str, tmp_path) -> None:
    """The failure of issue 13: "no such column: jobs.sweep_id" on every query."""
    _load_v0_rows(db_url, tmp_path, drop=("sweep_id", "origin")).dispose()
    sf = session_factory(db_url)
    jobs = queue.list_jobs(sf)
    assert len(jobs) == 8 and {j.origin for j in jobs} == {"local"}
    assert all(j.sweep_id is None for j in jobs)
    assert "ix_jobs_sweep_id" in {
        ix["name"] for ix in inspect(get_engine(db_url)).get_indexes("jobs")
    }


def test_the_revisions_build_exactly_the_models(db_url: str) -> None:
    """Upgrading an empty database revision by revision gives what db/models.py declares
    (a fresh database is created from the models directly and stamped)."""
    engine = make_engine(db_url)
    with migrate.locked_connection(engine) as conn:
        command.upgrade(migrate.alembic_config(conn), "head")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert migrate.current_revision(conn) == migrate.head()
    assert diff == []
    engine.dispose()


def test_a_database_newer_than_the_code_is_refused_in_one_line(db_url: str, capsys) -> None:
    session_factory(db_url)
    dispose_engine(db_url)
    with make_engine(db_url).begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(migrate.SchemaTooNewError, match="newer than this CompressLab") as e:
        session_factory(db_url)
    assert "\n" not in str(e.value) and "9999_from_the_future" in str(e.value)
    assert migrate.main(["upgrade", "--db", db_url]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: database schema is at revision") and "\n" not in out


def test_the_migrate_command_reports_the_revision(db_url: str, capsys) -> None:
    assert migrate.main(["current", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip() == "none"
    assert migrate.main(["upgrade", "--db", db_url]) == 0
    assert migrate.main(["current", "--db", db_url]) == 0
    assert capsys.readouterr().out.strip().endswith(migrate.head())


# --- several processes starting at once on one fresh database --------------------------------

_START = """
import sys, time
from db import queue
from db.session import session_factory
url, start_at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
sf = session_factory(url)
queue.submit(sf, model="m", recipe_label="r", spec_json="{}")
"""


def _start_at_once(url: str, n: int) -> list[subprocess.CompletedProcess]:
    start_at = time.time() + 3.0  # after every interpreter has imported SQLAlchemy
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START, url, str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_five_processes_starting_at_once_on_a_fresh_database(db_url: str, tmp_path) -> None:
    urls = [db_url]
    if db_url.startswith("sqlite"):  # and five upgrading a pre-migration file at once
        urls.append(f"sqlite:///{_v0_copy(tmp_path)}")
    for url in urls:
        results = _start_at_once(url, 5)
        errors = [r.stderr[-800:] for r in results if r.returncode]
        assert errors == []
        engine = make_engine(url)
        with engine.connect() as c:
            assert len(c.execute(select(Job.id).where(Job.model == "m")).all()) == 5
            assert migrate.current_revision(c) == migrate.head()
        engine.dispose()
