"""Saved Insights reports per account and day.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the reports table."""
    op.create_table(
        "mixpanel_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("report_id", sa.String(64), nullable=False),
        sa.Column("metric", sa.String(255), nullable=False),
        sa.Column("metric_date", sa.Date, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "account", "report_id", "metric", "metric_date", name="uq_mixpanel_reports_key"
        ),
    )


def downgrade() -> None:
    """Drop the reports table."""
    op.drop_table("mixpanel_reports")
