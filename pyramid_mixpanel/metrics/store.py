"""Per-account metrics in SQL, through SQLAlchemy: an SQLite file by default, any database URL.

The schema is created and migrated by the Alembic migrations shipped in
``pyramid_mixpanel/metrics/migrations`` (with their own version table, so they can share a
database with the app's own migrations). Writes are idempotent upserts keyed by account and
day: syncing a day twice leaves the same rows. Only counts and account ids are stored.

The sync's write and read methods take an optional ``connection`` (from
:meth:`MetricsStore.begin`), so the sync stores a chunk's days, their funnel rows, their anomaly
flags and their synced mark in one transaction: a sync killed at any point leaves each day's
rows as they were, or as they are meant to be, never half of them. A value that does not fit
its column (an account id over 255 characters, a NUL, a lone surrogate) is refused with
:class:`ValueError` before anything is written, on every database alike (SQLite would store it,
PostgreSQL would fail the transaction).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
import typing as t
from collections import defaultdict
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .connect import Connection
from .model import (
    MAX_KEY,
    AccountSummary,
    Anomaly,
    DailyMetrics,
    FunnelEntry,
    FunnelMetrics,
    GroupProfile,
    ProfileAggregate,
    storable,
)
from .reports import ALL_ACCOUNTS, ReportValue

__all__ = [
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "History",
    "MetricsStore",
    "make_engine",
    "metadata",
    "rank_events",
]


#: Alembic's version table for these migrations (not ``alembic_version``: that is the app's).
VERSION_TABLE = "mixpanel_metrics_alembic_version"
#: Where the migrations live, as Alembic's ``script_location``.
SCRIPT_LOCATION = "pyramid_mixpanel.metrics:migrations"
#: Rows per statement when deleting by a list of keys (SQLite allows 999 parameters in old builds).
BATCH = 500

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
metadata = sa.MetaData()

metrics_table = sa.Table(
    "mixpanel_metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(MAX_KEY), nullable=False),
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
    # Events per hour of the day (24 counts); NULL for days synced before migration 0004.
    sa.Column("hours", Json, nullable=True),
    sa.UniqueConstraint("account", "metric_date", name="uq_mixpanel_metrics_account_date"),
    sa.Index("ix_mixpanel_metrics_metric_date", "metric_date"),
)
funnels_table = sa.Table(
    "mixpanel_funnels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(MAX_KEY), nullable=False),
    sa.Column("funnel_id", sa.String(MAX_KEY), nullable=False),
    sa.Column("funnel_name", sa.String(MAX_KEY), nullable=False),
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
profiles_table = sa.Table(
    "mixpanel_profiles",
    metadata,
    sa.Column("account", sa.String(MAX_KEY), primary_key=True),
    sa.Column("users", sa.Integer, nullable=False),
    sa.Column("properties", Json, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sync_days_table = sa.Table(
    "mixpanel_sync_days",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
)
#: Each user's entry into a local funnel per day, and the step it reached: what makes a funnel
#: over a range exact (a user counts once, by their first entry in the range). ``user_key`` is
#: a keyed hash of the distinct id (:meth:`MetricsStore.pseudonym`), never the id itself.
funnel_entries_table = sa.Table(
    "mixpanel_funnel_entries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(MAX_KEY), nullable=False),
    sa.Column("funnel_id", sa.String(MAX_KEY), nullable=False),
    sa.Column("metric_date", sa.Date, nullable=False),
    sa.Column("user_key", sa.String(64), nullable=False),
    sa.Column("reached", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint(
        "account", "funnel_id", "metric_date", "user_key", name="uq_mixpanel_funnel_entries"
    ),
    sa.Index("ix_mixpanel_funnel_entries_date", "metric_date"),
)
#: Secrets the store makes for itself: the key of the users' pseudonyms.
keys_table = sa.Table(
    "mixpanel_metrics_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
#: Saved Insights reports per account (or ``*``), metric and day (:mod:`.reports`).
reports_table = sa.Table(
    "mixpanel_reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(MAX_KEY), nullable=False),
    sa.Column("report_id", sa.String(64), nullable=False),
    sa.Column("metric", sa.String(MAX_KEY), nullable=False),
    sa.Column("metric_date", sa.Date, nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint(
        "account", "report_id", "metric", "metric_date", name="uq_mixpanel_reports_key"
    ),
)
#: Group profiles per account (Group Analytics): the configured properties, replaced each sync.
group_profiles_table = sa.Table(
    "mixpanel_group_profiles",
    metadata,
    sa.Column("account", sa.String(MAX_KEY), primary_key=True),
    sa.Column("group_key", sa.String(MAX_KEY), nullable=False),
    sa.Column("properties", Json, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
#: The Mixpanel connection made at run time (:mod:`.connect`): one row, ``default``; the
#: secret is Fernet-encrypted.
connections_table = sa.Table(
    "mixpanel_connections",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(255), nullable=False),
    sa.Column("project_id", sa.String(64), nullable=False),
    sa.Column("region", sa.String(8), nullable=False),
    sa.Column("secret", sa.LargeBinary, nullable=False),
    sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
)
#: Mixpanel's per-project query limits, shared by every process of the app: one row per project
#: and limit, holding the recent calls or the held slots (see :mod:`.limits`).
query_limits_table = sa.Table(
    "mixpanel_query_limits",
    metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("state", Json, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
METRICS_KEY = ("account", "metric_date")
FUNNELS_KEY = ("account", "funnel_id", "source", "metric_date")
ENTRIES_KEY = ("account", "funnel_id", "metric_date", "user_key")
#: The name of the pseudonym key in :data:`keys_table`.
PSEUDONYM_KEY = "funnel_user_pseudonym"


@dataclass(frozen=True)
class History:
    """What the anomaly check of one day needs: trailing volumes, synced days, first days."""

    #: Account -> date -> total events, on the trailing days.
    volumes: dict[str, dict[dt.date, int]]
    #: The trailing days that were synced (days without a row count as 0 events).
    synced: list[dt.date]
    #: Account -> its first day with a row.
    first_seen: dict[str, dt.date]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _sqlite_pragmas(connection: t.Any, _record: object) -> None:
    # WAL lets the web app read while a sync writes; a file database only.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get WAL mode so readers never wait for a sync."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def check_sizes(table: sa.Table, rows: t.Iterable[t.Mapping[str, t.Any]]) -> None:
    """Refuse a string that does not fit its ``VARCHAR(n)`` column (see :func:`.model.storable`).

    :raises ValueError: naming the column, never the value (it may be personal data).
    """
    sized = [
        (column.name, column.type.length)
        for column in table.columns
        if isinstance(column.type, sa.String) and column.type.length
    ]
    for row in rows:
        for name, length in sized:
            value = row.get(name)
            if isinstance(value, str) and not storable(value, length):
                raise ValueError(
                    f"{table.name}.{name} takes at most {length} characters and no NUL or lone"
                    f" surrogate: a value of {len(value)} characters does not fit"
                )


def upsert(
    connection: sa.Connection,
    table: sa.Table,
    rows: t.Sequence[dict[str, t.Any]],
    key: t.Sequence[str],
    *,
    portable: bool = False,
) -> None:
    """Insert ``rows``, or update those whose ``key`` columns already exist.

    SQLite and PostgreSQL use ``INSERT ... ON CONFLICT DO UPDATE``; other databases (or
    ``portable=True``) an ``UPDATE`` then an ``INSERT`` for rows the update missed, inside the
    caller's transaction.

    :raises ValueError: a value does not fit its column (:func:`check_sizes`); nothing is
        written.
    """
    if not rows:
        return
    check_sizes(table, rows)
    dialect = connection.dialect.name
    if not portable and dialect in ("sqlite", "postgresql"):
        insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
        statement = insert.on_conflict_do_update(
            index_elements=list(key),
            set_={name: insert.excluded[name] for name in rows[0] if name not in key},
        )
        connection.execute(statement, list(rows))
        return
    for row in rows:
        where = sa.and_(*(table.c[name] == row[name] for name in key))
        values = {name: value for name, value in row.items() if name not in key}
        if not connection.execute(sa.update(table).where(where).values(values)).rowcount:
            connection.execute(sa.insert(table).values(row))


def _user_text(user: object) -> bytes:
    """The bytes a distinct id is hashed from: 5 and 5.0 are one user, as in the aggregator."""
    if isinstance(user, float) and user.is_integer():
        user = int(user)
    text = user if isinstance(user, str) else f"\x00{type(user).__name__}:{user!r}"
    return text.encode("utf-8", "surrogatepass")


def _daily_of(row: t.Any) -> DailyMetrics:
    """A :class:`DailyMetrics` from a row of :data:`metrics_table`."""
    return DailyMetrics(
        account=row.account,
        date=row.metric_date,
        total_events=row.total_events,
        unique_users=row.unique_users,
        sessions=row.sessions,
        avg_events_per_user=row.avg_events_per_user,
        event_counts=dict(row.event_counts),
        breakdowns={k: dict(v) for k, v in row.breakdowns.items()},
        engagement_score=row.engagement_score,
        anomaly=row.anomaly,
        hours=[int(n) for n in row.hours or ()],
    )


def _metrics_row(metrics: DailyMetrics, now: dt.datetime) -> dict[str, t.Any]:
    return {
        "account": metrics.account,
        "metric_date": metrics.date,
        "total_events": metrics.total_events,
        "unique_users": metrics.unique_users,
        "sessions": metrics.sessions,
        "avg_events_per_user": metrics.avg_events_per_user,
        "event_counts": metrics.event_counts,
        "breakdowns": metrics.breakdowns,
        "engagement_score": metrics.engagement_score,
        "anomaly": metrics.anomaly,
        "anomaly_z": None,
        "updated_at": now,
        "hours": list(metrics.hours),
    }


def _funnel_row(funnel: FunnelMetrics, now: dt.datetime) -> dict[str, t.Any]:
    return {
        "account": funnel.account,
        "funnel_id": funnel.funnel_id,
        "funnel_name": funnel.funnel_name,
        "source": funnel.source,
        "metric_date": funnel.date,
        "steps": list(funnel.steps),
        "conversion_rate": round(funnel.conversion_rate, 6),
        "completed_users": funnel.completed_users,
        "drop_off_step": funnel.drop_off_step,
        "updated_at": now,
    }


T = t.TypeVar("T")


def _batches(items: t.Sequence[T]) -> t.Iterator[t.Sequence[T]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def _account_days(
    table: sa.Table, account: str, from_date: dt.date, to_date: dt.date
) -> sa.Select[t.Any]:
    """Rows of ``table`` for one account from ``from_date`` to ``to_date`` (inclusive)."""
    return sa.select(table).where(
        table.c.account == account,
        table.c.metric_date >= from_date,
        table.c.metric_date <= to_date,
    )


def rank_events(days: t.Iterable[DailyMetrics], limit: int = 10) -> list[tuple[str, int]]:
    """The ``limit`` most frequent event names over ``days``, most frequent first."""
    totals: dict[str, int] = defaultdict(int)
    for day in days:
        for name, count in day.event_counts.items():
            totals[name] += count
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]


class MetricsStore:
    """Read and write per-account metrics in the database at ``url``.

    :param url: an SQLAlchemy URL (``sqlite:///mixpanel-metrics.db``,
        ``postgresql+psycopg://user:password@host/db``) or an :class:`sqlalchemy.Engine`.
    :param migrate: bring the schema to the latest version when opening (default), else call
        :meth:`upgrade` yourself.
    """

    def __init__(self, url: str | sa.Engine, *, migrate: bool = True) -> None:
        self._owned = isinstance(url, str)
        self.engine = make_engine(url) if isinstance(url, str) else url
        if migrate:
            self.upgrade()

    def __enter__(self) -> MetricsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool (of an engine this store created)."""
        if self._owned:
            self.engine.dispose()

    def begin(self) -> t.ContextManager[sa.Connection]:
        """One transaction for several writes: pass its connection to them (all or nothing).

        ::

            with store.begin() as connection:
                store.write_days(days, metrics, connection=connection)
                store.mark_synced(counts, connection=connection)
        """
        return self.engine.begin()

    def _writing(self, connection: sa.Connection | None) -> t.ContextManager[sa.Connection]:
        """The caller's transaction, or a new one."""
        return contextlib.nullcontext(connection) if connection is not None else self.begin()

    def _reading(self, connection: sa.Connection | None) -> t.ContextManager[sa.Connection]:
        """The caller's connection (which sees its transaction's writes), or a new one."""
        if connection is not None:
            return contextlib.nullcontext(connection)
        return self.engine.connect()

    # -- schema -----------------------------------------------------------------------------

    def _alembic(self, connection: sa.Connection) -> t.Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", SCRIPT_LOCATION)
        config.attributes["connection"] = connection
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Run the migrations up to ``revision`` (idempotent)."""
        from alembic import command

        with self.engine.begin() as connection:
            command.upgrade(self._alembic(connection), revision)

    def downgrade(self, revision: str) -> None:
        """Run the migrations down to ``revision`` (``"base"`` drops every table)."""
        from alembic import command

        with self.engine.begin() as connection:
            command.downgrade(self._alembic(connection), revision)

    @staticmethod
    def head() -> str:
        """The latest migration revision shipped with this version of pyramid_mixpanel."""
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", SCRIPT_LOCATION)
        return t.cast(str, ScriptDirectory.from_config(config).get_current_head())

    def is_current(self) -> bool:
        """Whether the schema is at :meth:`head` (``pmixpanel migrate`` brings it there)."""
        return self.revision() == self.head()

    def revision(self) -> str | None:
        """The schema's current migration revision (``None`` before the first upgrade)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()

    # -- writing ----------------------------------------------------------------------------

    def write_days(
        self,
        days: t.Sequence[dt.date],
        metrics: t.Sequence[DailyMetrics],
        *,
        connection: sa.Connection | None = None,
    ) -> None:
        """Store the metrics of whole ``days``: upsert their rows, delete their stale rows.

        Accounts that had a row on one of ``days`` but are not in ``metrics`` lose it, so a
        recomputed day is exactly what the latest computation says.
        """
        now = _now()
        table = metrics_table
        with self._writing(connection) as connection:
            upsert(connection, table, [_metrics_row(m, now) for m in metrics], METRICS_KEY)
            fresh: dict[dt.date, set[str]] = defaultdict(set)
            for row in metrics:
                fresh[row.date].add(row.account)
            for day in days:
                stored = connection.execute(
                    sa.select(table.c.account).where(table.c.metric_date == day)
                ).scalars()
                stale = sorted(set(stored) - fresh[day])
                for batch in _batches(stale):
                    connection.execute(
                        sa.delete(table).where(
                            table.c.metric_date == day, table.c.account.in_(batch)
                        )
                    )

    def write_funnels(
        self,
        funnels: t.Sequence[FunnelMetrics],
        *,
        days: t.Sequence[dt.date] = (),
        connection: sa.Connection | None = None,
    ) -> None:
        """Upsert funnel rows (keyed by account, funnel, source and day).

        :param days: days whose local funnel entries were all recomputed: their local rows not
            in ``funnels`` are deleted, as :meth:`write_days` does for metrics.
        """
        now = _now()
        table = funnels_table
        with self._writing(connection) as connection:
            upsert(connection, table, [_funnel_row(f, now) for f in funnels], FUNNELS_KEY)
            fresh = {(f.account, f.funnel_id, f.date) for f in funnels if f.source == "local"}
            for day in days:
                stored = connection.execute(
                    sa.select(table.c.id, table.c.account, table.c.funnel_id).where(
                        table.c.metric_date == day, table.c.source == "local"
                    )
                ).all()
                stale = [row.id for row in stored if (row.account, row.funnel_id, day) not in fresh]
                for batch in _batches(stale):
                    connection.execute(sa.delete(table).where(table.c.id.in_(batch)))

    def write_entries(
        self,
        entries: t.Sequence[FunnelEntry],
        *,
        days: t.Sequence[dt.date] = (),
        connection: sa.Connection | None = None,
    ) -> None:
        """Upsert users' funnel entries (keyed by account, funnel, day and user).

        :param days: days whose entries were all recomputed: their entries not in ``entries``
            are deleted, as :meth:`write_funnels` does for the local rows.
        """
        now = _now()
        table = funnel_entries_table
        rows = [
            {
                "account": e.account,
                "funnel_id": e.funnel_id,
                "metric_date": e.date,
                "user_key": e.user,
                "reached": e.reached,
                "updated_at": now,
            }
            for e in entries
        ]
        with self._writing(connection) as connection:
            for batch in _batches(rows):
                upsert(connection, table, list(batch), ENTRIES_KEY)
            fresh = {(e.account, e.funnel_id, e.date, e.user) for e in entries}
            for day in days:
                stored = connection.execute(
                    sa.select(
                        table.c.id, table.c.account, table.c.funnel_id, table.c.user_key
                    ).where(table.c.metric_date == day)
                ).all()
                stale = [
                    row.id
                    for row in stored
                    if (row.account, row.funnel_id, day, row.user_key) not in fresh
                ]
                for batch in _batches(stale):
                    connection.execute(sa.delete(table).where(table.c.id.in_(batch)))

    def prune(self, before: dt.date) -> int:
        """Delete every row of the days before ``before``; return how many went.

        The data policy (``mixpanel.metrics.retention_days``): daily metrics, funnel rows,
        funnel entries and synced marks. Profile aggregates are not per day and stay.
        """
        deleted = 0
        with self.engine.begin() as connection:
            for table, column in (
                (metrics_table, metrics_table.c.metric_date),
                (funnels_table, funnels_table.c.metric_date),
                (funnel_entries_table, funnel_entries_table.c.metric_date),
                (reports_table, reports_table.c.metric_date),
                (sync_days_table, sync_days_table.c.day),
            ):
                deleted += connection.execute(sa.delete(table).where(column < before)).rowcount
        return deleted

    def forget(self, account: str) -> int:
        """Delete every row of ``account`` (metrics, funnels, entries, profiles); count them."""
        deleted = 0
        with self.engine.begin() as connection:
            for table in (
                metrics_table,
                funnels_table,
                funnel_entries_table,
                reports_table,
                profiles_table,
                group_profiles_table,
            ):
                deleted += connection.execute(
                    sa.delete(table).where(table.c.account == account)
                ).rowcount
        return deleted

    def write_reports(
        self,
        report_id: str,
        values: t.Sequence[ReportValue],
        span: tuple[dt.date, dt.date] | None = None,
    ) -> None:
        """Make ``values`` the stored values of report ``report_id`` on the days it covers.

        ``span``: the days the answer covers (its ``date_range``); without it, those of the
        values. Values stored before on those days and not in ``values`` are deleted.
        """
        now = _now()
        table = reports_table
        rows = [
            {
                "account": v.account,
                "report_id": v.report_id,
                "metric": v.metric,
                "metric_date": v.date,
                "value": v.value,
                "updated_at": now,
            }
            for v in values
        ]
        days = sorted({v.date for v in values})
        if span is None and days:
            span = (days[0], days[-1])
        with self.engine.begin() as db:
            if span is not None:  # the report's days as it answers them now
                db.execute(
                    sa.delete(table).where(
                        table.c.report_id == report_id,
                        table.c.metric_date >= span[0],
                        table.c.metric_date <= span[1],
                    )
                )
            for batch in _batches(rows):
                upsert(db, table, list(batch), ("account", "report_id", "metric", "metric_date"))

    def reports(self, account: str, from_date: dt.date, to_date: dt.date) -> list[ReportValue]:
        """The account's saved-report values over the days, and those for every account."""
        table = reports_table
        query = (
            sa.select(table)
            .where(
                table.c.account.in_([account, ALL_ACCOUNTS]),
                table.c.metric_date >= from_date,
                table.c.metric_date <= to_date,
            )
            .order_by(table.c.report_id, table.c.metric, table.c.metric_date)
        )
        with self.engine.connect() as db:
            return [
                ReportValue(r.account, r.report_id, r.metric, r.metric_date, float(r.value))
                for r in db.execute(query)
            ]

    def replace_group_profiles(self, profiles: t.Sequence[GroupProfile]) -> None:
        """Make the stored group profiles exactly ``profiles``."""
        now = _now()
        table = group_profiles_table
        rows = [
            {
                "account": g.account,
                "group_key": g.group_key,
                "properties": g.properties,
                "updated_at": now,
            }
            for g in profiles
        ]
        with self.engine.begin() as db:
            db.execute(sa.delete(table))
            for batch in _batches(rows):
                upsert(db, table, list(batch), ("account",))

    def group_profile(self, account: str) -> GroupProfile | None:
        """The account's group profile, or ``None``."""
        table = group_profiles_table
        with self.engine.connect() as db:
            row = db.execute(sa.select(table).where(table.c.account == account)).first()
        if row is None:
            return None
        return GroupProfile(row.account, row.group_key, dict(row.properties))

    def save_connection(self, connection: Connection) -> None:
        """Store ``connection`` in place of any other."""
        row = {
            "name": "default",
            "username": connection.username,
            "project_id": connection.project_id,
            "region": connection.region,
            "secret": connection.token,
            "verified_at": connection.verified_at,
        }
        with self.engine.begin() as db:
            upsert(db, connections_table, [row], ("name",))

    def connection(self) -> Connection | None:
        """The stored connection (its secret still encrypted), or ``None``."""
        table = connections_table
        with self.engine.connect() as db:
            row = db.execute(sa.select(table).where(table.c.name == "default")).first()
        if row is None:
            return None
        verified = row.verified_at
        if verified.tzinfo is None:  # SQLite keeps no timezone: stored in UTC
            verified = verified.replace(tzinfo=dt.timezone.utc)
        return Connection(row.username, row.project_id, row.region, verified, bytes(row.secret))

    def delete_connection(self) -> bool:
        """Remove the stored connection; ``False`` when there was none."""
        table = connections_table
        with self.engine.begin() as db:
            return bool(db.execute(sa.delete(table).where(table.c.name == "default")).rowcount)

    def pseudonym(self) -> t.Callable[[object], str]:
        """The function that turns a ``distinct_id`` into the key its funnel entries carry.

        A keyed BLAKE2b hash (128 bits) with a random 256-bit key this store makes once and
        keeps (``mixpanel_metrics_keys``): the same user gets the same key in every sync, the
        distinct id itself is never stored, and without the key the keys cannot be matched to
        ids from elsewhere. (Whoever holds the database and a list of candidate ids can still
        test them: entries are pseudonymous, not anonymous; see ``pmixpanel`` and the docs'
        data policy.)
        """
        table = keys_table
        select = sa.select(table.c.value).where(table.c.name == PSEUDONYM_KEY)
        with self.engine.connect() as connection:
            value = connection.execute(select).scalar()
        if value is None:
            try:
                with self.engine.begin() as connection:
                    value = secrets.token_hex(32)
                    connection.execute(
                        sa.insert(table).values(name=PSEUDONYM_KEY, value=value, created_at=_now())
                    )
            except sa.exc.IntegrityError:  # another process made it first: theirs counts
                with self.engine.connect() as connection:
                    value = connection.execute(select).scalar_one()
        key = bytes.fromhex(value)

        def pseudonym(user: object) -> str:
            return hashlib.blake2b(_user_text(user), key=key, digest_size=16).hexdigest()

        return pseudonym

    def replace_profiles(self, aggregates: t.Sequence[ProfileAggregate]) -> None:
        """Make the profile aggregates exactly ``aggregates`` (accounts not in it are removed)."""
        now = _now()
        table = profiles_table
        rows = [
            {"account": a.account, "users": a.users, "properties": a.properties, "updated_at": now}
            for a in aggregates
        ]
        with self.engine.begin() as connection:
            upsert(connection, table, rows, ("account",))
            stored = connection.execute(sa.select(table.c.account)).scalars()
            stale = sorted(set(stored) - {a.account for a in aggregates})
            for batch in _batches(stale):
                connection.execute(sa.delete(table).where(table.c.account.in_(batch)))

    def mark_synced(
        self, events: t.Mapping[dt.date, int], *, connection: sa.Connection | None = None
    ) -> None:
        """Record days as synced, with the events counted on each."""
        now = _now()
        rows = [{"day": day, "events": count, "synced_at": now} for day, count in events.items()]
        with self._writing(connection) as connection:
            upsert(connection, sync_days_table, rows, ("day",))

    def set_anomalies(
        self,
        day: dt.date,
        anomalies: t.Sequence[Anomaly],
        *,
        connection: sa.Connection | None = None,
    ) -> None:
        """Make ``anomalies`` the day's flags (clearing others).

        A flagged account without a row that day (a day without any event) gets a zero row, so
        the flag is visible.
        """
        table = metrics_table
        now = _now()
        with self._writing(connection) as connection:
            connection.execute(
                sa.update(table)
                .where(table.c.metric_date == day, table.c.anomaly.is_not(None))
                .values(anomaly=None, anomaly_z=None)
            )
            for anomaly in anomalies:
                updated = connection.execute(
                    sa.update(table)
                    .where(table.c.metric_date == day, table.c.account == anomaly.account)
                    .values(anomaly=anomaly.kind, anomaly_z=anomaly.z)
                ).rowcount
                if not updated:
                    row = _metrics_row(DailyMetrics(anomaly.account, day, 0, 0, 0, 0.0), now)
                    row.update(anomaly=anomaly.kind, anomaly_z=anomaly.z)
                    connection.execute(sa.insert(table).values(row))

    # -- reading for the sync ---------------------------------------------------------------

    def history(
        self, day: dt.date, days: int, *, connection: sa.Connection | None = None
    ) -> History:
        """Volumes of the ``days`` days before ``day``, for :func:`~.score.detect_anomaly`."""
        start = day - dt.timedelta(days=days)
        table = metrics_table
        volumes: dict[str, dict[dt.date, int]] = defaultdict(dict)
        with self._reading(connection) as connection:
            rows = connection.execute(
                sa.select(table.c.account, table.c.metric_date, table.c.total_events).where(
                    table.c.metric_date >= start, table.c.metric_date < day
                )
            )
            for account, date, total in rows:
                volumes[account][date] = total
            synced = list(
                connection.execute(
                    sa.select(sync_days_table.c.day)
                    .where(sync_days_table.c.day >= start, sync_days_table.c.day < day)
                    .order_by(sync_days_table.c.day)
                ).scalars()
            )
            # .all(): a Result has keys(), so dict() would take it for a mapping.
            first_seen: dict[str, dt.date] = dict(
                connection.execute(
                    sa.select(table.c.account, sa.func.min(table.c.metric_date))
                    .where(table.c.metric_date <= day)
                    .group_by(table.c.account)
                ).all()
            )
        return History(dict(volumes), synced, first_seen)

    def anomalies_on(
        self, day: dt.date, *, connection: sa.Connection | None = None
    ) -> dict[str, str]:
        """Account -> flag of the day's flagged rows."""
        table = metrics_table
        with self._reading(connection) as connection:
            rows = connection.execute(
                sa.select(table.c.account, table.c.anomaly).where(
                    table.c.metric_date == day, table.c.anomaly.is_not(None)
                )
            ).all()
            return dict(rows)

    def volumes_on(
        self, day: dt.date, *, connection: sa.Connection | None = None
    ) -> dict[str, int]:
        """Account -> events of the day's rows."""
        table = metrics_table
        with self._reading(connection) as connection:
            rows = connection.execute(
                sa.select(table.c.account, table.c.total_events).where(table.c.metric_date == day)
            ).all()
            return dict(rows)

    def last_synced_day(self) -> dt.date | None:
        """The latest day a sync finished (incremental syncs start the day after)."""
        with self.engine.connect() as connection:
            day: dt.date | None = connection.execute(
                sa.select(sa.func.max(sync_days_table.c.day))
            ).scalar()
            return day

    def synced_days(self) -> list[dt.date]:
        """Every synced day, oldest first."""
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    sa.select(sync_days_table.c.day).order_by(sync_days_table.c.day)
                ).scalars()
            )

    # -- reading for dashboards -------------------------------------------------------------

    def has_account(self, account: str) -> bool:
        """True when the account has metrics or profiles (one indexed lookup, not a listing)."""
        query = sa.select(
            sa.or_(
                sa.exists().where(metrics_table.c.account == account),
                sa.exists().where(profiles_table.c.account == account),
            )
        )
        with self.engine.connect() as connection:
            return bool(connection.execute(query).scalar())

    def accounts(self) -> list[str]:
        """Every account with metrics or profiles, sorted."""
        with self.engine.connect() as connection:
            union = sa.union(
                sa.select(metrics_table.c.account), sa.select(profiles_table.c.account)
            ).subquery()
            return list(
                connection.execute(sa.select(union.c.account).order_by(union.c.account)).scalars()
            )

    def overview(self, from_date: dt.date, to_date: dt.date) -> list[AccountSummary]:
        """One summary per account with metrics in the range, or profiles (sorted by account).

        ``events`` and ``previous_events`` (the same number of days just before) give the trend;
        ``mean_daily_users`` is the mean of the days' unique users (a user active on two days
        counts on both: it is a daily figure, not the range's unique users); ``score`` is the
        last day's engagement score; ``anomalies`` the flagged days.
        """
        length = (to_date - from_date).days + 1
        before = from_date - dt.timedelta(days=length)
        table = metrics_table
        current = sa.and_(table.c.metric_date >= from_date, table.c.metric_date <= to_date)
        previous = sa.and_(table.c.metric_date >= before, table.c.metric_date < from_date)
        query = (
            sa.select(
                table.c.account,
                sa.func.sum(sa.case((current, table.c.total_events), else_=0)).label("events"),
                sa.func.sum(sa.case((previous, table.c.total_events), else_=0)).label("before"),
                sa.func.sum(sa.case((current, table.c.unique_users), else_=0)).label("users"),
                sa.func.sum(sa.case((current, 1), else_=0)).label("days"),
                sa.func.sum(
                    sa.case((sa.and_(current, table.c.anomaly.is_not(None)), 1), else_=0)
                ).label("anomalies"),
            )
            .where(table.c.metric_date >= before, table.c.metric_date <= to_date)
            .group_by(table.c.account)
        )
        last = (
            sa.select(table.c.account, sa.func.max(table.c.metric_date).label("day"))
            .where(current)
            .group_by(table.c.account)
            .subquery()
        )
        last_scores = sa.select(table.c.account, table.c.engagement_score).join(
            last, sa.and_(table.c.account == last.c.account, table.c.metric_date == last.c.day)
        )
        with self.engine.connect() as connection:
            rows = {row.account: row for row in connection.execute(query)}
            scores = {a: float(score) for a, score in connection.execute(last_scores).all()}
            profiles = sa.select(profiles_table.c.account, profiles_table.c.users)
            known = {account: int(users) for account, users in connection.execute(profiles)}
        out = []
        for account in sorted(set(rows) | set(known)):
            row = rows.get(account)
            if row is None:  # profiles, but no metrics in these days
                out.append(AccountSummary(account, 0, 0, 0.0, 0, None, 0, known[account]))
                continue
            days = int(row.days)
            out.append(
                AccountSummary(
                    account=account,
                    events=int(row.events),
                    previous_events=int(row.before),
                    mean_daily_users=round(int(row.users) / days, 2) if days else 0.0,
                    active_days=days,
                    score=scores.get(account),
                    anomalies=int(row.anomalies),
                    known_users=known.get(account),
                )
            )
        return out

    def all_daily(self, from_date: dt.date, to_date: dt.date) -> t.Iterator[DailyMetrics]:
        """Every account's daily metrics in the range, by account then day (streamed)."""
        table = metrics_table
        query = (
            sa.select(table)
            .where(table.c.metric_date >= from_date, table.c.metric_date <= to_date)
            .order_by(table.c.account, table.c.metric_date)
        )
        with self.engine.connect() as connection:
            for row in connection.execution_options(yield_per=1000).execute(query):
                yield _daily_of(row)

    def daily(self, account: str, from_date: dt.date, to_date: dt.date) -> list[DailyMetrics]:
        """The account's days from ``from_date`` to ``to_date`` (inclusive) that have a row.

        Days without a row had no events (or were not synced: see :meth:`synced_days`).
        """
        table = metrics_table
        query = _account_days(table, account, from_date, to_date).order_by(table.c.metric_date)
        with self.engine.connect() as connection:
            return [_daily_of(row) for row in connection.execute(query)]

    def top_events(
        self, account: str, from_date: dt.date, to_date: dt.date, limit: int = 10
    ) -> list[tuple[str, int]]:
        """The account's ``limit`` most frequent events over the days, most frequent first."""
        return rank_events(self.daily(account, from_date, to_date), limit)

    def funnels(self, account: str, from_date: dt.date, to_date: dt.date) -> list[FunnelMetrics]:
        """The account's funnel rows over the days, by funnel then day."""
        table = funnels_table
        query = _account_days(table, account, from_date, to_date).order_by(
            table.c.source, table.c.funnel_id, table.c.metric_date
        )
        with self.engine.connect() as connection:
            return [
                FunnelMetrics(
                    account=row.account,
                    funnel_id=row.funnel_id,
                    funnel_name=row.funnel_name,
                    date=row.metric_date,
                    steps=[int(n) for n in row.steps],
                    source=row.source,
                )
                for row in connection.execute(query)
            ]

    def funnel_totals(
        self, account: str, from_date: dt.date, to_date: dt.date
    ) -> list[FunnelMetrics]:
        """Each funnel of the account over the whole range, one entry per funnel.

        Local funnels count unique users exactly, as Mixpanel's "Uniques" funnels do: each user
        once, by their first entry in the range and the step that entry reached. Funnels pulled
        from Mixpanel are stored per day only: their rows are added up (a user who entered on
        several days counts on each), and the result says so (``source = "mixpanel"``; see
        :meth:`funnels` for the days).
        """
        rows = self.funnels(account, from_date, to_date)
        shapes: dict[tuple[str, str], FunnelMetrics] = {}
        summed: dict[tuple[str, str], list[int]] = {}
        key: tuple[str, str]
        for row in rows:
            key = (row.source, row.funnel_id)
            shapes.setdefault(key, row)
            if row.source != "local":
                total = summed.setdefault(key, [0] * len(row.steps))
                for step, users in enumerate(row.steps[: len(total)]):
                    total[step] += users
        reached = self._first_entries(account, from_date, to_date)
        out = []
        for key, shape in sorted(shapes.items(), key=lambda item: (item[1].funnel_name, item[0])):
            if key[0] == "local":
                steps = [0] * len(shape.steps)
                for step, users in reached.get(shape.funnel_id, {}).items():
                    for index in range(min(step + 1, len(steps))):
                        steps[index] += users
            else:
                steps = summed[key]
            out.append(
                FunnelMetrics(
                    account, shape.funnel_id, shape.funnel_name, from_date, steps, shape.source
                )
            )
        return out

    def _first_entries(
        self, account: str, from_date: dt.date, to_date: dt.date
    ) -> dict[str, dict[int, int]]:
        """Funnel -> step -> users whose first entry in the range reached that step."""
        table = funnel_entries_table
        in_range = (
            table.c.account == account,
            table.c.metric_date >= from_date,
            table.c.metric_date <= to_date,
        )
        first = (
            sa.select(
                table.c.funnel_id,
                table.c.user_key,
                sa.func.min(table.c.metric_date).label("first_date"),
            )
            .where(*in_range)
            .group_by(table.c.funnel_id, table.c.user_key)
            .subquery()
        )
        query = (
            sa.select(table.c.funnel_id, table.c.reached, sa.func.count().label("users"))
            .join(
                first,
                sa.and_(
                    table.c.funnel_id == first.c.funnel_id,
                    table.c.user_key == first.c.user_key,
                    table.c.metric_date == first.c.first_date,
                ),
            )
            .where(table.c.account == account)
            .group_by(table.c.funnel_id, table.c.reached)
        )
        found: dict[str, dict[int, int]] = defaultdict(dict)
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                found[row.funnel_id][int(row.reached)] = int(row.users)
        return found

    def users(self, account: str) -> ProfileAggregate | None:
        """The account's profile aggregate (``None`` when no profile names the account)."""
        table = profiles_table
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(table).where(table.c.account == account)).first()
        if row is None:
            return None
        return ProfileAggregate(
            row.account, row.users, {k: dict(v) for k, v in row.properties.items()}
        )
