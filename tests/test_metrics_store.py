"""The metrics store on SQLite and on a real PostgreSQL: migrations, idempotent upserts, reads."""

from __future__ import annotations

import datetime as dt
import io
import pathlib
import secrets
import typing as t

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from pyramid_mixpanel.metrics import (
    Anomaly,
    DailyMetrics,
    FunnelEntry,
    FunnelMetrics,
    MetricsStore,
    ProfileAggregate,
)
from pyramid_mixpanel.metrics.connect import Connection
from pyramid_mixpanel.metrics.model import AccountSummary
from pyramid_mixpanel.metrics.store import (
    PSEUDONYM_KEY,
    SCRIPT_LOCATION,
    VERSION_TABLE,
    funnel_entries_table,
    keys_table,
    metadata,
    metrics_table,
    upsert,
)

from .metrics_helpers import day
from .postgres import PostgresServer, postgres  # noqa: F401  # the fixture

NOW = dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc)

TABLES = {
    "mixpanel_metrics",
    "mixpanel_funnels",
    "mixpanel_profiles",
    "mixpanel_sync_days",
    "mixpanel_query_limits",
    "mixpanel_funnel_entries",
    "mixpanel_metrics_keys",
    "mixpanel_connections",
    "mixpanel_reports",
    "mixpanel_group_profiles",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metrics.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.database()


@pytest.fixture
def store(url: str) -> t.Iterator[MetricsStore]:
    with MetricsStore(url) as opened:
        yield opened


def metrics(account: str, n: int, total: int = 10, **extra: t.Any) -> DailyMetrics:
    values: dict[str, t.Any] = {
        "account": account,
        "date": day(n),
        "total_events": total,
        "unique_users": 2,
        "sessions": 3,
        "avg_events_per_user": total / 2,
        "event_counts": {"Page Viewed": total - 1, "Report Exported": 1},
        "breakdowns": {"plan": {"pro": total}},
        "engagement_score": 42.5,
    }
    values.update(extra)
    return DailyMetrics(**values)


def rows(store: MetricsStore, table: sa.Table) -> list[dict[str, t.Any]]:
    with store.engine.connect() as connection:
        found = connection.execute(sa.select(table).order_by(*table.primary_key.columns))
        return [
            {k: v for k, v in row._mapping.items() if k not in ("id", "updated_at", "synced_at")}
            for row in found
        ]


# -- schema -----------------------------------------------------------------------------------


def test_upgrade_from_empty_and_down_again(url: str) -> None:
    with MetricsStore(url, migrate=False) as store:
        assert store.revision() is None
        assert not TABLES & set(sa.inspect(store.engine).get_table_names())
        store.upgrade()
        store.upgrade()  # idempotent
        assert store.revision() == "0007" == store.head()
        names = set(sa.inspect(store.engine).get_table_names())
        assert TABLES | {VERSION_TABLE} <= names
        assert "alembic_version" not in names  # the app's own table name stays free
        store.downgrade("0006")  # the group profiles go
        assert "mixpanel_group_profiles" not in sa.inspect(store.engine).get_table_names()
        store.downgrade("0005")  # the saved reports go
        assert "mixpanel_reports" not in sa.inspect(store.engine).get_table_names()
        store.downgrade("0004")  # the connection goes
        assert "mixpanel_connections" not in sa.inspect(store.engine).get_table_names()
        store.downgrade("0003")  # the hours go
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("mixpanel_metrics")}
        assert "hours" not in columns and "anomaly" in columns
        store.downgrade("0002")  # the funnel entries and keys go
        assert set(sa.inspect(store.engine).get_table_names()) & TABLES == TABLES - {
            "mixpanel_funnel_entries",
            "mixpanel_metrics_keys",
            "mixpanel_connections",
            "mixpanel_reports",
            "mixpanel_group_profiles",
        }
        store.downgrade("0001")  # the query limits go, the metrics stay
        assert set(sa.inspect(store.engine).get_table_names()) & TABLES == TABLES - {
            "mixpanel_query_limits",
            "mixpanel_funnel_entries",
            "mixpanel_metrics_keys",
            "mixpanel_connections",
            "mixpanel_reports",
            "mixpanel_group_profiles",
        }
        store.downgrade("base")
        assert store.revision() is None
        assert not TABLES & set(sa.inspect(store.engine).get_table_names())


