"""Per-account daily metrics as CSV, for analysts (churn correlation in a sheet or a notebook).

One format for ``GET /api/mixpanel/metrics.csv`` and ``pmixpanel metrics export``.
"""

from __future__ import annotations

import csv
import typing as t

if t.TYPE_CHECKING:
    from .model import DailyMetrics

__all__ = ["CSV_COLUMNS", "cell", "write_csv"]

CSV_COLUMNS = (
    "account",
    "date",
    "total_events",
    "unique_users",
    "sessions",
    "avg_events_per_user",
    "engagement_score",
    "anomaly",
)
#: What a spreadsheet takes for the start of a formula (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """``value`` as a CSV cell a spreadsheet shows as text: a leading ``'`` before a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(days: t.Iterable[DailyMetrics], out: t.TextIO) -> int:
    """Write a header and one row per account-day to ``out``; return the rows written."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for day in days:
        writer.writerow(
            [
                cell(day.account),
                day.date.isoformat(),
                day.total_events,
                day.unique_users,
                day.sessions,
                day.avg_events_per_user,
                day.engagement_score,
                day.anomaly or "",
            ]
        )
        count += 1
    return count
