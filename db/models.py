"""SQLAlchemy 2.0 typed models: jobs, their per-layer statistics, workers, uploaded texts,
users and their login sessions.

Times are UTC epoch seconds (floats) of the database server's clock (``db.clock.db_now``):
portable between SQLite and PostgreSQL and trivial to compare for heartbeats. The schema
is versioned with Alembic (db/migrations); a change here needs a revision there.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
LOCAL_OWNER = "local"  # the owner of everything made with COMPRESSLAB_AUTH=none
USER, ADMIN = "user", "admin"
ROLES = (USER, ADMIN)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    model: Mapped[str] = mapped_column(String(300))
    recipe_label: Mapped[str] = mapped_column(String(300))
    spec_json: Mapped[str] = mapped_column(Text)  # runs.spec.JobSpec as JSON (the recipe, once)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # runs.records.RunResult: keys as in runs.catalogue (never renamed)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Reproducibility facts; "recipe" refers to the spec's steps (old rows: a copy of them)
    fingerprint_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    fingerprint_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    origin: Mapped[str] = mapped_column(String(200), default="local")
    # An imported run's fingerprint hash (NULL for runs made here): imported once, by the
    # unique index, even when two imports of the same bundle race
    import_key: Mapped[str | None] = mapped_column(
        String(64), nullable=True, index=True, unique=True
    )
    sweep_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # Who queued (or imported) it: a user name, or "local" without logins
    owner: Mapped[str] = mapped_column(
        String(100), default=LOCAL_OWNER, server_default=LOCAL_OWNER, index=True
    )
    # What the user calls it, tags (a JSON list of strings) and notes: editable after the
    # run (db.queue.annotate); archived runs are hidden from the default lists, restorable
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tags_json: Mapped[str | None] = mapped_column("tags", Text, nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    @property
    def tags(self) -> list[str]:
        return [str(t) for t in json.loads(self.tags_json)] if self.tags_json else []

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.result_json) if self.result_json else {}

    @property
    def fingerprint(self) -> dict[str, Any]:
        return json.loads(self.fingerprint_json) if self.fingerprint_json else {}

    @property
    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_json)


class LayerStat(Base):
    __tablename__ = "layer_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    data_json: Mapped[str] = mapped_column(Text)  # runs.records.LayerRow: format, bits, stats

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.data_json)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)  # "cuda:0 (H100)"
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    current_job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)


class TextBlob(Base):
    """An uploaded calibration / evaluation text, so that workers on any host can read it."""

    __tablename__ = "texts"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # "upload:<sha12>"
    filename: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))
    n_bytes: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    owner: Mapped[str] = mapped_column(String(100), default=LOCAL_OWNER, server_default=LOCAL_OWNER)


class User(Base):
    """A login of COMPRESSLAB_AUTH=password (argon2 hash) or a name a proxy vouched for."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    role: Mapped[str] = mapped_column(String(16), default=USER)
    created_at: Mapped[float] = mapped_column(Float)


class LoginSession(Base):
    """A signed-in browser: only the SHA-256 of its token is stored."""

    __tablename__ = "login_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
