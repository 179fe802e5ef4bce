"""Sync end to end: the real query client against the loopback Mixpanel, into SQLite/PostgreSQL.

Backfill, incremental resume, re-runs that change nothing, anomalies alerted once, saved funnels
and profiles, refusals, and ``pmixpanel sync`` from an .ini file.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import pathlib
import sys
import typing as t

import pytest
import sqlalchemy as sa

from pyramid_mixpanel.metrics import (
    DailyMetrics,
    FunnelMetrics,
    MetricsStore,
    ProfileAggregate,
    SyncError,
    SyncReport,
    aggregate_events,
    parse_metrics_settings,
    sync,
)
from pyramid_mixpanel.metrics.freshness import Freshness
from pyramid_mixpanel.metrics.store import metadata
from pyramid_mixpanel.metrics.sync import _saved_funnel_rows, _segments, plan_days
from pyramid_mixpanel.query import MixpanelQuery, MixpanelQueryError
from pyramid_mixpanel.query_limits import QueryLimits
from pyramid_mixpanel.scripts.pmixpanel import main

from . import metrics_helpers
from .ini import LOGGING, app  # noqa: F401  # app: the .ini files name it here
from .metrics_helpers import DAY, JAN1, day, event
from .postgres import PostgresServer, postgres  # noqa: F401  # the fixture
from .query_standin import QueryStandIn, RateLimits

FUNNEL = ("Page Viewed", "User Signed Up", "Plan Upgraded")


def email(user: str) -> str:
    return f"{user}@mail.example"


def user_id(n: int) -> str:
    return f"did-{n:04d}-7f3a"


def day_events(
    n: int, account: str, count: int, users: int, first_user: int = 0
) -> list[dict[str, t.Any]]:
    """``count`` events of ``account`` on day ``n``, spread over ``users`` users and the day."""
    out = []
    for index in range(count):
        user = user_id(first_user + index % users)
        name = FUNNEL[0] if index % 3 else "Report Exported"
        moment = n * DAY + (index * 7919) % DAY
        out.append(
            event(
                name,
                user,
                moment,
                account,
                plan=("pro", "free")[index % 2],
                **{"$email": email(user)},
            )
        )
    return out


def dataset(days: range) -> list[dict[str, t.Any]]:
    events: list[dict[str, t.Any]] = []
    for n in days:
        if n == 14:
            acme = 200  # a spike
        elif n == 15:
            acme = 0  # a drop to nothing
        else:
            acme = 90 + (n * 7) % 21
        events += day_events(n, "acme", acme, users=12)
        events += day_events(n, "globex", 20, users=4, first_user=100)
        if n >= 10:
            events += day_events(n, "initech", 50, users=5, first_user=200)
        # A signup funnel that needs the next day to complete, for one acme user a day.
        signup = user_id(300 + n)
        events += [
            event("Page Viewed", signup, n * DAY + DAY - 600, "acme"),
            event("User Signed Up", signup, n * DAY + DAY - 300, "acme"),
            event("Plan Upgraded", signup, n * DAY + DAY + 3600, "acme"),
        ]
        events.append(event("Page Viewed", user_id(999), n * DAY + 5, account=None))
    return [e for e in events if e["properties"]["time"] < days.stop * DAY + metrics_helpers.T0]


PROFILES = [
    {
        "$distinct_id": user_id(n),
        "$properties": {
            "company_id": "acme",
            "plan": "pro",
            "$email": email(user_id(n)),
            "$name": "Ann Example",
        },
    }
    for n in range(3)
] + [
    {
        "$distinct_id": user_id(100),
        "$properties": {"company_id": "globex", "$email": email(user_id(100))},
    },
    {"$distinct_id": user_id(999), "$properties": {"$email": email(user_id(999))}},
]


@pytest.fixture
def api() -> t.Iterator[QueryStandIn]:
    with QueryStandIn() as server:
        # The clients of these tests lift the client-side budgets (tested with the query
        # client): Mixpanel's are lifted too, so no 429 is answered here.
        server.limits = RateLimits(None, None, None, None, None)
        server.profiles = list(PROFILES)
        server.saved_funnels = {7: {"name": "Saved signup", "steps": list(FUNNEL)}}
        yield server


def client(api: QueryStandIn) -> MixpanelQuery:
    unlimited = QueryLimits(
        queries_per_hour=10**6, exports_per_hour=10**6, exports_per_second=10**6
    )
    return MixpanelQuery(api.settings(), limits=unlimited)


def app_settings(api: QueryStandIn, database: str, **extra: str) -> dict[str, str]:
    return api.settings(
        **{
            "mixpanel.metrics.database_url": database,
            "mixpanel.metrics.account_property": "company_id",
            "mixpanel.metrics.breakdowns": "plan",
            "mixpanel.metrics.funnels": "Signup: " + " > ".join(FUNNEL),
            "mixpanel.metrics.funnel_window_hours": "48",
            "mixpanel.metrics.saved_funnels": "7",
            "mixpanel.metrics.signals": "Report Exported = reporting\nPage Viewed = core",
            "mixpanel.metrics.weights": "reporting = 3",
            "mixpanel.metrics.alert": "tests.metrics_helpers.record_alert",
            "mixpanel.metrics.profile_properties": "plan",
            **{f"mixpanel.metrics.{k}": v for k, v in extra.items()},
        }
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metrics.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.database()


def dump(store: MetricsStore) -> dict[str, list[dict[str, t.Any]]]:
    """Every table's rows, without ids and timestamps.

    Each store has its own pseudonym key: the users' keys are left out of the entries (sorted
    without them), and their number is kept.
    """
    out = {}
    with store.engine.connect() as connection:
        for table in metadata.sorted_tables:
            if table.name == "mixpanel_metrics_keys":
                continue
            found = connection.execute(sa.select(table).order_by(*table.c)).mappings()
            out[table.name] = [
                {k: v for k, v in row.items() if k not in ("id", "updated_at", "synced_at")}
                for row in found
            ]
    entries = out["mixpanel_funnel_entries"]
    users = {row.pop("user_key") for row in entries}
    entries.sort(key=lambda row: tuple(row.values()))
    out["funnel users"] = [{"count": len(users)}]
    return out


# -- planning the days ------------------------------------------------------------------------


def test_plan_days(tmp_path: pathlib.Path) -> None:
    with MetricsStore(f"sqlite:///{tmp_path / 'plan.db'}") as store:
        today = day(20)
        assert plan_days(store, None, None, None, today) == (day(19), day(19))
        assert plan_days(store, None, None, 5, today) == (day(15), day(19))
        assert plan_days(store, day(2), day(4), None, today) == (day(2), day(4))
        assert plan_days(store, None, day(9), 3, today) == (day(7), day(9))
        store.mark_synced({day(10): 1})
        assert plan_days(store, None, None, None, today) == (day(11), day(19))
        assert plan_days(store, None, None, 4, today) == (day(16), day(19))
        assert plan_days(store, None, None, 30, today) == (day(11), day(19))
        store.mark_synced({day(19): 1})
        first, last = plan_days(store, None, None, None, today)
        assert first > last
        with pytest.raises(SyncError, match="cannot sync 2026-01-21: only days that are over"):
            plan_days(store, None, day(20), None, today)
        with pytest.raises(SyncError, match="days must be at least 1, got 0"):
            plan_days(store, None, None, 0, today)
        with pytest.raises(SyncError, match="from_date 2026-01-05 is after to_date 2026-01-04"):
            plan_days(store, day(4), day(3), None, today)


def test_nothing_to_do_and_bad_dates(api: QueryStandIn, tmp_path: pathlib.Path) -> None:
    settings = app_settings(api, f"sqlite:///{tmp_path / 'm.db'}")
    report = sync(
        settings, "2026-01-01", "2026-01-01", query=client(api), progress=False, today=day(5)
    )
    assert report.days == 1
    # Resuming the next day with nothing new: up to date, nothing asked of Mixpanel.
    asked = len(api.requests)
    again = sync(settings, query=client(api), progress=False, today=day(1))
    assert again.freshness is not None and again.freshness.last_synced_day == day(0)
    assert dataclasses.replace(again, freshness=None) == SyncReport()
    assert again.summary() == "metrics are up to date: nothing to sync"
    assert len(api.requests) == asked
    with pytest.raises(SyncError, match="from_date must be a date as YYYY-MM-DD, got 'Jan 1'"):
        sync(settings, "Jan 1", query=client(api), today=day(5))
    del settings["mixpanel.service_account.secret"], settings["mixpanel.service_account.username"]
    del settings["mixpanel.service_account.project_id"]
    with pytest.raises(SyncError, match="MixpanelQuery needs mixpanel.service_account.username"):
        sync(settings, "2026-01-02", "2026-01-02", progress=False, today=day(5))


# -- backfill, resume, re-run -----------------------------------------------------------------


def test_backfill_then_resume_then_rerun(api: QueryStandIn, database: str) -> None:
    everything = dataset(range(22))
    api.events = [e for e in everything if e["properties"]["time"] < metrics_helpers.T0 + 20 * DAY]
    settings = app_settings(api, database)
    config = parse_metrics_settings(settings)
    metrics_helpers.ALERTS.clear()
    out = io.StringIO()

    with MetricsStore(database) as store:
        backfill = sync(
            settings, day(0), day(19), query=client(api), store=store, out=out, today=day(30)
        )
        assert (backfill.from_date, backfill.to_date, backfill.days) == (day(0), day(19), 20)
        assert "sync: 100%" in out.getvalue()
        # Exports: the funnel lookback (2 days, funnel events only), then 7-day chunks.
        exports = [r["params"] for r in api.requests if r["path"] == "/api/2.0/export"]
        assert [(p["from_date"], p["to_date"], p.get("event")) for p in exports] == [
            ("2025-12-30", "2025-12-31", json.dumps(list(FUNNEL))),
            ("2026-01-01", "2026-01-07", None),
            ("2026-01-08", "2026-01-14", None),
            ("2026-01-15", "2026-01-20", None),
        ]
        assert backfill.unattributed == 20
        assert store.last_synced_day() == day(19)

        # Anomalies: acme's spike on day 14 and its drop to nothing on day 15, alerted once;
        # then, through the same hook, that the data is stale (day 19 is 10 days before "today").
        assert [(a.account, a.date, a.kind) for a in metrics_helpers.ALERTS] == [
            ("acme", day(14), "spike"),
            ("acme", day(15), "drop"),
            ("*", day(19), "stale"),
        ]
        assert backfill.anomalies == metrics_helpers.ALERTS[:2]
        assert backfill.freshness == Freshness(day(19), 240.0, 24)
        metrics_helpers.ALERTS.pop()
        assert [m.anomaly for m in store.daily("acme", day(14), day(15))] == ["spike", "drop"]
        assert store.daily("acme", day(15), day(15))[0].total_events == 3  # the signup users only
        assert store.daily("initech", day(0), day(19))[0].date == day(10)
        assert {m.anomaly for m in store.daily("globex", day(0), day(19))} == {None}

        # Re-running the backfill changes nothing and alerts nothing.
        before = dump(store)
        again = sync(
            settings,
            "2026-01-01",
            "2026-01-20",
            query=client(api),
            store=store,
            progress=False,
            today=day(30),
        )
        assert dump(store) == before
        assert again.anomalies == []
        assert [a.kind for a in metrics_helpers.ALERTS] == ["spike", "drop", "stale"]
        metrics_helpers.ALERTS.pop()

        # Two more days arrive; the daily run resumes after day 19 up to yesterday.
        api.events = everything
        api.requests.clear()
        resume = sync(settings, query=client(api), store=store, progress=False, today=day(22))
        assert (resume.from_date, resume.to_date, resume.days) == (day(20), day(21), 2)
        exports = [r["params"] for r in api.requests if r["path"] == "/api/2.0/export"]
        assert [(p["from_date"], p["to_date"]) for p in exports] == [
            ("2026-01-19", "2026-01-20"),
            ("2026-01-21", "2026-01-22"),
        ]
        assert store.last_synced_day() == day(21)
        assert resume.freshness is not None and not resume.freshness.stale
        assert len(metrics_helpers.ALERTS) == 2  # fresh: no alert

        # The stored days are exactly a one-shot aggregation of all 22 days, funnels included
        # (the lookback completed the entries of days 18 and 19 with the new days' events).
        expected = aggregate_events(everything, day(0), day(21), config)
        stored_days = [
            m for account in store.accounts() for m in store.daily(account, day(0), day(21))
        ]
        flagged_zero_rows = [m for m in stored_days if m.total_events == 0]
        assert [(m.account, m.date) for m in flagged_zero_rows] == []
        strip = lambda m: DailyMetrics(**{**m.__dict__, "anomaly": None})  # noqa: E731
        assert sorted(map(strip, stored_days), key=lambda m: (m.account, m.date)) == sorted(
            expected.daily, key=lambda m: (m.account, m.date)
        )
        local = [
            f
            for account in store.accounts()
            for f in store.funnels(account, day(-5), day(30))
            if f.source == "local"
        ]
        assert sorted(local, key=lambda f: (f.account, f.date)) == sorted(
            expected.funnels, key=lambda f: (f.account, f.date)
        )
        # One acme signup completes per day (the next day), except the last one (still open).
        acme = {
            f.date: f.steps for f in store.funnels("acme", day(0), day(21)) if f.source == "local"
        }
        assert acme[day(3)][2] == 1
        assert acme[day(21)][2] == 0

        # The saved funnel, broken down by company_id by Mixpanel, per account.
        saved = [f for f in store.funnels("acme", day(-5), day(30)) if f.source == "mixpanel"]
        assert saved and {(f.funnel_id, f.funnel_name) for f in saved} == {("7", "Saved signup")}
        funnel_calls = [r["params"] for r in api.requests if r["path"] == "/api/query/funnels"]
        assert funnel_calls[0]["on"] == 'properties["company_id"]'
        assert funnel_calls[0]["limit"] == "10000"  # every account, up to Mixpanel's maximum
        assert resume.warnings == []
        assert (funnel_calls[0]["from_date"], funnel_calls[0]["to_date"]) == (
            "2026-01-19",
            "2026-01-22",
        )

        # Profile aggregates: counts only.
        assert store.users("acme") == ProfileAggregate("acme", 3, {"plan": {"pro": 3}})
        assert store.users("globex") == ProfileAggregate("globex", 1, {"plan": {"(not set)": 1}})
        assert resume.profile_accounts == 2

        # No PII anywhere: no distinct id, email or name in any table.
        text = json.dumps(dump(store), default=str)
        assert "did-" not in text
        assert "mail.example" not in text
        assert "Ann Example" not in text
        assert "acme" in text  # the dump is not empty


def test_a_drop_to_zero_gets_a_row_with_its_flag(api: QueryStandIn, tmp_path: pathlib.Path) -> None:
    api.events = [e for n in range(10) for e in day_events(n, "acme", 100, users=5)]
    settings = app_settings(api, f"sqlite:///{tmp_path / 'm.db'}", alert="", saved_funnels="")
    with MetricsStore(f"sqlite:///{tmp_path / 'm.db'}") as store:
        report = sync(
            settings, day(0), day(10), query=client(api), store=store, progress=False, today=day(30)
        )
        assert [(a.account, a.date, a.kind, a.total_events) for a in report.anomalies] == [
            ("acme", day(10), "drop", 0)
        ]
        assert store.daily("acme", day(10), day(10)) == [
            DailyMetrics("acme", day(10), 0, 0, 0, 0.0, anomaly="drop")
        ]


def test_an_interrupted_sync_resumes_after_the_last_stored_chunk(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    api.events = dataset(range(6))
    database = f"sqlite:///{tmp_path / 'm.db'}"
    settings = app_settings(api, database, chunk_days="2", funnels="", saved_funnels="")

    class Failing(MixpanelQuery):
        def export_chunks(self, *args: t.Any, **kwargs: t.Any) -> t.Iterator[t.Any]:
            for number, chunk in enumerate(super().export_chunks(*args, **kwargs)):
                if number == 2:
                    api.fail_next.append((400, '{"error": "bad"}', {}))
                yield chunk

    unlimited = QueryLimits(
        queries_per_hour=10**6, exports_per_hour=10**6, exports_per_second=10**6
    )
    with MetricsStore(database) as store:
        with pytest.raises(MixpanelQueryError):
            sync(
                settings,
                day(0),
                day(5),
                query=Failing(api.settings(), limits=unlimited),
                store=store,
                progress=False,
                today=day(9),
            )
        assert store.last_synced_day() == day(3)
        report = sync(settings, query=client(api), store=store, progress=False, today=day(6))
        assert (report.from_date, report.to_date) == (day(4), day(5))
        one_shot = aggregate_events(api.events, day(0), day(5), parse_metrics_settings(settings))
        assert sum(
            m.total_events for a in store.accounts() for m in store.daily(a, day(0), day(5))
        ) == sum(m.total_events for m in one_shot.daily)


def test_refusals_of_saved_funnels_and_profiles_are_reported(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    api.events = dataset(range(2))
    database = f"sqlite:///{tmp_path / 'm.db'}"
    settings = app_settings(api, database, saved_funnels="7, 8", funnels="", signals="", weights="")

    class Refusing(MixpanelQuery):
        """Mixpanel refuses the calls named in ``refuse``."""

        refuse: t.ClassVar[set[str]] = set()

        def funnels(self) -> list[dict[str, t.Any]]:
            if "funnels" in self.refuse:
                api.fail_next.append((400, '{"error": "nope"}', {}))
            return super().funnels()

        def engage(self, *args: t.Any, **kwargs: t.Any) -> t.Iterator[dict[str, t.Any]]:
            if "engage" in self.refuse:
                api.fail_next.append((400, '{"error": "nope"}', {}))
            return super().engage(*args, **kwargs)

    unlimited = QueryLimits(
        queries_per_hour=10**6, exports_per_hour=10**6, exports_per_second=10**6
    )
    query = Refusing(api.settings(), limits=unlimited)
    with MetricsStore(database) as store:
        report = sync(
            settings, day(0), day(1), query=query, store=store, progress=False, today=day(9)
        )
        # Funnel 8 does not exist.
        assert report.errors == [
            "saved funnel 8: Mixpanel answered 400 to /api/query/funnels: Funnel does not exist"
        ]
        assert not report.ok
        assert "1 error(s): saved funnel 8" in report.summary()
        assert store.users("acme") is not None
        # The list of funnels and the profiles refused: names fall back to the id, the previous
        # profile aggregates are kept.
        Refusing.refuse = {"funnels", "engage"}
        refused = sync(
            settings, day(0), day(1), query=query, store=store, progress=False, today=day(9)
        )
        assert refused.errors[0].startswith("listing saved funnels: Mixpanel answered 400")
        assert refused.errors[-1].startswith("profiles: Mixpanel answered 400")
        names = {
            f.funnel_name for f in store.funnels("acme", day(-5), day(1)) if f.source == "mixpanel"
        }
        assert names == {"7"}
        assert store.users("acme") == ProfileAggregate("acme", 3, {"plan": {"pro": 3}})


def test_saved_funnel_answers_per_day_and_segment() -> None:
    answer = {
        "data": {
            "2026-01-02": {
                "$overall": {"steps": [{"count": 9}]},
                "acme": {"steps": [{"count": 5}, {"count": 2}]},
                "undefined": {"steps": [{"count": 1}]},
                "42": {"steps": [{"count": 3}, {"count": 0}]},
                "odd": [1, 2],
            },
            "2026-01-01": {"acme": {"steps": [{"count": 1}, {}]}},
        }
    }
    assert _saved_funnel_rows(answer, 5, "Five") == [
        FunnelMetrics("acme", "5", "Five", day(0), [1, 0], "mixpanel"),
        FunnelMetrics("42", "5", "Five", day(1), [3, 0], "mixpanel"),
        FunnelMetrics("acme", "5", "Five", day(1), [5, 2], "mixpanel"),
    ]
    assert _saved_funnel_rows({}, 5, "Five") == []
    assert _segments(answer) == 4  # acme, undefined, 42, odd: every value Mixpanel returned
    assert _segments({"data": {"2026-01-01": [], "2026-01-02": {"$overall": {}}}}) == 0


def test_summary_mentions_skipped_events() -> None:
    report = SyncReport(day(0), day(1), 2, 10, unattributed=3, outside=4)
    assert report.summary() == (
        "synced 2 day(s) 2026-01-01 to 2026-01-02: 10 events, 0 account-day(s), 0 funnel row(s),"
        " 0 account profile aggregate(s), 0 new anomaly flag(s); 3 events without an account"
        " were skipped; 4 events outside their export days were skipped"
    )


def test_sync_opens_the_configured_database_and_builds_its_client(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    api.events = dataset(range(1))
    database = tmp_path / "own.db"
    settings = app_settings(
        api, f"sqlite:///{database}", funnels="", saved_funnels="", profile_account_property="off"
    )
    settings.pop("mixpanel.metrics.profile_properties")
    settings["mixpanel.metrics.account_getter"] = "tests.metrics_helpers.account_from_path"
    settings.pop("mixpanel.metrics.account_property")
    for e in api.events:
        account = e["properties"].pop("company_id", None)
        e["properties"]["path"] = f"/{account}/x" if account else "/"
    report = sync(settings, "2026-01-01", "2026-01-01", progress=False, today=day(3))
    assert report.ok and report.profile_accounts == 0
    assert not [r for r in api.requests if "engage" in r["path"]]  # profile sync is off
    with MetricsStore(f"sqlite:///{database}") as store:
        assert store.accounts() == ["acme", "globex"]


# -- pmixpanel sync ---------------------------------------------------------------------------

INI = (
    """\
