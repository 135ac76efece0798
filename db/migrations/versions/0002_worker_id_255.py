"""Worker ids up to 255 characters (Kubernetes-style host names make long ones).

Revision ID: 0002_worker_id_255
Revises: 0001_baseline
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_worker_id_255"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def _resize(table: str, column: str, old: int, new: int, nullable: bool) -> None:
    with op.batch_alter_table(table) as batch:
        batch.alter_column(
            column,
            type_=sa.String(new),
            existing_type=sa.String(old),
            existing_nullable=nullable,
        )


def upgrade() -> None:
    _resize("jobs", "worker_id", 64, 255, nullable=True)
    _resize("workers", "id", 64, 255, nullable=False)


def downgrade() -> None:
    _resize("workers", "id", 255, 64, nullable=False)
    _resize("jobs", "worker_id", 255, 64, nullable=True)
