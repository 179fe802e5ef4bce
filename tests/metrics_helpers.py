"""Shared helpers of the metrics tests: events, settings, dotted-name targets."""

from __future__ import annotations

import datetime as dt
import typing as t
from dataclasses import dataclass, field

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
ALERTS: list[t.Any] = []  # anomalies, and stale-data alerts (Freshness)


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


# -- a query client without HTTP ----------------------------------------------------------------


@dataclass
class ListChunk:
    """An export chunk over a list: events (dicts) and raw lines (bytes or str) alike."""

    from_date: dt.date
    to_date: dt.date
    items: list[object]

    def events(self) -> t.Iterator[t.Any]:
        return iter(self.items)


@dataclass
class ListQuery:
    """A :class:`~pyramid_mixpanel.metrics.sync.QueryClient` serving ``events`` from memory.

    ``raw`` adds lines, as they are, to the chunk starting on a day; ``fail_on`` raises when
    the chunk starting on that day is asked for (an interrupted sync).
    """

    events: list[dict[str, t.Any]]
    raw: dict[dt.date, list[object]] = field(default_factory=dict)
    fail_on: dt.date | None = None

    def export_chunks(
        self,
        from_date: dt.date,
        to_date: dt.date,
        events: t.Sequence[str] | None = None,
        where: str | None = None,
        *,
        chunk_days: int = 7,
    ) -> t.Iterator[ListChunk]:
        start = from_date
        while start <= to_date:
            last = min(to_date, start + dt.timedelta(days=chunk_days - 1))
            if start == self.fail_on:
                raise RuntimeError(f"interrupted before {start}")
            items: list[object] = [
                e
                for e in self.events
                if start <= utc_day(e) <= last and (events is None or e["event"] in events)
            ]
            items += self.raw.get(start, [])
            yield ListChunk(start, last, items)
            start = last + dt.timedelta(days=1)

    def engage(
        self,
        where: str | None = None,
        output_properties: t.Sequence[str] | None = None,
        *,
        cohort_id: int | None = None,
        data_group_id: int | None = None,
    ) -> t.Iterator[dict[str, t.Any]]:
        return iter(())

    def funnels(self) -> list[dict[str, t.Any]]:
        return []

    def insights(self, bookmark_id: int | str) -> t.Any:
        return {}

    def funnel(
        self,
        funnel_id: int,
        from_date: dt.date,
        to_date: dt.date,
        *,
        unit: str = "day",
        on: str | None = None,
        limit: int | None = None,
    ) -> dict[str, t.Any]:
        return {}


def utc_day(event: t.Mapping[str, t.Any]) -> dt.date:
    """The UTC day of an event's ``time``."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(event["properties"]["time"]) // DAY)


def local_settings(database: str, **extra: str) -> dict[str, str]:
    """Metrics settings for a sync with :class:`ListQuery` (no Mixpanel calls beyond export)."""
    return {
        "mixpanel.metrics.database_url": database,
        "mixpanel.metrics.account_property": "company_id",
        "mixpanel.metrics.breakdowns": "plan",
        "mixpanel.metrics.funnels": "Signup: Page Viewed > User Signed Up > Plan Upgraded",
        "mixpanel.metrics.funnel_window_hours": "48",
        "mixpanel.metrics.profile_account_property": "off",
        "mixpanel.metrics.alert": "tests.metrics_helpers.record_alert",
        **{f"mixpanel.metrics.{k}": v for k, v in extra.items()},
    }
