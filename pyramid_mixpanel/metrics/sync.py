"""Sync Mixpanel into the metrics store: backfill a range of days, or resume day by day.

One sync:

1. picks its days: ``from_date``..``to_date`` when given; otherwise from the day after the last
   synced day (or ``days`` back from yesterday on a first run) to yesterday. Days are the
   export's: UTC days, or for a project created before 2023-01-01 days of the project's timezone
   (``mixpanel.project_timezone``, docs/export-methods), and a day is synced only once it is
   over there;
2. when local funnels are configured, re-reads the funnel events of the ``lookback_days`` before
   the first day, so entries still inside their window are completed by the new days;
3. exports the days in chunks of ``chunk_days`` (Mixpanel allows 60 exports an hour),
   aggregates each chunk and stores it at once (whole days, upserted: a re-run recomputes the
   same rows and never adds to them): in one transaction its days' metrics, their local funnel
   rows (those whose window is still open counted where their users stand, completed by later
   chunks), their anomaly flags and their synced mark, so a sync killed at any point leaves
   every day as it was or as it is now, and resumes after the last stored chunk. An event
   exported twice (the export is not deduplicated) is counted once. A malformed line is skipped
   and counted (a chunk with too many fails the sync: :class:`MalformedExportError`), an
   account id the store cannot keep is refused and counted (see
   :mod:`~pyramid_mixpanel.metrics.aggregate`);
4. pulls the saved funnels broken down by the account property, asking Mixpanel for as many
   values as it gives (:data:`SAVED_FUNNEL_LIMIT`), and reports (and logs) a funnel whose
   answer may have been cut there; then the profile aggregates.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import typing as t
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass, field

from .._extras import require
from ..exceptions import MixpanelError
from ..log import Log
from ..settings import parse_query_settings
from .aggregate import (
    AggregateStats,
    Aggregator,
    ChunkResult,
    aggregate_profiles,
    group_profiles,
    storable_accounts,
)
from .config import MetricsSettings, parse_metrics_settings
from .connect import settings_with
from .freshness import Freshness, alert_if_stale, freshness
from .lines import chunk_lines, parse_line
from .model import MAX_KEY, Anomaly, FunnelMetrics, clean_text
from .reports import report_span, report_values
from .score import detect_anomaly, send_alert
from .store import MetricsStore

if t.TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "MALFORMED_GRACE",
    "MALFORMED_SHARE",
    "MAX_MALFORMED",
    "SAVED_FUNNEL_LIMIT",
    "ExportChunkLike",
    "MalformedExportError",
    "QueryClient",
    "SyncError",
    "SyncReport",
    "plan_days",
    "sync",
]


ONE_DAY = dt.timedelta(days=1)
#: The account of a cohort's members: ``cohort:<id>`` (``mixpanel.metrics.cohorts``).
COHORT_PREFIX = "cohort:"
#: Segments of a broken-down Mixpanel funnel that are not an account.
NOT_ACCOUNTS = frozenset({"$overall", "undefined", "null", "None", ""})
#: How many values of the account property a saved funnel's breakdown asks for: Mixpanel's
#: maximum (reference/funnels-query: the top ``limit`` values, 255 unless asked, at most
#: 10,000). The answer holds only the values that occur, so asking for all costs nothing, and
#: the accounts of the funnel's days cannot be known before (some may have events only in the
#: lookback days, or the store may be new).
SAVED_FUNNEL_LIMIT = 10_000
#: An export chunk fails the sync when more than this many of its lines are malformed (found
#: while reading: the rest of the chunk is not read)...
MAX_MALFORMED = 1000
#: ... or when more than :data:`MALFORMED_GRACE` of its lines and more than this share of them
#: are. A few odd lines are someone's bad data, skipped; many are a broken export or a changed
#: format, and a sync that skipped them would store numbers that look right and are not.
MALFORMED_SHARE = 0.01
MALFORMED_GRACE = 10
#: How many malformed lines the error names (line number and reason, never the line).
MALFORMED_EXAMPLES = 5


class ExportChunkLike(t.Protocol):
    """What :class:`~pyramid_mixpanel.query.ExportChunk` offers the sync.

    The sync reads an ``ExportChunk``'s lines itself (:func:`~.lines.chunk_lines`); of another
    chunk it takes ``events()``, which may also give raw lines (``bytes`` or ``str``): either
    is checked by :func:`~.lines.parse_line`.
    """

    @property
    def from_date(self) -> dt.date: ...  # noqa: D102

    @property
    def to_date(self) -> dt.date: ...  # noqa: D102

    def events(self) -> t.Iterator[dict[str, t.Any]]: ...  # noqa: D102


class QueryClient(t.Protocol):
    """The part of :class:`~pyramid_mixpanel.query.MixpanelQuery` the sync uses."""

    def export_chunks(  # noqa: D102
        self,
        from_date: dt.date,
        to_date: dt.date,
        events: t.Sequence[str] | None = None,
        where: str | None = None,
        *,
        chunk_days: int = 7,
    ) -> t.Iterator[ExportChunkLike]: ...

    def engage(  # noqa: D102
        self,
        where: str | None = None,
        output_properties: t.Sequence[str] | None = None,
        *,
        cohort_id: int | None = None,
        data_group_id: int | None = None,
    ) -> t.Iterator[dict[str, t.Any]]: ...

    def funnels(self) -> list[dict[str, t.Any]]: ...  # noqa: D102

    def insights(self, bookmark_id: int | str) -> t.Any: ...  # noqa: D102

    def funnel(  # noqa: D102
        self,
        funnel_id: int,
        from_date: dt.date,
        to_date: dt.date,
        *,
        unit: str = "day",
        on: str | None = None,
        limit: int | None = None,
    ) -> dict[str, t.Any]: ...


class SyncError(MixpanelError, ValueError):
    """The requested days cannot be synced (e.g. a day that is not over yet)."""


class MalformedExportError(SyncError):
    """Too many lines of an export chunk are malformed (see :data:`MAX_MALFORMED`).

    Nothing of the chunk's days is stored; the days before them are.
    """


@dataclass
class SyncReport:
    """What a sync did."""

    #: The synced days (both ``None`` when everything was already up to date).
    from_date: dt.date | None = None
    to_date: dt.date | None = None
    days: int = 0
    #: Events counted for an account, without an account, and outside their chunk's days.
    events: int = 0
    unattributed: int = 0
    outside: int = 0
    #: Events exported twice (same name, ``distinct_id``, ``time`` and ``$insert_id``), counted
    #: once.
    duplicates: int = 0
    #: Export lines skipped as malformed (not JSON, no event name, a ``time`` that is not a
    #: number...: :data:`~pyramid_mixpanel.metrics.lines.MALFORMED_REASONS`).
    malformed: int = 0
    #: Account ids refused because the store cannot keep them (over 255 characters, a NUL, a
    #: lone surrogate), from events, saved funnels and profiles.
    rejected_accounts: int = 0
    #: Breakdown and profile values over 255 characters, counted as ``(too long)``.
    long_values: int = 0
    metrics_rows: int = 0
    funnel_rows: int = 0
    profile_accounts: int = 0
    #: Values of saved reports stored.
    report_values: int = 0
    #: Accounts whose group profile was stored.
    group_profiles: int = 0
    #: ``cohort:<id>`` -> its members, as Mixpanel listed them for this sync.
    cohort_members: dict[str, int] = field(default_factory=dict)
    #: Rows deleted by the data policy (``mixpanel.metrics.retention_days``), and the first day
    #: kept.
    pruned: int = 0
    kept_from: dt.date | None = None
    #: The data's age after the sync (``None`` before the check ran).
    freshness: Freshness | None = None
    #: Anomalies newly flagged by this sync (the alert hook was called for each).
    anomalies: list[Anomaly] = field(default_factory=list)
    #: Saved funnels or profiles Mixpanel refused (the days are stored regardless).
    errors: list[str] = field(default_factory=list)
    #: What was stored but may be incomplete, e.g. a saved funnel cut at Mixpanel's limit.
    warnings: list[str] = field(default_factory=list)
    #: The timezone of the days (``mixpanel.project_timezone``).
    timezone: str = "UTC"

    @property
    def ok(self) -> bool:
        """True when nothing was refused."""
        return not self.errors

    def summary(self) -> str:
        """One line for people."""
        if self.from_date is None:
            return "metrics are up to date: nothing to sync"
        zone = "" if self.timezone == "UTC" else f" ({self.timezone})"
        text = (
            f"synced {self.days} day(s) {self.from_date} to {self.to_date}{zone}:"
            f" {self.events} events,"
            f" {self.metrics_rows} account-day(s), {self.funnel_rows} funnel row(s),"
            f" {self.profile_accounts} account profile aggregate(s),"
            f" {len(self.anomalies)} new anomaly flag(s)"
        )
        if self.pruned:
            text += f"; {self.pruned} row(s) before {self.kept_from} were deleted (retention)"
        if self.unattributed:
            text += f"; {self.unattributed} events without an account were skipped"
        if self.outside:
            text += f"; {self.outside} events outside their export days were skipped"
        if self.duplicates:
            text += f"; {self.duplicates} duplicate events (same $insert_id) were counted once"
        if self.malformed:
            text += f"; {self.malformed} malformed export line(s) were skipped"
        if self.rejected_accounts:
            text += (
                f"; {self.rejected_accounts} account id(s) over {MAX_KEY} characters (or holding"
                " a NUL or a lone surrogate) were skipped"
            )
        if self.long_values:
            text += (
                f"; {self.long_values} value(s) over {MAX_KEY} characters were counted as"
                " (too long)"
            )
        if self.warnings:
            text += f"; {len(self.warnings)} warning(s): " + "; ".join(self.warnings)
        if self.errors:
            text += f"; {len(self.errors)} error(s): " + "; ".join(self.errors)
        return text


def _date(value: dt.date | str | None, name: str) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SyncError(f"{name} must be a date as YYYY-MM-DD, got {value!r}") from None


def plan_days(
    store: MetricsStore,
    from_date: dt.date | None,
    to_date: dt.date | None,
    days: int | None,
    today: dt.date,
    timezone: str = "UTC",
) -> tuple[dt.date, dt.date]:
    """The first and last day to sync (first after last when there is nothing to do).

    Without ``from_date``: the day after the last synced day, but no more than ``days`` days
    back when ``days`` is given; on a first run, ``days`` (default 1) days back.

    :param today: the current date in ``timezone``, the timezone of the export's days: only days
        before it are over there.
    """
    yesterday = today - ONE_DAY
    last = to_date or yesterday
    if last > yesterday:
        raise SyncError(
            f"cannot sync {last}: only days that are over in {timezone} can be synced (the last"
            f" is {yesterday})"
        )
    if days is not None and days < 1:
        raise SyncError(f"days must be at least 1, got {days}")
    if from_date is not None:
        if from_date > last:
            raise SyncError(f"from_date {from_date} is after to_date {last}")
        return from_date, last
    resume = store.last_synced_day()
    earliest = last - dt.timedelta(days=(days or 1) - 1)
    if resume is None:
        return earliest, last
    first = resume + ONE_DAY
    return (max(first, earliest) if days is not None else first), last


def _funnel_name(name: str) -> str:
    """A saved funnel's name, cut to fit its column (marked with an ellipsis).

    Unlike an account id the name is no key (the funnel id is), only what people read: cut,
    it still says which funnel it is.
    """
    name = clean_text(name)
    return name if len(name) <= MAX_KEY else name[: MAX_KEY - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _saved_funnel_rows(
    answer: t.Mapping[str, t.Any],
    funnel_id: int,
    name: str,
    stats: AggregateStats | None = None,
) -> list[FunnelMetrics]:
    """Rows of a Mixpanel funnel answer broken down by the account property (``on=``).

    A segment is a value of the account property: one the store cannot keep is refused (and
    counted in ``stats``), as in events.
    """
    rows: list[FunnelMetrics] = []
    name = _funnel_name(name)
    for date, segments in sorted((answer.get("data") or {}).items()):
        day = dt.date.fromisoformat(date)
        for segment, body in sorted(segments.items()):
            if segment in NOT_ACCOUNTS or not isinstance(body, dict) or "steps" not in body:
                continue
            steps = [int(step.get("count", 0)) for step in body["steps"]]
            accounts, refused = storable_accounts(segment)
            if stats is not None:
                stats.rejected_accounts += refused
            rows.extend(
                FunnelMetrics(account, str(funnel_id), name, day, steps, "mixpanel")
                for account in accounts
            )
    return rows


def _segments(answer: t.Mapping[str, t.Any]) -> int:
    """How many values of the ``on`` property a funnel answer holds, over all its days."""
    found: set[str] = set()
    for segments in (answer.get("data") or {}).values():
        if isinstance(segments, dict):
            found.update(segments)
    found.discard("$overall")  # not a value: the total, when Mixpanel adds it
    return len(found)


class _Lines:
    """Decode one chunk's lines: skip and count the malformed ones, refuse a chunk of many."""

    def __init__(self, chunk: ExportChunkLike) -> None:
        self.first, self.last = chunk.from_date, chunk.to_date
        self.lines = 0
        self.malformed = 0
        #: The first few malformed lines, as ``line N: reason`` (no content: it may be PII).
        self.examples: list[str] = []

    def events(self, lines: t.Iterable[object]) -> t.Iterator[dict[str, t.Any]]:
        """The well-formed events of ``lines``, in order.

        :raises MalformedExportError: more than :data:`MAX_MALFORMED` lines are malformed.
        """
        number = 0
        for number, line in enumerate(lines, 1):
            event = parse_line(line)
            if isinstance(event, dict):
                yield event
                continue
            self.malformed += 1
            if len(self.examples) < MALFORMED_EXAMPLES:
                self.examples.append(f"line {number}: {event}")
            if self.malformed > MAX_MALFORMED:
                raise self.error(f"more than {MAX_MALFORMED:,}", f"in its first {number:,} lines")
        self.lines = number

    def check(self) -> None:
        """Refuse the whole chunk when too large a share of its lines were malformed.

        :raises MalformedExportError: more than :data:`MALFORMED_GRACE` lines and more than
            :data:`MALFORMED_SHARE` of them.
        """
        if self.malformed > max(MALFORMED_GRACE, MALFORMED_SHARE * self.lines):
            limit = f"more than {MALFORMED_GRACE} and {MALFORMED_SHARE:.0%} of them"
            raise self.error(limit, f"of {self.lines:,}")

    def error(self, limit: str, among: str) -> MalformedExportError:
        return MalformedExportError(
            f"the export of {self.first} to {self.last} has {self.malformed:,} malformed lines"
            f" {among} (the limit: {limit}): "
            + "; ".join(self.examples)
            + ". Nothing of these days was stored (the days before them were)."
        )


