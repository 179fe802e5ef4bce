"""Events per hour of the day per account-day: the activity heatmap.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Spelled out here, not imported from store.py: a migration must not change when the code does.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Add ``hours`` (24 counts; NULL for the days synced before)."""
    op.add_column("mixpanel_metrics", sa.Column("hours", Json, nullable=True))


def downgrade() -> None:
    """Drop ``hours``."""
    with op.batch_alter_table("mixpanel_metrics") as batch:  # SQLite rebuilds the table
        batch.drop_column("hours")
