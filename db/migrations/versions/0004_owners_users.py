"""Owners on jobs and uploaded texts; users (argon2 hashes, roles) and login sessions.

Revision ID: 0004_owners_users
Revises: 0003_worker_device
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_owners_users"
down_revision = "0003_worker_device"
branch_labels = None
depends_on = None


def _owner() -> sa.Column:
    # Rows made before logins existed belong to "local", the owner in COMPRESSLAB_AUTH=none
    return sa.Column("owner", sa.String(100), nullable=False, server_default="local")


def upgrade() -> None:
    op.add_column("jobs", _owner())
    op.create_index("ix_jobs_owner", "jobs", ["owner"])
    op.add_column("texts", _owner())
    op.create_table(
        "users",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("password_hash", sa.String(200), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "login_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column(
            "user", sa.String(100), sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_login_sessions_user", "login_sessions", ["user"])
    op.create_index("ix_login_sessions_expires_at", "login_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("login_sessions")
    op.drop_table("users")
    with op.batch_alter_table("texts") as batch:
        batch.drop_column("owner")
    op.drop_index("ix_jobs_owner", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("owner")
