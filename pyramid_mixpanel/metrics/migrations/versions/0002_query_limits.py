"""The query limits every process of the app shares (``mixpanel.query_limits_url``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Spelled out here, not imported from store.py: a migration must not change when the code does.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the table of query limits: one row per project and limit."""
    op.create_table(
        "mixpanel_query_limits",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("state", Json, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the table of query limits."""
    op.drop_table("mixpanel_query_limits")
