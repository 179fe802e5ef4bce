"""Shared helpers of the metrics tests: events, settings, dotted-name targets."""

from __future__ import annotations

import datetime as dt
import typing as t

from pyramid_mixpanel.metrics import Anomaly

DAY = 86_400
JAN1 = dt.date(2026, 1, 1)
T0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp())


def event(
    name: str, user: str | None, seconds: float, account: object = "acme", **props: object
) -> dict[str, t.Any]:
    """An exported event ``seconds`` after 2026-01-01 00:00 UTC."""
    properties: dict[str, t.Any] = {"time": T0 + seconds, "$insert_id": f"{name}-{user}-{seconds}"}
    if user is not None:
        properties["distinct_id"] = user
    if account is not None:
        properties["company_id"] = account
    properties.update(props)
    return {"event": name, "properties": properties}


def day(n: int) -> dt.date:
    """2026-01-01 plus ``n`` days."""
    return JAN1 + dt.timedelta(days=n)


#: What :func:`record_alert` received.
ALERTS: list[Anomaly] = []


def record_alert(anomaly: Anomaly) -> None:
    """A ``mixpanel.metrics.alert`` target."""
    ALERTS.append(anomaly)


def failing_alert(anomaly: Anomaly) -> None:
    """A ``mixpanel.metrics.alert`` target that raises."""
    raise RuntimeError("pager is down")


def account_from_path(event: t.Mapping[str, t.Any]) -> str | None:
    """A ``mixpanel.metrics.account_getter`` target: the account is the first path segment."""
    path = event["properties"].get("path", "")
    return path.strip("/").split("/")[0] or None


NOT_CALLABLE = 42
