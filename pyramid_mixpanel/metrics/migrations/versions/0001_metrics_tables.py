"""The metrics tables: daily metrics, funnels, profile aggregates, synced days.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Spelled out here, not imported from store.py: a migration must not change when the code does.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the tables."""
    op.create_table(
        "mixpanel_metrics",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("metric_date", sa.Date, nullable=False),
        sa.Column("total_events", sa.Integer, nullable=False),
        sa.Column("unique_users", sa.Integer, nullable=False),
        sa.Column("sessions", sa.Integer, nullable=False),
        sa.Column("avg_events_per_user", sa.Float, nullable=False),
        sa.Column("event_counts", Json, nullable=False),
        sa.Column("breakdowns", Json, nullable=False),
        sa.Column("engagement_score", sa.Float, nullable=False),
        sa.Column("anomaly", sa.String(16), nullable=True),
        sa.Column("anomaly_z", sa.Float, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("account", "metric_date", name="uq_mixpanel_metrics_account_date"),
    )
    op.create_index("ix_mixpanel_metrics_metric_date", "mixpanel_metrics", ["metric_date"])
    op.create_table(
        "mixpanel_funnels",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("funnel_id", sa.String(255), nullable=False),
        sa.Column("funnel_name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("metric_date", sa.Date, nullable=False),
        sa.Column("steps", Json, nullable=False),
        sa.Column("conversion_rate", sa.Float, nullable=False),
        sa.Column("completed_users", sa.Integer, nullable=False),
        sa.Column("drop_off_step", sa.Integer, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "account", "funnel_id", "source", "metric_date", name="uq_mixpanel_funnels_key"
        ),
    )
    op.create_table(
        "mixpanel_profiles",
        sa.Column("account", sa.String(255), primary_key=True),
        sa.Column("users", sa.Integer, nullable=False),
        sa.Column("properties", Json, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "mixpanel_sync_days",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the tables."""
    op.drop_table("mixpanel_sync_days")
    op.drop_table("mixpanel_profiles")
    op.drop_table("mixpanel_funnels")
    op.drop_index("ix_mixpanel_metrics_metric_date", table_name="mixpanel_metrics")
    op.drop_table("mixpanel_metrics")
