"""A unique import key on jobs: a bundle's run is imported once, even by two imports at once.

``import_key`` is the recomputed fingerprint hash of an imported run, NULL for runs made
here (so re-running a recipe locally is never refused). Imported rows already in the
database get their key, one row per fingerprint (the earliest), so the index can be built
on a database where the old, racy check let a duplicate through.

Revision ID: 0005_import_key
Revises: 0004_owners_users
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_import_key"
down_revision = "0004_owners_users"
branch_labels = None
depends_on = None

_FIRST_IMPORT_PER_HASH = sa.text(
    "UPDATE jobs SET import_key = fingerprint_hash WHERE id IN ("
    " SELECT MIN(id) FROM jobs WHERE origin <> 'local' AND fingerprint_hash IS NOT NULL"
    " GROUP BY fingerprint_hash)"
)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("import_key", sa.String(64), nullable=True))
    op.execute(_FIRST_IMPORT_PER_HASH)
    op.create_index("ix_jobs_import_key", "jobs", ["import_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_jobs_import_key", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("import_key")
