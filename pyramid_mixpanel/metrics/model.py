"""The typed records the metrics package computes, stores and reads back.

Every record is about an *account* (the customer's own account id, e.g. a ``company_id`` group
key) and holds counts only: no distinct ids, emails or names, hashed or not.
"""

from __future__ import annotations

import datetime as dt
import re
import typing as t
from dataclasses import dataclass, field

__all__ = [
    "MAX_KEY",
    "AccountSummary",
    "Anomaly",
    "AnomalyKind",
    "DailyMetrics",
    "FunnelEntry",
    "FunnelMetrics",
    "FunnelSource",
    "GroupProfile",
    "ProfileAggregate",
    "clean_text",
    "storable",
]

#: The longest account id, funnel id or funnel name the store keeps: its columns are
#: ``VARCHAR(255)`` (PostgreSQL refuses a longer value; SQLite would keep it).
MAX_KEY = 255
#: What no database column takes: NUL (PostgreSQL's text and JSONB refuse it) and the halves of
#: a surrogate pair on their own (``"\ud800"`` in JSON decodes to one; UTF-8 cannot encode it, so
#: neither SQLite nor PostgreSQL can store it).
UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str, limit: int = MAX_KEY) -> bool:
    """Whether ``text`` fits a ``VARCHAR(limit)`` column of every database the store supports.

    At most ``limit`` characters, no NUL, no lone surrogate. Account ids come from event
    properties, which anyone who can send an event controls: one that does not fit must be
    refused before the write, or the write (and every later sync) fails.
    """
    if len(text) > limit:
        return False
    if text.isascii():  # O(1) in CPython: the string knows whether it is ASCII
        return "\x00" not in text
    return UNSTORABLE.search(text) is None


def clean_text(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD, for values stored as JSON."""
    if text.isascii() and "\x00" not in text:
        return text
    return UNSTORABLE.sub("\ufffd", text)


#: Where a funnel's numbers come from: computed here from the export, or pulled from Mixpanel.
FunnelSource = t.Literal["local", "mixpanel"]
#: Which way an account's daily volume left its usual range.
AnomalyKind = t.Literal["spike", "drop"]


@dataclass(frozen=True)
class DailyMetrics:
    """One account's activity on one UTC day."""

    account: str
    date: dt.date
    total_events: int
    unique_users: int
    #: Sessions: a gap of more than 30 minutes between a user's events starts a new one.
    sessions: int
    avg_events_per_user: float
    #: Events per event name.
    event_counts: dict[str, int] = field(default_factory=dict)
    #: Per configured breakdown property: events per property value.
    breakdowns: dict[str, dict[str, int]] = field(default_factory=dict)
    #: 0-100, see :func:`pyramid_mixpanel.metrics.score.engagement_score`.
    engagement_score: float = 0.0
    #: ``"spike"`` or ``"drop"`` when the day's volume is anomalous, else ``None``.
    anomaly: str | None = None
    #: Events per hour of the day, 0 to 23, in the days' timezone (the activity heatmap);
    #: empty for days synced before it was kept.
    hours: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class FunnelMetrics:
    """One funnel's conversion for the users of one account who entered it on one UTC day."""

    account: str
    #: The local funnel's name, or Mixpanel's funnel id as a string.
    funnel_id: str
    funnel_name: str
    date: dt.date
    #: Users who reached each step, first step first.
    steps: list[int]
    source: FunnelSource = "local"

    @property
    def completed_users(self) -> int:
        """Users who reached the last step."""
        return self.steps[-1] if self.steps else 0

    @property
    def conversion_rate(self) -> float:
        """Share of the users who entered (first step) that completed (last step), 0 to 1."""
        return self.completed_users / self.steps[0] if self.steps and self.steps[0] else 0.0

    @property
    def drop_off_step(self) -> int | None:
        """Index of the step that lost the most users (``None`` when no step lost any)."""
        worst, index = 0, None
        for step in range(1, len(self.steps)):
            lost = self.steps[step - 1] - self.steps[step]
            if lost > worst:
                worst, index = lost, step
        return index


@dataclass(frozen=True)
class FunnelEntry:
    """One user's entry into a local funnel on one day, and how far that entry went.

    What makes funnels over a range exact: Mixpanel's "Uniques" funnels count a user once, by
    their first entry in the range (docs/reports/funnels/funnels-advanced, "Counting
    Methods"), which daily rows cannot tell. ``user`` is a pseudonym (a keyed hash, see
    :meth:`~pyramid_mixpanel.metrics.store.MetricsStore.pseudonym`), never the distinct id.
    """

    account: str
    funnel_id: str
    date: dt.date
    user: str
    #: Index of the last step the entry reached (0: entered only).
    reached: int


@dataclass(frozen=True)
class AccountSummary:
    """One account over a range, for the accounts overview."""

    account: str
    #: Events in the range, and in the as many days just before it (the trend).
    events: int
    previous_events: int
    #: The mean of the days' unique users (a daily figure: not the range's unique users).
    mean_daily_users: float
    #: Days of the range with events.
    active_days: int
    #: The engagement score of the account's last day with events in the range.
    score: float | None
    #: Days of the range flagged as anomalous.
    anomalies: int
    #: Profiles that name the account (``None`` without a profile sync).
    known_users: int | None

    @property
    def trend(self) -> float | None:
        """Change of the events against the previous period, as a share.

        ``None`` without events before: nothing to compare with.
        """
        if not self.previous_events:
            return None
        return round(self.events / self.previous_events - 1, 4)


@dataclass(frozen=True)
class GroupProfile:
    """An account's group profile in Mixpanel (Group Analytics): the account is its group id."""

    account: str
    #: The group key whose group the account is (``mixpanel.metrics.group_key``).
    group_key: str
    #: The configured group profile properties (``mixpanel.metrics.group_properties``).
    properties: dict[str, t.Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileAggregate:
    """An account's user profiles, counted: how many, and how many per property value."""

    account: str
    users: int
    #: Per configured profile property: profiles per value.
    properties: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Anomaly:
    """An account-day whose event volume is ``threshold`` or more deviations from its norm."""

    account: str
    date: dt.date
    kind: AnomalyKind
    total_events: int
    #: Mean and (floored) standard deviation of the trailing days' volumes.
    mean: float
    stddev: float
    z: float
    threshold: float
    #: How many trailing days the mean is taken over.
    history_days: int