class _Sync:
    def __init__(
        self,
        config: MetricsSettings,
        store: MetricsStore,
        query: QueryClient,
        bar: t.Any,
        log: Log,
        timezone: str = "UTC",
    ) -> None:
        self.log = log
        self.config = config
        self.store = store
        self.query = query
        self.bar = bar
        self.report = SyncReport(timezone=timezone)
        # Users' funnel entries carry the store's keyed pseudonym, never their distinct id.
        self.aggregator = Aggregator(config, store.pseudonym() if config.funnels else None)
        #: distinct_id -> the cohorts (accounts) it belongs to, for this sync.
        self.members: dict[object, tuple[str, ...]] = {}

    def run(self, first: dt.date, last: dt.date) -> SyncReport:
        config, report = self.config, self.report
        # Cohorts as they are now: their members' events count for them on every synced day.
        self.members = self._members() if config.cohorts else {}
        report.from_date, report.to_date = first, last
        lookback = config.lookback_days
        if config.funnels:
            for chunk in self.query.export_chunks(
                first - dt.timedelta(days=lookback),
                first - ONE_DAY,
                self.aggregator.funnel_events,
                chunk_days=config.chunk_days,
            ):
                result = self.aggregator.add_chunk(
                    chunk.from_date, chunk.to_date, self._events(chunk), metrics=False
                )
                self._funnels(result)
        for chunk in self.query.export_chunks(first, last, chunk_days=config.chunk_days):
            self._chunk(chunk)
        # The rows of the entries still open are already stored (with their days); these are
        # the same numbers, now final for this run.
        self._funnels(self.aggregator.finish_result())
        if config.saved_funnels:
            self._saved_funnels(first - dt.timedelta(days=lookback), last)
        if config.reports:
            self._reports()
        if config.profile_account_property:
            self._profiles()
        if config.group_properties:
            self._group_profiles()
        stats = self.aggregator.stats
        report.events, report.unattributed, report.outside, report.duplicates = (
            stats.events,
            stats.unattributed,
            stats.outside,
            stats.duplicates,
        )
        report.rejected_accounts, report.long_values = stats.rejected_accounts, stats.long_values
        if report.malformed or report.rejected_accounts or report.long_values:
            self.log.warning(
                "mixpanel.metrics_input_skipped",
                malformed_lines=report.malformed,
                rejected_accounts=report.rejected_accounts,
                long_values=report.long_values,
            )
        return report

    def _events(self, chunk: ExportChunkLike) -> t.Iterator[dict[str, t.Any]]:
        """The chunk's well-formed events; the malformed lines are counted once it is read.

        With cohorts, an event of a member also counts for ``cohort:<id>``: the account
        property becomes a list (its own account, then the member's cohorts).
        """
        lines = _Lines(chunk)
        members = self.members
        if not members:
            yield from lines.events(chunk_lines(chunk))
        else:
            prop = t.cast(str, self.config.account_property)
            for event in lines.events(chunk_lines(chunk)):
                props = event["properties"]
                user = props.get("distinct_id")
                cohorts = members.get(user) if isinstance(user, (str, int)) else None
                if cohorts:
                    value = props.get(prop)
                    own = value if isinstance(value, list) else [] if value is None else [value]
                    props[prop] = [*own, *cohorts]
                yield event
        lines.check()
        self.report.malformed += lines.malformed

    def _members(self) -> dict[object, tuple[str, ...]]:
        """distinct_id -> the ``cohort:<id>`` accounts it belongs to (in memory only)."""
        from ..query import MixpanelQueryError

        members: dict[object, tuple[str, ...]] = {}
        for cohort in self.config.cohorts:
            name = f"{COHORT_PREFIX}{cohort}"
            try:
                profiles = list(self.query.engage(output_properties=[], cohort_id=cohort))
            except MixpanelQueryError as exc:
                self.report.errors.append(f"cohort {cohort}: {exc}")
                continue
            for profile in profiles:
                user = profile.get("$distinct_id")
                if isinstance(user, (str, int)):
                    members[user] = (*members.get(user, ()), name)
            self.report.cohort_members[name] = len(profiles)
        return members

    def _chunk(self, chunk: ExportChunkLike) -> None:
        days = []
        day = chunk.from_date
        while day <= chunk.to_date:
            days.append(day)
            day += ONE_DAY
        result = self.aggregator.add_chunk(chunk.from_date, chunk.to_date, self._events(chunk))
        counted: dict[dt.date, int] = defaultdict(int)
        for metrics in result.daily:
            counted[metrics.date] += metrics.total_events
        store = self.store
        new: list[Anomaly] = []
        # One transaction for everything of these days: their metrics; their local funnel rows,
        # the settled ones and those still open (counted where their users stand: stored now,
        # a sync stopped before they settle still leaves them; later chunks complete them);
        # their anomaly flags; their synced mark. A sync killed anywhere leaves each day as it
        # was before or as it is now, never without its funnel rows.
        with store.begin() as connection:
            before = {day: store.anomalies_on(day, connection=connection) for day in days}
            store.write_days(days, result.daily, connection=connection)
            store.write_funnels(
                result.funnels + result.open_funnels, days=days, connection=connection
            )
            store.write_entries(
                result.entries + result.open_entries, days=days, connection=connection
            )
            store.mark_synced({day: counted[day] for day in days}, connection=connection)
            for day in days:
                new += self._anomalies(day, before[day], connection)
        self.report.funnel_rows += len(result.funnels)
        self.report.metrics_rows += len(result.daily)
        self.report.days += len(days)
        # Alerts once the flags are committed: a rolled-back flag is never alerted.
        for anomaly in new:
            self.report.anomalies.append(anomaly)
            send_alert(anomaly, self.config, self.log)
        self.bar.update(len(days))
        self.bar.set_postfix(events=self.aggregator.stats.events, refresh=False)

    def _funnels(self, result: ChunkResult) -> None:
        """Store settled funnel rows and their entries.

        Those of the days before the sync, of its end, or of a saved funnel.
        """
        with self.store.begin() as connection:
            self.store.write_funnels(result.funnels, connection=connection)
            self.store.write_entries(result.entries, connection=connection)
        self.report.funnel_rows += len(result.funnels)

    def _anomalies(
        self, day: dt.date, before: t.Mapping[str, str], connection: sa.Connection
    ) -> list[Anomaly]:
        """Store the day's flags; return those that are new (a re-run finds the same ones)."""
        config, store = self.config, self.store
        history = store.history(day, config.anomaly_days, connection=connection)
        volumes = store.volumes_on(day, connection=connection)
        found = []
        for account in sorted(set(volumes) | set(history.volumes)):
            since = history.first_seen[account]
            past = history.volumes.get(account, {})
            values = [past.get(synced, 0) for synced in history.synced if synced >= since]
            anomaly = detect_anomaly(account, day, volumes.get(account, 0), values, config)
            if anomaly is not None:
                found.append(anomaly)
        store.set_anomalies(day, found, connection=connection)
        return [anomaly for anomaly in found if before.get(anomaly.account) != anomaly.kind]

    def _saved_funnels(self, first: dt.date, last: dt.date) -> None:
        from ..query import MixpanelQueryError

        prop = t.cast(str, self.config.account_property)
        on = f"properties[{json.dumps(prop)}]"
        try:
            names = {int(f["funnel_id"]): str(f["name"]) for f in self.query.funnels()}
        except MixpanelQueryError as exc:
            self.report.errors.append(f"listing saved funnels: {exc}")
            names = {}
        limit = SAVED_FUNNEL_LIMIT
        for funnel_id in self.config.saved_funnels:
            try:
                answer = self.query.funnel(funnel_id, first, last, unit="day", on=on, limit=limit)
            except MixpanelQueryError as exc:
                self.report.errors.append(f"saved funnel {funnel_id}: {exc}")
                continue
            name = names.get(funnel_id, str(funnel_id))
            rows = _saved_funnel_rows(answer, funnel_id, name, self.aggregator.stats)
            self._funnels(ChunkResult(funnels=rows))
            segments = _segments(answer)
            if segments >= limit:
                # Mixpanel keeps the top ``limit`` values and drops the rest without a word.
                self.report.warnings.append(
                    f"saved funnel {funnel_id}: Mixpanel returned {segments} values of {prop},"
                    f" its limit: accounts beyond those may be missing"
                )
                self.log.warning(
                    "mixpanel.metrics_funnel_limit_reached",
                    funnel_id=funnel_id,
                    property=prop,
                    values=segments,
                    limit=limit,
                )

    def _group_profiles(self) -> None:
        """Store each account's group profile (Engage with ``data_group_id``)."""
        from ..query import MixpanelQueryError

        config = self.config
        try:
            found = group_profiles(
                self.query.engage(
                    output_properties=list(config.group_properties),
                    data_group_id=config.data_group_id,
                ),
                config,
                self.aggregator.stats,
            )
        except MixpanelQueryError as exc:
            self.report.errors.append(f"group profiles: {exc}")
            return
        self.store.replace_group_profiles(found)
        self.report.group_profiles = len(found)

    def _reports(self) -> None:
        """Pull each saved report's current result and store its values."""
        from ..query import MixpanelQueryError

        for report_id in self.config.reports:
            try:
                answer = self.query.insights(report_id)
            except MixpanelQueryError as exc:
                self.report.errors.append(f"saved report {report_id}: {exc}")
                continue
            values, warning = report_values(answer, report_id, self.config.account_property)
            if warning is not None:
                self.report.warnings.append(warning)
            self.store.write_reports(str(report_id), values, report_span(answer))
            self.report.report_values += len(values)

    def _profiles(self) -> None:
        from ..query import MixpanelQueryError

        config = self.config
        wanted = [t.cast(str, config.profile_account_property), *config.profile_properties]
        try:
            aggregates = aggregate_profiles(
                self.query.engage(output_properties=wanted), self.config, self.aggregator.stats
            )
        except MixpanelQueryError as exc:
            self.report.errors.append(f"profiles: {exc}")
            return
        self.store.replace_profiles(aggregates)
        self.report.profile_accounts = len(aggregates)


