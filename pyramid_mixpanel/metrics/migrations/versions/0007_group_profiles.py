"""Group profiles per account (Group Analytics).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Spelled out here, not imported from store.py: a migration must not change when the code does.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the group profiles table."""
    op.create_table(
        "mixpanel_group_profiles",
        sa.Column("account", sa.String(255), primary_key=True),
        sa.Column("group_key", sa.String(255), nullable=False),
        sa.Column("properties", Json, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the group profiles table."""
    op.drop_table("mixpanel_group_profiles")
