"""Funnel entries per user (pseudonymous) and the store's keys: exact funnels over a range.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the funnel entries and the keys tables."""
    op.create_table(
        "mixpanel_funnel_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("funnel_id", sa.String(255), nullable=False),
        sa.Column("metric_date", sa.Date, nullable=False),
        sa.Column("user_key", sa.String(64), nullable=False),
        sa.Column("reached", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "account", "funnel_id", "metric_date", "user_key", name="uq_mixpanel_funnel_entries"
        ),
        sa.Index("ix_mixpanel_funnel_entries_date", "metric_date"),
    )
    op.create_table(
        "mixpanel_metrics_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the funnel entries and the keys tables."""
    op.drop_table("mixpanel_metrics_keys")
    op.drop_table("mixpanel_funnel_entries")
