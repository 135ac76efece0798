"""The database server's clock as a SQL expression: UTC epoch seconds (float).

Every time that decides something (claim, heartbeat, staleness, timeout) is written and
judged with this expression inside the statement itself, so hosts whose clocks disagree
still agree on which job is stale. On SQLite the "server" is the file's host, which is
the only host that can open it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now(FunctionElement[float]):  # noqa: N801 - reads like the SQL function it is
    """``now()`` of the database server as epoch seconds, evaluated by the server."""

    type = Float()
    inherit_cache = True
    name = "db_now"


@compiles(db_now)
def _db_now_default(_element: db_now, _compiler: Any, **_kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) AS DOUBLE PRECISION)"


@compiles(db_now, "postgresql")
def _db_now_postgresql(_element: db_now, _compiler: Any, **_kw: Any) -> str:
    # statement_timestamp(), not now(): now() is frozen at the start of the transaction,
    # and a claim that waited on a row lock must not write an old heartbeat; unlike
    # clock_timestamp() it is one value for the whole statement.
    return "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)"


@compiles(db_now, "sqlite")
def _db_now_sqlite(_element: db_now, _compiler: Any, **_kw: Any) -> str:
    # julianday('now') has millisecond resolution and is stable within one statement.
    return "((julianday('now') - 2440587.5) * 86400.0)"
