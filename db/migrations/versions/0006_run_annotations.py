"""Run annotations on jobs: a name, tags, notes and an archived flag (issue 18).

``name`` is what the user calls a run (NULL: the recipe label stands in); ``tags`` is a
JSON list of short strings (NULL: none); ``notes`` free text; ``archived`` hides a run from
the default lists without removing it (restorable). Existing rows get no name, no tags, no
notes and are not archived.

Revision ID: 0006_run_annotations
Revises: 0005_import_key
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_run_annotations"
down_revision = "0005_import_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("name", sa.String(200), nullable=True))
    op.add_column("jobs", sa.Column("tags", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("notes", sa.Text(), nullable=True))
    op.add_column(
        "jobs",
        sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("archived")
        batch.drop_column("notes")
        batch.drop_column("tags")
        batch.drop_column("name")