def sync(
    settings: t.Mapping[str, object],
    from_date: dt.date | str | None = None,
    to_date: dt.date | str | None = None,
    days: int | None = None,
    progress: bool = True,
    query: QueryClient | None = None,
    *,
    store: MetricsStore | None = None,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
    out: t.TextIO | None = None,
) -> SyncReport:
    """Sync Mixpanel's events, funnels and profiles into the metrics store.

    :param settings: the app's settings (``mixpanel.metrics.*`` and the service account).
    :param from_date: first day (``YYYY-MM-DD`` or a date) of a backfill; without it, the sync
        resumes after the last synced day.
    :param to_date: last day; yesterday by default, never later (in the timezone of the
        export's days: UTC, or ``mixpanel.project_timezone``).
    :param days: without ``from_date``: how many days back at most (a first run starts there;
        default 1).
    :param progress: show a progress bar (on ``out``, default stderr).
    :param query: a :class:`~pyramid_mixpanel.query.MixpanelQuery` (built from ``settings`` by
        default).
    :param store: the store (by default opened, migrated and closed at ``database_url``).
    :param today: the current date in that timezone (for tests; by default from ``now``).
    :param now: the current time (for tests; an aware datetime).
    :raises SyncError: the days cannot be synced.
    :raises MixpanelConfigurationError: a ``mixpanel.metrics.*`` setting is invalid.
    :raises MixpanelQueryError: Mixpanel refused an export (the days before it are stored; run
        again to resume).
    """
    config = parse_metrics_settings(settings)
    query_settings = parse_query_settings(settings)
    log = Log(query_settings.secrets, query_settings.structlog)
    start, end = _date(from_date, "from_date"), _date(to_date, "to_date")
    timezone = query_settings.project_timezone
    # "Yesterday" where the export's days are: in a project west of UTC, UTC's yesterday may
    # still be going on there, and a day synced before its end would be stored short.
    zone = zoneinfo.ZoneInfo(timezone)
    if now is None and today is not None:
        # A given "today" without a time: its first moment (the freshness is measured then).
        now = dt.datetime.combine(today, dt.time(), tzinfo=zone)
    moment = now or dt.datetime.now(dt.timezone.utc)
    today = today or moment.astimezone(zone).date()
    opened = store is None
    store = store if store is not None else MetricsStore(config.database_url)
    try:
        first, last = plan_days(store, start, end, days, today, timezone)
        if first > last:
            report = SyncReport()
        else:
            report = _run(settings, config, store, query, (first, last), progress, out, log)
        if config.retention_days is not None:
            # The policy counts back from the newest stored day, not from today: a sync that
            # stopped running for a while never deletes the last data there is.
            # (There is one: a sync marks every day it covers, and one with nothing to do
            # follows a sync up to yesterday.)
            newest = t.cast(dt.date, store.last_synced_day())
            report.kept_from = newest - dt.timedelta(days=config.retention_days - 1)
            report.pruned = store.prune(report.kept_from)
        report.freshness = freshness(store, config.max_age_hours, timezone, moment)
        alert_if_stale(report.freshness, config, log)
        return report
    finally:
        if opened:
            store.close()


