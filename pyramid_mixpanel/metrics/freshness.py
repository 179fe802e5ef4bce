"""How old the stored metrics are, and the alert when they are older than allowed.

The customer-success PRD counts "data less than 24 hours old" as a success metric. The stored
data reaches the end of the last synced day (in the days' timezone: UTC, or
``mixpanel.project_timezone``); its age is the time since then. A daily sync shortly after
midnight keeps it around an hour old; a sync that stopped running lets it grow past
``mixpanel.metrics.max_age_hours`` (24 by default), and then the alert hook
(``mixpanel.metrics.alert``, the same one as for anomalies) is called with the
:class:`Freshness`, or a warning ``mixpanel.metrics_stale`` is logged without one.
"""

from __future__ import annotations

import datetime as dt
import typing as t
import zoneinfo
from dataclasses import dataclass

from ..log import Log
from .score import send_alert

if t.TYPE_CHECKING:
    from .config import MetricsSettings
    from .store import MetricsStore

__all__ = ["Freshness", "alert_if_stale", "freshness"]

_LOG = Log()


@dataclass(frozen=True)
class Freshness:
    """The age of the stored metrics."""

    #: The last day synced (``None``: nothing yet).
    last_synced_day: dt.date | None
    #: Hours since the end of that day (``None``: nothing synced).
    age_hours: float | None
    max_age_hours: int

    @property
    def stale(self) -> bool:
        """Nothing synced yet, or older than ``max_age_hours``."""
        return self.age_hours is None or self.age_hours > self.max_age_hours

    # What an alert hook written for anomalies reads, so one hook serves both.
    @property
    def kind(self) -> str:
        """``"stale"`` (an :class:`~.model.Anomaly` is a ``spike`` or a ``drop``)."""
        return "stale"

    @property
    def account(self) -> str:
        """``"*"``: every account's data is as old."""
        return "*"

    @property
    def date(self) -> dt.date | None:
        """The last synced day."""
        return self.last_synced_day

    def as_dict(self) -> dict[str, t.Any]:
        """For JSON answers: the fields and ``stale``."""
        day = self.last_synced_day
        return {
            "last_synced_day": day.isoformat() if day else None,
            "age_hours": self.age_hours,
            "max_age_hours": self.max_age_hours,
            "stale": self.stale,
        }


def freshness(
    store: MetricsStore,
    max_age_hours: int,
    timezone: str = "UTC",
    now: dt.datetime | None = None,
) -> Freshness:
    """The age of ``store``'s data: hours since the end of its last synced day."""
    last = store.last_synced_day()
    if last is None:
        return Freshness(None, None, max_age_hours)
    zone = zoneinfo.ZoneInfo(timezone)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    moment = now or dt.datetime.now(dt.timezone.utc)
    age = max(0.0, (moment - end).total_seconds() / 3600)
    return Freshness(last, round(age, 2), max_age_hours)


def alert_if_stale(state: Freshness, settings: MetricsSettings, log: Log = _LOG) -> bool:
    """Call the alert hook (or log a warning) when ``state`` is stale; ``True`` if it was."""
    if not state.stale:
        return False
    send_alert(state, settings, log)
    return True