def test_migrated_schema_matches_the_code(store: MetricsStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_the_alembic_command_line_works_too(tmp_path: pathlib.Path) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("sqlalchemy.url", database)
    command.upgrade(config, "head")
    assert MetricsStore(database, migrate=False).revision() == "0007"
    # Offline mode prints the SQL for a DBA instead of running it.
    buffer = io.StringIO()
    offline = Config(output_buffer=buffer)
    offline.set_main_option("script_location", SCRIPT_LOCATION)
    offline.set_main_option("sqlalchemy.url", "postgresql://db.invalid/metrics")
    command.upgrade(offline, "head", sql=True)
    assert "CREATE TABLE mixpanel_metrics" in buffer.getvalue()
    assert "CREATE TABLE mixpanel_query_limits" in buffer.getvalue()
    assert "JSONB" in buffer.getvalue()


def test_sqlite_files_use_wal_and_memory_databases_work(tmp_path: pathlib.Path) -> None:
    with (
        MetricsStore(f"sqlite:///{tmp_path / 'wal.db'}") as store,
        store.engine.connect() as connection,
    ):
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    with MetricsStore("sqlite://") as memory:
        memory.write_days([day(0)], [metrics("acme", 0)])
        assert memory.accounts() == ["acme"]


def test_a_given_engine_is_not_disposed(tmp_path: pathlib.Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    disposed: list[object] = []
    sa.event.listen(engine.pool, "close", lambda *a: disposed.append(a))
    with MetricsStore(engine) as store:
        store.write_days([day(0)], [metrics("acme", 0)])
    assert disposed == []
    assert MetricsStore(engine, migrate=False).accounts() == ["acme"]
    engine.dispose()


# -- writing ----------------------------------------------------------------------------------


def test_writing_days_twice_leaves_the_same_rows(store: MetricsStore) -> None:
    days = [day(0), day(1)]
    batch = [metrics("acme", 0), metrics("globex", 0, total=4), metrics("acme", 1, total=7)]
    store.write_days(days, batch)
    first = rows(store, metrics_table)
    store.write_days(days, batch)
    assert rows(store, metrics_table) == first
    assert len(first) == 3
    assert store.daily("acme", day(0), day(1)) == [batch[0], batch[2]]


def test_a_recomputed_day_replaces_its_rows(store: MetricsStore) -> None:
    store.write_days(
        [day(0), day(1)], [metrics("acme", 0), metrics("globex", 0), metrics("acme", 1)]
    )
    store.write_days([day(0)], [metrics("acme", 0, total=99)])
    assert [
        (r["account"], r["metric_date"], r["total_events"]) for r in rows(store, metrics_table)
    ] == [
        ("acme", day(0), 99),
        ("acme", day(1), 10),
    ]


def test_many_stale_accounts_are_deleted_in_batches(store: MetricsStore) -> None:
    store.write_days([day(0)], [metrics(f"a{n:04}", 0) for n in range(1203)])
    store.write_days([day(0)], [metrics("a0007", 0)])
    assert store.accounts() == ["a0007"]


def test_portable_upsert(store: MetricsStore) -> None:
    table = metrics_table
    row = {
        "account": "acme",
        "metric_date": day(0),
        "total_events": 1,
        "unique_users": 1,
        "sessions": 1,
        "avg_events_per_user": 1.0,
        "event_counts": {},
        "breakdowns": {},
        "engagement_score": 0.0,
        "anomaly": None,
        "anomaly_z": None,
        "updated_at": sa.func.now(),
    }
    with store.engine.begin() as connection:
        upsert(connection, table, [row], ("account", "metric_date"), portable=True)
        upsert(
            connection,
            table,
            [dict(row, total_events=5)],
            ("account", "metric_date"),
            portable=True,
        )
        upsert(connection, table, [], ("account", "metric_date"))
    assert [r.total_events for r in store.daily("acme", day(0), day(0))] == [5]


def test_funnels_upsert_per_account_funnel_source_and_day(store: MetricsStore) -> None:
    local = FunnelMetrics("acme", "Signup", "Signup", day(0), [10, 5, 2])
    saved = FunnelMetrics("acme", "Signup", "Saved signup", day(0), [8, 8], "mixpanel")
    store.write_funnels([local, saved])
    store.write_funnels([local, saved])
    store.write_funnels([FunnelMetrics("acme", "Signup", "Signup", day(0), [10, 6, 3])])
    store.write_funnels([FunnelMetrics("globex", "Signup", "Signup", day(1), [1, 0, 0])])
    found = store.funnels("acme", day(0), day(5))
    assert found == [
        FunnelMetrics("acme", "Signup", "Signup", day(0), [10, 6, 3], "local"),
        saved,
    ]
    with store.engine.connect() as connection:
        stored = connection.execute(
            sa.text(
                "SELECT conversion_rate, completed_users, drop_off_step FROM mixpanel_funnels"
                " WHERE account = 'acme' AND source = 'local'"
            )
        ).one()
    assert tuple(stored) == (0.3, 3, 1)
    assert store.funnels("acme", day(1), day(5)) == []


def test_profiles_are_replaced_as_a_whole(store: MetricsStore) -> None:
    store.replace_profiles(
        [ProfileAggregate("acme", 3, {"plan": {"pro": 3}}), ProfileAggregate("old", 1, {})]
    )
    store.replace_profiles([ProfileAggregate("acme", 4, {"plan": {"pro": 3, "free": 1}})])
    assert store.users("acme") == ProfileAggregate("acme", 4, {"plan": {"pro": 3, "free": 1}})
    assert store.users("old") is None
    assert store.accounts() == ["acme"]


def test_sync_state(store: MetricsStore) -> None:
    assert store.last_synced_day() is None
    store.mark_synced({day(0): 10, day(1): 0})
    store.mark_synced({day(1): 5, day(2): 7})
    assert store.last_synced_day() == day(2)
    assert store.synced_days() == [day(0), day(1), day(2)]


def anomaly(account: str, n: int, kind: t.Literal["spike", "drop"] = "spike") -> Anomaly:
    return Anomaly(account, day(n), kind, 0, 100.0, 10.0, -10.0 if kind == "drop" else 5.0, 3.0, 7)


def test_anomaly_flags(store: MetricsStore) -> None:
    store.write_days([day(5)], [metrics("acme", 5), metrics("globex", 5)])
    store.set_anomalies(day(5), [anomaly("acme", 5), anomaly("initech", 5, "drop")])
    assert store.anomalies_on(day(5)) == {"acme": "spike", "initech": "drop"}
    # An account flagged without events that day gets a zero row carrying the flag.
    assert store.daily("initech", day(5), day(5)) == [
        DailyMetrics("initech", day(5), 0, 0, 0, 0.0, anomaly="drop")
    ]
    assert store.volumes_on(day(5)) == {"acme": 10, "globex": 10, "initech": 0}
    store.set_anomalies(day(5), [anomaly("globex", 5)])
    assert store.anomalies_on(day(5)) == {"globex": "spike"}


def test_history(store: MetricsStore) -> None:
    store.write_days([day(0)], [metrics("old", 0)])
    store.write_days([day(3), day(4)], [metrics("acme", 3, total=5), metrics("acme", 4, total=6)])
    store.write_days([day(10)], [metrics("acme", 10), metrics("new", 10)])
    store.mark_synced({day(n): 1 for n in (0, 3, 4, 6, 10)})
    history = store.history(day(10), 7)
    assert history.volumes == {"acme": {day(3): 5, day(4): 6}}
    assert history.synced == [day(3), day(4), day(6)]
    assert history.first_seen == {"old": day(0), "acme": day(3), "new": day(10)}


# -- reading ----------------------------------------------------------------------------------


def test_reads(store: MetricsStore) -> None:
    store.write_days(
        [day(0), day(1), day(2)],
        [
            metrics("acme", 0, event_counts={"B": 2, "A": 1}),
            metrics("acme", 1, event_counts={"C": 5, "A": 2}),
            metrics("acme", 2, event_counts={"D": 100}),
            metrics("globex", 1),
        ],
    )
    store.replace_profiles([ProfileAggregate("zeta", 1, {})])
    assert store.accounts() == ["acme", "globex", "zeta"]
    assert store.has_account("acme") and store.has_account("zeta")  # metrics; profiles only
    assert not store.has_account("nobody")
    assert [m.date for m in store.daily("acme", day(0), day(1))] == [day(0), day(1)]
    assert store.daily("nobody", day(0), day(9)) == []
    assert store.top_events("acme", day(0), day(1)) == [("C", 5), ("A", 3), ("B", 2)]
    assert store.top_events("acme", day(0), day(1), limit=2) == [("C", 5), ("A", 3)]
    assert store.users("acme") is None


# -- funnels over a range ---------------------------------------------------------------------


def entry(user: str, n: int, reached: int, account: str = "acme") -> FunnelEntry:
    return FunnelEntry(account, "Signup", day(n), user, reached)


def test_funnels_over_a_range_count_each_user_once(store: MetricsStore) -> None:
    # u1 entered on days 0 (reached step 1) and 2 (completed); u2 on day 1 (entered only); u3
    # on day 2 (completed); u4 of another account.
    store.write_funnels(
        [
            FunnelMetrics("acme", "Signup", "Signup", day(0), [1, 1, 0]),
            FunnelMetrics("acme", "Signup", "Signup", day(1), [1, 0, 0]),
            FunnelMetrics("acme", "Signup", "Signup", day(2), [2, 2, 2]),
            FunnelMetrics("acme", "7", "Saved", day(0), [3, 1], "mixpanel"),
            FunnelMetrics("acme", "7", "Saved", day(1), [2, 2], "mixpanel"),
        ]
    )
    acme = [entry("u1", 0, 1), entry("u2", 1, 0), entry("u1", 2, 2), entry("u3", 2, 2)]
    store.write_entries([*acme, entry("u4", 0, 2, "globex")])
    saved, local = store.funnel_totals("acme", day(0), day(2))
    # u1 by their first entry (day 0: step 1), not their later completion; u2; u3.
    assert (local.funnel_name, local.steps, local.date) == ("Signup", [3, 2, 1], day(0))
    # Saved funnels have no users: their daily rows are added up, and marked as Mixpanel's.
    assert (saved.funnel_name, saved.steps, saved.source) == ("Saved", [5, 3], "mixpanel")
    [later] = [f for f in store.funnel_totals("acme", day(1), day(2)) if f.source == "local"]
    assert later.steps == [3, 2, 2]  # u1 now by their day-2 entry
    assert store.funnel_totals("acme", day(5), day(6)) == []


def test_entries_of_recomputed_days_are_replaced(store: MetricsStore) -> None:
    store.write_entries([entry("u1", 0, 0), entry("u2", 0, 1), entry("u1", 1, 0)])
    store.write_entries([entry("u1", 0, 2)], days=[day(0)])  # u2's day-0 entry is gone
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                funnel_entries_table.c.user_key,
                funnel_entries_table.c.metric_date,
                funnel_entries_table.c.reached,
            ).order_by(funnel_entries_table.c.metric_date)
        ).all()
    assert [tuple(row) for row in rows] == [("u1", day(0), 2), ("u1", day(1), 0)]