def _run(
    settings: t.Mapping[str, object],
    config: MetricsSettings,
    store: MetricsStore,
    query: QueryClient | None,
    days: tuple[dt.date, dt.date],
    progress: bool,
    out: t.TextIO | None,
    log: Log,
) -> SyncReport:
    """Export, aggregate and store the ``days``."""
    tqdm = require("tqdm", "metrics", "pmixpanel sync").tqdm
    first, last = days
    timezone = parse_query_settings(settings).project_timezone
    if query is None:
        from ..query import MixpanelQuery

        query_settings = parse_query_settings(settings)
        stored = store.connection()
        if not (query_settings.has_service_account or query_settings.api_secret) and stored:
            # No credentials in the settings: the connection made through the connect
            # endpoint, its secret decrypted with mixpanel.metrics.secret_key.
            if config.secret_key is None:
                raise SyncError(
                    "a Mixpanel connection is stored but mixpanel.metrics.secret_key is not set:"
                    " it is needed to decrypt the secret"
                )
            settings = settings_with(settings, stored, config.secret_key)
        try:
            query = MixpanelQuery(settings)
        except ValueError as exc:  # no service account configured
            raise SyncError(str(exc)) from None
    total = (last - first).days + 1
    with tqdm(
        total=total, unit="day", file=out or sys.stderr, disable=not progress, desc="sync"
    ) as bar:
        return _Sync(config, store, query, bar, log, timezone).run(first, last)
