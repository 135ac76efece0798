"""Schema migrations (Alembic): bring a database up to this code's schema on start.

``upgrade(engine)`` is called by ``db.session.get_engine`` (so by the app, every worker and
every CLI) before anything else touches the database:

- a database at this code's revision: nothing to do (one read, no lock);
- an empty database: today's tables are created and stamped at the head revision;
- a database written before migrations existed (tables, no ``alembic_version``): any
  baseline column it lacks is added, it is stamped as the baseline, then upgraded;
- an older revision: upgraded;
- a revision this code does not know (a newer CompressLab wrote it): refused with one
  line, ``SchemaTooNewError``.

Everything after the first read happens one process at a time: under a transaction-level
advisory lock on PostgreSQL, inside ``BEGIN IMMEDIATE`` on SQLite (the write lock, held
until the migration commits, so DDL and stamp are one atomic step there too).

``python -m db.migrate [upgrade|current|head] [--db URL]`` does the same from a shell.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Connection, Engine, inspect, text

from db.migrations import schema_v0
from db.models import Base

log = logging.getLogger(__name__)
# Alembic logs each context it sets up at INFO; on every worker start that is noise, and
# upgrade() logs what it did. A level someone configured is left alone.
for _name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001_baseline"
# pg_advisory_xact_lock key: any constant shared by every CompressLab process.
PG_LOCK_KEY = 0x436F6D7072657373  # "Compress"


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer CompressLab than this one."""


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """This code's schema revision."""
    rev = _scripts().get_current_head()
    assert rev is not None
    return rev


def known_revisions() -> set[str]:
    return {s.revision for s in _scripts().walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision the database is stamped with (None: never migrated, or empty)."""
    return MigrationContext.configure(connection).get_current_revision()


def _too_new_message(rev: str) -> str:
    return (
        f"database schema is at revision {rev!r}, newer than this CompressLab (its newest is "
        f"{head()!r}): update this host's code before starting it on this database"
    )


@contextmanager
def locked_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that no other migrating process can enter;
    the transaction commits when the block ends."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            with _sqlite_immediate(conn):
                yield conn
        else:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
                yield conn


@contextmanager
def _sqlite_immediate(conn: Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE with foreign keys off: Alembic's batch mode copies and drops
    tables, and a dropped ``jobs`` with foreign keys on would cascade into layer_stats."""
    raw = conn.connection.driver_connection
    assert raw is not None
    saved = raw.isolation_level
    conn.commit()
    raw.isolation_level = None  # the driver must not BEGIN on its own; we do
    try:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        with conn.begin():  # no SQL on pysqlite; its commit() commits our BEGIN
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            broken = _foreign_key_violations(conn)
            yield
            _check_foreign_keys(conn, broken)
    finally:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.commit()
        raw.isolation_level = saved


def _foreign_key_violations(conn: Connection) -> int:
    return len(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall())


def _check_foreign_keys(conn: Connection, before: int) -> None:
    after = _foreign_key_violations(conn)
    if after > before:
        raise RuntimeError(f"migration broke {after - before} foreign key reference(s)")


def _fill_legacy_columns(conn: Connection) -> list[str]:
    """Add the baseline tables, columns and indexes a pre-migration database lacks;
    returns what was added."""
    insp = inspect(conn)
    added = []
    for table in schema_v0.metadata().sorted_tables:
        if not insp.has_table(table.name):
            table.create(conn)
            added.append(table.name)
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have:
                conn.exec_driver_sql(_add_column_ddl(conn, table.name, col))
                added.append(f"{table.name}.{col.name}")
        indexes = {ix["name"] for ix in insp.get_indexes(table.name)}
        for ix in table.indexes:
            if ix.name not in indexes:
                ix.create(conn)
                added.append(str(ix.name))
    return added


def _add_column_ddl(conn: Connection, table: str, col: Column) -> str:
    ddl = f"ALTER TABLE {table} ADD COLUMN {col.name} {col.type.compile(dialect=conn.dialect)}"
    fill = schema_v0.LEGACY_FILL.get(table, {}).get(col.name)
    return ddl if fill is None else f"{ddl} NOT NULL DEFAULT {fill}"


def _upgrade_locked(conn: Connection) -> str:
    """The decision and the work, with the lock held. Returns what was done."""
    from alembic import command

    rev = current_revision(conn)
    cfg = alembic_config(conn)
    if rev == head():
        return "up to date"
    if rev is not None and rev not in known_revisions():
        raise SchemaTooNewError(_too_new_message(rev))
    if rev is None and not inspect(conn).has_table("jobs"):
        Base.metadata.create_all(conn)
        command.stamp(cfg, "head")
        return f"created at {head()}"
    if rev is None:
        added = _fill_legacy_columns(conn)
        if added:
            log.warning("pre-migration database lacked %s; added", ", ".join(added))
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, "head")
    return f"upgraded from {rev or 'pre-migration'} to {head()}"


def upgrade(engine: Engine) -> str:
    """Bring ``engine``'s database to this code's schema (see the module docstring)."""
    with engine.connect() as conn:
        rev = current_revision(conn)
    if rev == head():
        return "up to date"
    if rev is not None and rev not in known_revisions():
        raise SchemaTooNewError(_too_new_message(rev))
    with locked_connection(engine) as conn:
        done = _upgrade_locked(conn)
    if done != "up to date":
        log.info("database %s: %s", engine.url.render_as_string(hide_password=True), done)
    return done


def main(argv: list[str] | None = None) -> int:
    from db.session import default_url, make_engine

    p = argparse.ArgumentParser(prog="python -m db.migrate", description=__doc__.split("\n")[0])
    p.add_argument("action", nargs="?", default="upgrade", choices=("upgrade", "current", "head"))
    p.add_argument("--db", default=None, help="database URL (default: DATABASE_URL or SQLite)")
    args = p.parse_args(argv)
    if args.action == "head":
        print(head())
        return 0
    engine = make_engine(args.db or default_url())
    try:
        if args.action == "current":
            with engine.connect() as conn:
                print(current_revision(conn) or "none")
            return 0
        print(upgrade(engine))
        return 0
    except SchemaTooNewError as e:
        print(f"error: {e}")
        return 2
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
