"""Alembic environment. db.migrate.upgrade hands it a connection it already holds a lock
on; run from the `alembic` command it opens DATABASE_URL (or the default SQLite file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from db.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _offline() -> None:
    from db.session import default_url

    url = context.config.get_main_option("sqlalchemy.url") or default_url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _online() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    from db.migrate import locked_connection
    from db.session import default_url, make_engine

    url = context.config.get_main_option("sqlalchemy.url") or default_url()
    engine = make_engine(url)
    try:
        with locked_connection(engine) as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    _offline()
else:
    _online()