[app:main]
use = call:tests.test_metrics_sync:app
{settings}

"""
    + LOGGING
)


def write_ini(tmp_path: pathlib.Path, settings: dict[str, str]) -> str:
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = " + value.replace("\n", "\n    "))
    path = tmp_path / "app.ini"
    path.write_text(INI.format(settings="\n".join(lines)))
    return str(path)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["pmixpanel", "sync", *argv], out=out)
    return code, out.getvalue()


def test_pmixpanel_sync_backfill_then_daily_resume(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    offset = (yesterday - JAN1).days
    api.events = [e for n in range(offset - 9, offset + 1) for e in day_events(n, "acme", 10, 3)]
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    ini = write_ini(tmp_path, app_settings(api, database, alert=""))
    first = yesterday - dt.timedelta(days=9)

    code, output = run(
        ini, "--from", first.isoformat(), "--to", (first + dt.timedelta(days=4)).isoformat()
    )
    assert code == 0, output
    assert f"synced 5 day(s) {first} to {first + dt.timedelta(days=4)}: 50 events" in output
    assert "sync: 100%" in output  # the progress bar

    code, output = run(ini, "--no-progress", "--days", "30")
    assert code == 0, output
    resumed = first + dt.timedelta(days=5)
    now_yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    assert f"day(s) {resumed} to {now_yesterday}: " in output
    assert "sync:" not in output

    code, output = run(ini, "--no-progress")
    assert (code, output.strip()) == (0, "metrics are up to date: nothing to sync")
    with MetricsStore(database) as store:
        assert store.last_synced_day() == now_yesterday
        assert sum(m.total_events for m in store.daily("acme", first, now_yesterday)) == 100


def test_pmixpanel_sync_errors(api: QueryStandIn, tmp_path: pathlib.Path) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    ini = write_ini(tmp_path, app_settings(api, database, anomaly_threshold="-3"))
    assert run(ini) == (
        2,
        "pmixpanel sync: mixpanel.metrics.anomaly_threshold must be a finite number greater"
        " than 0, got '-3'\n",
    )
    ini = write_ini(tmp_path, app_settings(api, database))
    assert run(ini, "--to", "2999-01-01")[0] == 2
    api.fail_next = [
        (
            403,
            '{"error": "no access to ' + api.settings()["mixpanel.service_account.secret"] + '"}',
            {},
        )
    ]
    code, output = run(ini, "--from", "2026-01-01", "--to", "2026-01-01", "--no-progress")
    assert code == 1
    assert "Mixpanel answered 403" in output
    assert "run again to resume" in output
    assert api.settings()["mixpanel.service_account.secret"] not in output
    # A saved funnel Mixpanel does not know: the days are stored, the exit code says 1.
    ini = write_ini(tmp_path, app_settings(api, database, saved_funnels="99"))
    code, output = run(ini, "--from", "2026-01-01", "--to", "2026-01-01", "--no-progress")
    assert code == 1
    assert "saved funnel 99: Mixpanel answered 400" in output


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", "Jan 1"], "not a date as YYYY-MM-DD: 'Jan 1'"),
        (["--days", "0"], "must be a whole number of days >= 1, got '0'"),
    ],
)
def test_pmixpanel_sync_arguments(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["pmixpanel", "sync", "app.ini", *argv])
    assert message in capsys.readouterr().err


def test_pmixpanel_sync_without_the_metrics_extra(
    api: QueryStandIn, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = write_ini(tmp_path, app_settings(api, f"sqlite:///{tmp_path / 'x.db'}"))
    monkeypatch.setitem(sys.modules, "pyramid_mixpanel.metrics.sync", None)
    code, output = run(ini)
    assert code == 2
    assert "pip install 'pyramid_mixpanel[metrics]'" in output


def test_pmixpanel_migrate_creates_then_keeps_the_schema(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    database = f"sqlite:///{tmp_path / 'migrated.db'}"
    ini = write_ini(tmp_path, app_settings(api, database))
    out = io.StringIO()
    assert main(["pmixpanel", "migrate", ini], out=out) == 0
    head = MetricsStore.head()
    assert out.getvalue() == f"metrics store: migrated from empty to {head}\n"
    out = io.StringIO()
    assert main(["pmixpanel", "migrate", ini], out=out) == 0
    assert out.getvalue() == f"metrics store: already at {head}\n"
    with MetricsStore(database, migrate=False) as store:
        assert store.is_current()


def test_pmixpanel_migrate_without_the_metrics_extra(
    api: QueryStandIn, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = write_ini(tmp_path, app_settings(api, f"sqlite:///{tmp_path / 'x.db'}"))
    monkeypatch.setitem(sys.modules, "pyramid_mixpanel.metrics.store", None)
    out = io.StringIO()
    assert main(["pmixpanel", "migrate", ini], out=out) == 2
    assert "pmixpanel migrate needs the metrics extra" in out.getvalue()


# -- what Mixpanel documents about its answers ------------------------------------------------


def test_a_saved_funnel_cut_at_mixpanels_limit_is_reported(
    api: QueryStandIn,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sync_module = sys.modules["pyramid_mixpanel.metrics.sync"]

    api.events = dataset(range(2))  # acme, globex, and events without an account
    database = f"sqlite:///{tmp_path / 'm.db'}"
    settings = app_settings(api, database, funnels="", alert="")
    caplog.set_level("WARNING", "pyramid_mixpanel")
    with MetricsStore(database) as store:
        report = sync(
            settings, day(0), day(1), query=client(api), store=store, progress=False, today=day(9)
        )
        assert report.warnings == [] and "warning" not in report.summary()
        # A project with more accounts than the limit (3 values here: acme, globex, undefined).
        monkeypatch.setattr(sync_module, "SAVED_FUNNEL_LIMIT", 3)
        report = sync(
            settings, day(0), day(1), query=client(api), store=store, progress=False, today=day(9)
        )
    assert api.requests[-2]["params"]["limit"] == "3"
    assert report.warnings == [
        "saved funnel 7: Mixpanel returned 3 values of company_id, its limit: accounts beyond"
        " those may be missing"
    ]
    assert report.ok  # the rows are stored: a warning, not a refusal
    assert "; 1 warning(s): saved funnel 7: Mixpanel returned 3 values" in report.summary()
    assert "mixpanel.metrics_funnel_limit_reached" in caplog.text
    assert "limit=3" in caplog.text


def test_events_exported_twice_are_counted_once(api: QueryStandIn, tmp_path: pathlib.Path) -> None:
    api.events = dataset(range(4))
    settings = app_settings(api, "sqlite://", saved_funnels="", alert="")
    with MetricsStore("sqlite://") as once, MetricsStore("sqlite://") as twice:
        clean = sync(settings, day(0), day(3), query=client(api), store=once, progress=False,
                     today=day(9))  # fmt: skip
        api.duplicate_every = 4  # a quarter of the events were sent twice
        doubled = sync(settings, day(0), day(3), query=client(api), store=twice, progress=False,
                       today=day(9))  # fmt: skip
        assert dump(twice) == dump(once)
    assert clean.duplicates == 0
    exported = sum(1 for e in api.events if e["properties"]["time"] < metrics_helpers.T0 + 4 * DAY)
    # Each copy was counted once (those without an account are skipped, as unattributed).
    twins = exported // 4
    assert doubled.duplicates + doubled.unattributed - clean.unattributed == twins
    assert doubled.events == clean.events
    assert f"; {doubled.duplicates} duplicate events (same $insert_id) were counted once" in (
        doubled.summary()
    )


def test_days_are_the_project_timezone_days(api: QueryStandIn, tmp_path: pathlib.Path) -> None:
    # A project created before 2023 in Los Angeles (UTC-8 in January): its export's days and
    # timestamps are the project's.
    api.project_timezone = "America/Los_Angeles"
    api.events = [
        event("Page Viewed", "u1", 2 * DAY + 3 * 3600),  # Jan 3 03:00 UTC: Jan 2 19:00 there
        event("Page Viewed", "u2", 2 * DAY + 9 * 3600),  # Jan 3 09:00 UTC: Jan 3 01:00 there
        event("Page Viewed", "u3", 1 * DAY + 12 * 3600),  # Jan 2 04:00 there
    ]
    database = f"sqlite:///{tmp_path / 'm.db'}"
    settings = app_settings(
        api, database, funnels="", saved_funnels="", alert="", profile_account_property="off"
    )
    settings.pop("mixpanel.metrics.profile_properties")
    settings["mixpanel.project_timezone"] = "America/Los_Angeles"
    # Jan 4 05:00 UTC is Jan 3 21:00 in Los Angeles: Jan 3 is not over there.
    now = dt.datetime(2026, 1, 4, 5, tzinfo=dt.timezone.utc)
    with MetricsStore(database) as store:
        report = sync(settings, days=3, query=client(api), store=store, progress=False, now=now)
        assert (report.from_date, report.to_date) == (day(-1), day(1))  # not Jan 3 (UTC's)
        assert report.outside == 0
        assert "2025-12-31 to 2026-01-02 (America/Los_Angeles): 2 events" in report.summary()
        # profile_account_property = off: no profile sync although account_property is set.
        assert report.profile_accounts == 0
        assert not [r for r in api.requests if "engage" in r["path"]]
        assert [(m.date, m.total_events) for m in store.daily("acme", day(0), day(5))] == [
            (day(1), 2)  # u3 and u1, both on Jan 2 there
        ]
        with pytest.raises(SyncError, match="over in America/Los_Angeles can be synced"):
            sync(settings, day(2), day(2), query=client(api), store=store, now=now)
        # An hour after midnight there, Jan 3 is over and synced.
        later = sync(
            settings,
            query=client(api),
            store=store,
            progress=False,
            now=dt.datetime(2026, 1, 4, 9, tzinfo=dt.timezone.utc),
        )
        assert (later.from_date, later.to_date, later.events) == (day(2), day(2), 1)


def test_pmixpanel_sync_without_tqdm_names_the_extra(
    api: QueryStandIn, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = write_ini(tmp_path, app_settings(api, f"sqlite:///{tmp_path / 'x.db'}"))
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as without the extra
    code, output = run(ini)
    assert code == 2
    assert "pmixpanel sync needs the tqdm package" in output
    assert "pip install 'pyramid_mixpanel[metrics]'" in output


# -- the data policy, freshness and exports ---------------------------------------------------


def test_retention_keeps_the_newest_days(api: QueryStandIn, tmp_path: pathlib.Path) -> None:
    api.events = dataset(range(6))
    database = f"sqlite:///{tmp_path / 'kept.db'}"
    settings = app_settings(api, database, retention_days="3", alert="")
    with MetricsStore(database) as store:
        report = sync(settings, day(0), day(5), query=client(api), store=store, progress=False,
                      today=day(6))  # fmt: skip
        assert report.kept_from == day(3)
        assert report.pruned > 0
        assert f"row(s) before {day(3)} were deleted (retention)" in report.summary()
        assert store.synced_days() == [day(3), day(4), day(5)]
        assert {m.date for m in store.daily("acme", day(0), day(5))} == {day(3), day(4), day(5)}
        assert store.users("acme") is not None  # profile aggregates are not per day: kept


def test_stale_data_alerts_through_the_hook_or_the_log(
    api: QueryStandIn, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.events = dataset(range(2))
    database = f"sqlite:///{tmp_path / 'age.db'}"
    now = dt.datetime.combine(day(2), dt.time(1, 30), tzinfo=dt.timezone.utc)
    with MetricsStore(database) as store:
        fresh = sync(app_settings(api, database, alert=""), day(0), day(1), query=client(api),
                     store=store, progress=False, now=now)  # fmt: skip
        assert fresh.freshness == Freshness(day(1), 1.5, 24)
        assert not fresh.freshness.stale
        assert "mixpanel.metrics_stale" not in caplog.text
        later = now + dt.timedelta(days=3)
        metrics_helpers.ALERTS.clear()
        stale = sync(app_settings(api, database, max_age_hours="48"), day(0), day(1),
                     query=client(api), store=store, progress=False, now=later)  # fmt: skip
        assert stale.freshness is not None and stale.freshness.age_hours == 73.5
        assert [(a.kind, a.account, a.date) for a in metrics_helpers.ALERTS] == [
            ("stale", "*", day(1))
        ]
        sync(app_settings(api, database, alert=""), day(0), day(1), query=client(api),
             store=store, progress=False, now=later)  # fmt: skip
        assert "mixpanel.metrics_stale" in caplog.text
        failing = app_settings(api, database, alert="tests.metrics_helpers.failing_alert")
        sync(failing, day(0), day(1), query=client(api), store=store, progress=False, now=later)
        assert "mixpanel.metrics_alert_failed" in caplog.text
    assert Freshness(None, None, 24).as_dict() == {
        "last_synced_day": None,
        "age_hours": None,
        "max_age_hours": 24,
        "stale": True,
    }


def test_pmixpanel_metrics_export_freshness_and_forget(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    api.events = dataset(range(3))
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    ini = write_ini(tmp_path, app_settings(api, database, alert=""))
    with MetricsStore(database) as store:
        sync(app_settings(api, database, alert=""), day(0), day(2), query=client(api),
             store=store, progress=False, today=day(3))  # fmt: skip

    def metrics(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(["pmixpanel", "metrics", *argv], out=out), out.getvalue()

    code, text = metrics("export", ini, "--from", "2026-01-01", "--to", "2026-01-03")
    rows = list(csv.reader(io.StringIO(text)))
    assert code == 0
    assert rows[0][:3] == ["account", "date", "total_events"]
    assert {row[0] for row in rows[1:]} >= {"acme", "globex"}
    target = tmp_path / "out.csv"
    code, text = metrics("export", ini, "-o", str(target))  # the last 30 synced days
    assert code == 0 and f"account-day row(s) to {target}" in text
    assert list(csv.reader(io.StringIO(target.read_text())))[1:] == rows[1:]
    code, text = metrics("freshness", ini)
    assert code == 1 and "last synced day: 2026-01-03" in text and "STALE" in text
    code, text = metrics("forget", ini, "acme")
    assert code == 0 and "row(s) of account 'acme'" in text
    with MetricsStore(database) as store:
        assert store.daily("acme", day(0), day(2)) == []
        assert store.daily("globex", day(0), day(2)) != []
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, text = metrics("freshness", write_ini(tmp_path, app_settings(api, fresh, alert="")))
    assert code == 1 and "never synced" in text


def test_pmixpanel_metrics_without_the_extra(
    api: QueryStandIn, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = write_ini(tmp_path, app_settings(api, f"sqlite:///{tmp_path / 'x.db'}", alert=""))
    monkeypatch.setitem(sys.modules, "pyramid_mixpanel.metrics.export", None)
    out = io.StringIO()
    assert main(["pmixpanel", "metrics", "freshness", ini], out=out) == 2
    assert "pip install 'pyramid_mixpanel[metrics]'" in out.getvalue()


def test_the_daily_sync_on_celery_beat(api: QueryStandIn, tmp_path: pathlib.Path) -> None:
    from celery import Celery
    from celery.schedules import crontab

    from pyramid_mixpanel.metrics.celery import FRESHNESS_TASK, TASK_NAME, schedule

    api.events = dataset(range(2))
    database = f"sqlite:///{tmp_path / 'beat.db'}"
    celery_app = Celery("beat-test", broker="memory://")
    celery_app.conf.beat_schedule = {"other": {"task": "x", "schedule": 60}}  # the app's own stay
    task = schedule(celery_app, app_settings(api, database), hour=2, minute=5)
    assert celery_app.conf.beat_schedule[TASK_NAME] == {
        "task": TASK_NAME,
        "schedule": crontab(hour=2, minute=5),
    }
    assert "other" in celery_app.conf.beat_schedule
    assert celery_app.conf.beat_schedule[FRESHNESS_TASK]["schedule"] == crontab(minute=5)
    check = celery_app.tasks[FRESHNESS_TASK]
    metrics_helpers.ALERTS.clear()
    assert check.apply().get()["stale"] is True  # nothing synced yet: stale, alerted
    assert [a.kind for a in metrics_helpers.ALERTS] == ["stale"]
    # What a worker runs when beat sends it: a sync of the days since the last one.
    result = task.apply().get()
    assert result["ok"] is True
    assert result["summary"].startswith("synced 1 day(s)")
    assert result["stale"] is False
    assert check.apply().get()["stale"] is False


def test_the_report_counts_the_synced_days_events_once(api: QueryStandIn) -> None:
    # Local funnels re-read the days before the sync (their lookback): those events were
    # counted when their days were synced, and are not counted again.
    api.events = dataset(range(6))
    settings = app_settings(api, "sqlite://", saved_funnels="", alert="")
    with MetricsStore("sqlite://") as store:
        report = sync(settings, day(3), day(5), query=client(api), store=store, progress=False,
                      today=day(9))  # fmt: skip
        stored = sum(
            m.total_events for a in store.accounts() for m in store.daily(a, day(3), day(5))
        )
    assert report.events == stored == 360
    assert f"synced 3 day(s) {day(3)} to {day(5)}: 360 events" in report.summary()


def test_pmixpanel_status_says_how_fresh_the_metrics_are(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    api.events = dataset(range(2))
    database = f"sqlite:///{tmp_path / 'status.db'}"
    ini = write_ini(tmp_path, app_settings(api, database, alert=""))

    def status(*argv: str) -> str:
        out = io.StringIO()
        main(["pmixpanel", "status", ini, *argv], out=out)
        return out.getvalue()

    assert "metrics: the metrics store is not migrated: run pmixpanel migrate" in status()
    MetricsStore(database).close()
    assert "metrics: never synced" in status()
    with MetricsStore(database) as store:
        sync(app_settings(api, database, alert=""), day(0), day(1), query=client(api),
             store=store, progress=False, today=day(2))  # fmt: skip
    assert "metrics: last synced day: 2026-01-02;" in status()
    assert "STALE" in status()  # January, long ago
    document = json.loads(status("--json"))
    assert document["metrics"]["last_synced_day"] == "2026-01-02"
    assert document["metrics"]["stale"] is True


def test_pmixpanel_status_without_the_metrics_extra(
    api: QueryStandIn, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = write_ini(tmp_path, app_settings(api, f"sqlite:///{tmp_path / 'x.db'}", alert=""))
    monkeypatch.setitem(sys.modules, "pyramid_mixpanel.metrics.freshness", None)
    out = io.StringIO()
    main(["pmixpanel", "status", ini], out=out)
    assert "metrics:" not in out.getvalue()  # nothing to say without the extra, no crash
