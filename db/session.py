"""Engine and session factory. SQLite by default (WAL, busy timeout), PostgreSQL for teams.

The database URL is ``DATABASE_URL`` if set, else a SQLite file in the data folder
(``COMPRESSLAB_DATA``, default ``./data`` beside the code). The first engine a process
opens on a URL brings the schema up to date (``db.migrate.upgrade``), one process at a
time, or refuses when the database is newer than the code.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade

REPO_ROOT = Path(__file__).resolve().parent.parent
SQLITE_BUSY_MS = 30_000  # how long a SQLite writer waits for another one's lock


def data_dir() -> Path:
    d = Path(os.environ.get("COMPRESSLAB_DATA", REPO_ROOT / "data")).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_url() -> str:
    return os.environ.get("DATABASE_URL") or f"sqlite:///{data_dir() / 'compresslab.db'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # The busy timeout first: switching to WAL takes a lock that a process starting at
    # the same moment may hold.
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() not in ("wal", "memory"):
        cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine on ``url`` with this project's connection settings; no schema work."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False}
        engine = create_engine(url, connect_args=connect_args)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(url: str | None = None) -> Engine:
    """The process's engine on ``url`` (default: ``default_url()``); the first call on a
    URL migrates its database (``db.migrate.upgrade``) and raises
    ``db.migrate.SchemaTooNewError`` if a newer CompressLab wrote it."""
    url = url or default_url()
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = make_engine(url)
            try:
                upgrade(engine)
            except BaseException:
                engine.dispose()
                raise
            _ENGINES[url] = engine
    return engine


def dispose_engine(url: str) -> None:
    """Close the pooled connections of ``url``'s engine and forget it (tests, shutdown)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)
