"""Saved Insights reports, pulled by the sync and stored per account and day.

``mixpanel.metrics.reports`` lists bookmark ids (the number in a report's URL). Each sync asks
the Query API for each report's current result (``GET /api/query/insights``). Its ``series``
nests one level per entry of ``headers`` (the metric first, then each breakdown), then dates
(openapi/query.openapi.yaml, "Query Saved Report"): a report broken down by the account
property (``mixpanel.metrics.account_property``) gives one value per account, metric and date;
one that is not is stored for every account as ``*`` (and the sync says so). Other breakdowns
are added up. Mixpanel's ``$overall`` totals are left out.
"""

from __future__ import annotations

import datetime as dt
import math
import typing as t
from dataclasses import dataclass

from .model import MAX_KEY, clean_text, storable

__all__ = ["ALL_ACCOUNTS", "ReportValue", "report_span", "report_values"]

#: The account of a report that is not broken down by account: shown on every account page.
ALL_ACCOUNTS = "*"
OVERALL = "$overall"


@dataclass(frozen=True)
class ReportValue:
    """One metric of a saved report, for one account on one day."""

    account: str
    report_id: str
    metric: str
    date: dt.date
    value: float


def _day(key: object) -> dt.date | None:
    """The day of a series key (``2020-08-31T00:00:00-07:00``, or a plain date)."""
    if not isinstance(key, str):
        return None
    try:
        return dt.date.fromisoformat(key[:10])
    except ValueError:
        return None


def _leaves(
    node: object, depth: int, path: tuple[str, ...]
) -> t.Iterator[tuple[tuple[str, ...], dt.date, float]]:
    """(keys above the dates, date, value) of every number ``depth`` levels under ``node``."""
    if not isinstance(node, dict):
        return
    if depth == 0:
        for key, value in node.items():
            day = _day(key)
            number = value.get("value") if isinstance(value, dict) else value
            if (
                day is not None
                and isinstance(number, (int, float))
                and not isinstance(number, bool)
                and math.isfinite(number)
            ):
                yield path, day, float(number)
        return
    for key, child in node.items():
        if key != OVERALL:
            yield from _leaves(child, depth - 1, (*path, str(key)))


def report_span(answer: object) -> tuple[dt.date, dt.date] | None:
    """The days the answer covers (its ``date_range``), when it says."""
    span = answer.get("date_range") if isinstance(answer, dict) else None
    if not isinstance(span, dict):
        return None
    first, last = _day(span.get("from_date")), _day(span.get("to_date"))
    if first is None or last is None or first > last:
        return None
    return first, last


def report_values(
    answer: object, report_id: int, account_property: str | None
) -> tuple[list[ReportValue], str | None]:
    """The values of an Insights answer, and a warning when they are not per account.

    Values are added up per (account, metric, day). Account ids the store cannot keep are left
    out (they are counted in the warning).
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("series"), dict):
        return [], f"report {report_id}: the answer has no series"
    headers = answer.get("headers")
    levels = len(headers) if isinstance(headers, list) and headers else 1
    at = None
    if account_property is not None and isinstance(headers, list):
        names = [str(h) for h in headers]
        if account_property in names[1:]:
            at = names.index(account_property)
    totals: dict[tuple[str, str, dt.date], float] = {}
    refused = 0
    for path, day, value in _leaves(answer["series"], levels, ()):
        account = ALL_ACCOUNTS if at is None else path[at]
        if at is not None and not storable(account):
            refused += 1
            continue
        metric = clean_text(path[0])[:MAX_KEY]
        key = (account, metric, day)
        totals[key] = totals.get(key, 0.0) + value
    values = [
        ReportValue(account, str(report_id), metric, day, value)
        for (account, metric, day), value in sorted(totals.items())
    ]
    warning = None
    if at is None:
        warning = (
            f"report {report_id} is not broken down by {account_property}: stored for every"
            f" account ({ALL_ACCOUNTS})"
        )
    elif refused:
        warning = f"report {report_id}: {refused} value(s) of account ids the store cannot keep"
    return values, warning
