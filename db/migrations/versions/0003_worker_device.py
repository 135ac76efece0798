"""Workers record the device they compute on (shown beside host and last heartbeat).

Revision ID: 0003_worker_device
Revises: 0002_worker_id_255
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_worker_device"
down_revision = "0002_worker_id_255"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("device", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("device")