def test_the_pseudonym_is_keyed_stable_and_never_the_id(url: str) -> None:
    with MetricsStore(url) as store, MetricsStore(url) as same:
        pseudonym = store.pseudonym()
        assert pseudonym("user-42") == same.pseudonym()("user-42")
        assert len(pseudonym("user-42")) == 32 and "user-42" not in pseudonym("user-42")
        assert pseudonym(5) == pseudonym(5.0) != pseudonym("5")
        assert pseudonym("a\udc00") != pseudonym("a")


def test_two_stores_have_unrelated_pseudonyms(tmp_path: pathlib.Path) -> None:
    with (
        MetricsStore(f"sqlite:///{tmp_path / 'a.db'}") as first,
        MetricsStore(f"sqlite:///{tmp_path / 'b.db'}") as second,
    ):
        assert first.pseudonym()("user-42") != second.pseudonym()("user-42")


def test_a_key_made_by_another_process_meanwhile_is_the_one_used(
    store: MetricsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = "ab" * 32

    def made_elsewhere(size: int) -> str:
        # Between this process's look and its insert, another one stored its key.
        with store.engine.begin() as connection:
            connection.execute(
                sa.insert(keys_table).values(name=PSEUDONYM_KEY, value=theirs, created_at=NOW)
            )
        return "cd" * size

    monkeypatch.setattr(secrets, "token_hex", made_elsewhere)
    pseudonym = store.pseudonym()
    monkeypatch.undo()
    assert pseudonym("u") == store.pseudonym()("u")
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(keys_table.c.value)).scalar_one() == theirs


