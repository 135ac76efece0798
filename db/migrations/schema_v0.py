"""The schema as it was before migrations existed (main at db52d58): the baseline.

Frozen on purpose: db/models.py moves on, this does not. The baseline revision creates
these tables, and a database written before migrations gains any column it lacks from
them before it is stamped as the baseline.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)


def _jobs(md: MetaData) -> Table:
    return Table(
        "jobs",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("created_at", Float, nullable=False),
        Column("status", String(16), nullable=False, index=True),
        Column("model", String(300), nullable=False),
        Column("recipe_label", String(300), nullable=False),
        Column("spec_json", Text, nullable=False),
        Column("progress", Float, nullable=False),
        Column("message", Text, nullable=False),
        Column("worker_id", String(64), nullable=True),
        Column("attempts", Integer, nullable=False),
        Column("started_at", Float, nullable=True),
        Column("heartbeat_at", Float, nullable=True),
        Column("finished_at", Float, nullable=True),
        Column("cancel_requested", Boolean, nullable=False),
        Column("error", Text, nullable=True),
        Column("result_json", Text, nullable=True),
        Column("fingerprint_json", Text, nullable=True),
        Column("fingerprint_hash", String(64), nullable=True, index=True),
        Column("origin", String(200), nullable=False),
        Column("sweep_id", String(64), nullable=True, index=True),
    )


def _layer_stats(md: MetaData) -> Table:
    return Table(
        "layer_stats",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "job_id",
            Integer,
            ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        Column("name", String(300), nullable=False),
        Column("data_json", Text, nullable=False),
    )


def _workers(md: MetaData) -> Table:
    return Table(
        "workers",
        md,
        Column("id", String(64), primary_key=True),
        Column("host", String(200), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("started_at", Float, nullable=False),
        Column("heartbeat_at", Float, nullable=False),
        Column("current_job_id", Integer, nullable=True),
        Column("stopped", Boolean, nullable=False),
    )


def _texts(md: MetaData) -> Table:
    return Table(
        "texts",
        md,
        Column("name", String(100), primary_key=True),
        Column("filename", String(300), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("n_bytes", Integer, nullable=False),
        Column("text", Text, nullable=False),
        Column("created_at", Float, nullable=False),
    )


# What a column that an old database lacks is filled with when it is added.
LEGACY_FILL = {
    "jobs": {
        "progress": "0",
        "message": "''",
        "attempts": "0",
        "cancel_requested": "false",
        "origin": "'local'",
    },
    "workers": {"stopped": "false"},
}


def metadata() -> MetaData:
    md = MetaData()
    for build in (_jobs, _layer_stats, _workers, _texts):
        build(md)
    return md
