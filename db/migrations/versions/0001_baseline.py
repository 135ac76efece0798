"""Baseline: the schema of main before migrations (jobs, layer_stats, workers, texts).

Revision ID: 0001_baseline
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from alembic import op

from db.migrations import schema_v0

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema_v0.metadata().create_all(op.get_bind())


def downgrade() -> None:
    schema_v0.metadata().drop_all(op.get_bind())