def test_the_accounts_overview(store: MetricsStore) -> None:
    store.write_days(
        [day(0), day(1), day(2), day(3)],
        [
            metrics("acme", 0, total=10, unique_users=4, engagement_score=20.0),
            metrics("acme", 2, total=30, unique_users=2, engagement_score=55.0, anomaly="spike"),
            metrics("acme", 3, total=5, unique_users=1, engagement_score=99.0),  # after the range
            metrics("globex", 0, total=7, unique_users=1),
        ],
    )
    store.replace_profiles([ProfileAggregate("acme", 5), ProfileAggregate("initech", 3)])
    acme, globex, initech = store.overview(day(1), day(2))
    assert (acme.events, acme.previous_events, acme.trend) == (30, 10, 2.0)
    assert (acme.mean_daily_users, acme.active_days, acme.score) == (2.0, 1, 55.0)
    assert (acme.anomalies, acme.known_users) == (1, 5)
    # globex: events only in the period before: no days now, its trend -100 %.
    assert (globex.events, globex.previous_events, globex.trend) == (0, 7, -1.0)
    assert (globex.mean_daily_users, globex.score, globex.known_users) == (0.0, None, None)
    assert initech == AccountSummary("initech", 0, 0, 0.0, 0, None, 0, 3)
    assert initech.trend is None
    assert [d.date for d in store.all_daily(day(0), day(2))] == [day(0), day(2), day(0)]


def test_the_stored_connection_round_trips(store: MetricsStore) -> None:
    assert store.connection() is None
    when = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.timezone.utc)
    first = Connection("sa.user", "4242", "eu", when, b"encrypted-bytes")
    store.save_connection(first)
    assert store.connection() == first  # an aware time back, on SQLite and PostgreSQL
    second = Connection("sa.other", "7", "us", when + dt.timedelta(hours=1), b"other")
    store.save_connection(second)
    assert store.connection() == second  # one connection: the new one replaces it
    assert store.delete_connection() is True
    assert (store.connection(), store.delete_connection()) == (None, False)
