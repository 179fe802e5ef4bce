"""Hostile input never stops a sync, and a stopped sync never loses rows (issue 13).

- Account ids come from event properties, which anyone who can send an event controls: one the
  store cannot keep (over 255 characters, a NUL, a lone surrogate) is refused and counted, on
  SQLite and on PostgreSQL (which refused the whole write, on every sync, with a DataError).
- Malformed export lines are skipped and counted; too many of them fail the sync with a
  MixpanelError naming line numbers and reasons, never their content.
- A sync stopped anywhere (an exception between chunks, after the old rows are deleted, a
  SIGKILL in the middle of a transaction) leaves every synced day its funnel rows.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import typing as t

import pytest
import sqlalchemy as sa

from pyramid_mixpanel.exceptions import MixpanelError
from pyramid_mixpanel.metrics import (
    Aggregator,
    DailyMetrics,
    FunnelMetrics,
    MetricsStore,
    ProfileAggregate,
    SyncError,
    aggregate_events,
    aggregate_profiles,
    parse_metrics_settings,
    sync,
)
from pyramid_mixpanel.metrics import store as store_module
from pyramid_mixpanel.metrics.aggregate import TOO_LONG, label
from pyramid_mixpanel.metrics.lines import (
    BAD_DISTINCT_ID,
    BAD_INSERT_ID,
    BAD_TIME,
    NO_EVENT,
    NO_PROPERTIES,
    NOT_FINITE,
    NOT_JSON,
    NOT_OBJECT,
    NOT_UTF8,
    TOO_DEEP,
    chunk_lines,
    parse_line,
)
from pyramid_mixpanel.metrics.model import clean_text, storable
from pyramid_mixpanel.metrics.store import funnels_table, metrics_table, sync_days_table
from pyramid_mixpanel.metrics.sync import MalformedExportError, _funnel_name, _saved_funnel_rows
from pyramid_mixpanel.settings import MixpanelConfigurationError

from .loopback import wait_until
from .metrics_helpers import DAY, ListQuery, day, event, local_settings, utc_day
from .postgres import postgres  # noqa: F401  # the fixture behind ``database``
from .query_standin import QueryStandIn, RateLimits, _Handler
from .test_metrics_sync import app_settings, client, dataset, dump, run, write_ini

# (``pyramid_mixpanel.metrics.sync`` is also the function: the module, by its name.)
sync_module = importlib.import_module("pyramid_mixpanel.metrics.sync")
LONG = "x" * 256
NUL = "a\x00b"
SURROGATE = "b\ud800"  # what json.loads makes of "b\\ud800"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metrics.db'}"
    return t.cast(str, request.getfixturevalue("postgres").database())


@pytest.fixture
def api() -> t.Iterator[QueryStandIn]:
    with QueryStandIn() as server:
        server.limits = RateLimits(None, None, None, None, None)
        server.saved_funnels = {7: {"name": "Saved signup", "steps": ["Page Viewed", "Other"]}}
        yield server


# -- 1. values that do not fit the store --------------------------------------------------------


def hostile_events() -> list[dict[str, t.Any]]:
    return [
        event("Page Viewed", "u1", 60, plan="pro"),
        event("Page Viewed", "u2", 120, account=LONG),  # too long: refused
        event("Page Viewed", "u3", 180, account=NUL),  # PostgreSQL refuses NUL
        event("Page Viewed", "u4", 240, account=SURROGATE),  # UTF-8 cannot encode it
        event("Report Exported", "u5", 300, account=["acme", "y" * 300]),  # acme only
        event("Report Exported", "u1", 360, plan="p" * 300),  # a long value: (too long)
        event("Odd\x00Name", "u1", 420, plan="a\x00"),  # NUL in a name and a value
        event("Page Viewed", "u6", 480, account="x" * 255),  # exactly fits
    ]


def test_account_ids_that_do_not_fit_are_refused_and_counted(
    api: QueryStandIn, database: str
) -> None:
    api.events = hostile_events()
    api.profiles = [
        {"$distinct_id": "u1", "$properties": {"company_id": "acme", "plan": "q" * 300}},
        {"$distinct_id": "u2", "$properties": {"company_id": "z" * 300, "plan": "pro"}},
    ]
    settings = app_settings(api, database, alert="", funnels="")
    with MetricsStore(database) as store:
        report = sync(
            settings, day(0), day(0), query=client(api), store=store, progress=False, today=day(5)
        )
        assert report.ok, report.errors
        assert sorted(store.accounts()) == ["acme", "x" * 255]
        acme = store.daily("acme", day(0), day(0))[0]
        assert acme.total_events == 4
        assert acme.event_counts == {"Odd\ufffdName": 1, "Page Viewed": 1, "Report Exported": 2}
        assert acme.breakdowns["plan"] == {
            "(not set)": 1,
            TOO_LONG: 1,
            "a\ufffd": 1,
            "pro": 1,
        }
        assert store.users("acme") == ProfileAggregate("acme", 1, {"plan": {TOO_LONG: 1}})
        # The saved funnel, broken down by company_id by Mixpanel, names the same ids: only
        # those that fit have a row.
        with store.engine.connect() as connection:
            query = sa.select(funnels_table.c.account, funnels_table.c.funnel_name)
            assert set(connection.execute(query).all()) == {
                ("acme", "Saved signup"),
                ("x" * 255, "Saved signup"),
            }
    # Events: the long id, the NUL, the surrogate, the list's long id; Mixpanel's funnel
    # segments: the first three (the list is no first step); profiles: one.
    assert report.rejected_accounts == 4 + 3 + 1
    assert report.unattributed == 3
    assert report.long_values == 2  # an event's plan, a profile's plan
    summary = report.summary()
    assert "; 8 account id(s) over 255 characters (or holding a NUL or a lone surrogate)" in summary
    assert "; 2 value(s) over 255 characters were counted as (too long)" in summary


def test_saved_funnel_names_are_cut_and_segments_refused() -> None:
    answer = {"data": {"2026-01-01": {LONG: {"steps": [{"count": 2}]}, "acme": {"steps": []}}}}
    stats = Aggregator(parse_metrics_settings({"mixpanel.metrics.account_property": "c"})).stats
    rows = _saved_funnel_rows(answer, 5, "N" * 300 + "\x00", stats)
    assert [(r.account, len(r.funnel_name), r.funnel_name[-1]) for r in rows] == [
        ("acme", 255, "\N{HORIZONTAL ELLIPSIS}")
    ]
    assert stats.rejected_accounts == 1
    assert _funnel_name("Signup\x00") == "Signup\ufffd"
    assert _funnel_name("n" * 255) == "n" * 255


def test_the_store_refuses_what_does_not_fit_before_writing(database: str) -> None:
    with MetricsStore(database) as store:
        for account in (LONG, NUL, SURROGATE):
            fine = DailyMetrics("acme", day(0), 1, 1, 1, 1.0)
            bad = DailyMetrics(account, day(0), 1, 1, 1, 1.0)
            refused = pytest.raises(ValueError, match=r"mixpanel_metrics\.account takes at most")
            with refused, store.begin() as connection:
                store.write_days([day(0)], [fine], connection=connection)
                store.write_days([day(0)], [bad], connection=connection)
            with pytest.raises(ValueError, match=r"mixpanel_profiles\.account"):
                store.replace_profiles([ProfileAggregate(account, 1)])
        # All or nothing: the fine row of the failed transaction is not there either.
        assert store.accounts() == []
        # The message names the column and the length, never the value.
        with pytest.raises(ValueError) as caught:
            store.write_funnels([FunnelMetrics("acme", "f" * 300, "F", day(0), [1])])
        assert str(caught.value) == (
            "mixpanel_funnels.funnel_id takes at most 255 characters and no NUL or lone"
            " surrogate: a value of 300 characters does not fit"
        )


def test_storable_and_clean_text() -> None:
    assert storable("acme") and storable("é" * 255) and storable("\N{GRINNING FACE}")
    assert not storable("é" * 256)
    assert not storable("é\x00")
    assert not storable("é\udc00")
    assert storable("abc", limit=3) and not storable("abcd", limit=3)
    assert clean_text("acme") == "acme"
    assert clean_text("a\x00é\ud800") == "a\ufffdé\ufffd"


def test_profiles_with_account_ids_that_do_not_fit() -> None:
    config = parse_metrics_settings(
        {"mixpanel.metrics.account_property": "c", "mixpanel.metrics.profile_properties": "p"}
    )
    profiles: list[dict[str, t.Any]] = [
        {"$properties": {"c": ["acme", LONG], "p": "v\x00"}},
        {"$properties": {"c": NUL}},
        {"$distinct_id": "no properties"},
    ]
    assert aggregate_profiles(profiles, config) == [
        ProfileAggregate("acme", 1, {"p": {"v\ufffd": 1}})
    ]


def test_a_local_funnel_name_must_fit_its_column() -> None:
    with pytest.raises(MixpanelConfigurationError, match="at most 255 characters and no NUL"):
        parse_metrics_settings(
            {
                "mixpanel.metrics.account_property": "c",
                "mixpanel.metrics.funnels": "F" * 256 + ": A > B",
            }
        )


# -- 2. malformed export lines ------------------------------------------------------------------

BAD_LINES: list[tuple[object, str]] = [
    (b"not json at all, with someone@mail.example", NOT_JSON),
    (b"\xff\xfe{}", NOT_UTF8),
    (b"[1, 2]", NOT_OBJECT),
    (b'"a string"', NOT_OBJECT),
    (b'{"properties": {"time": 1}}', NO_EVENT),
    (b'{"event": "", "properties": {"time": 1}}', NO_EVENT),
    (b'{"event": {"x": 1}, "properties": {"time": 1}}', NO_EVENT),
    (b'{"event": "A"}', NO_PROPERTIES),
    (b'{"event": "A", "properties": [1]}', NO_PROPERTIES),
    (b'{"event": "A", "properties": {"time": NaN}}', NOT_FINITE),
    (b'{"event": "A", "properties": {"time": -Infinity}}', NOT_FINITE),
    (b'{"event": "A", "properties": {"time": 1e400}}', BAD_TIME),
    (b'{"event": "A", "properties": {"time": "1767225600"}}', BAD_TIME),
    (b'{"event": "A", "properties": {"time": true}}', BAD_TIME),
    (b'{"event": "A", "properties": {}}', BAD_TIME),
    (b'{"event": "A", "properties": {"time": 1, "distinct_id": {"a": 1}}}', BAD_DISTINCT_ID),
    (b'{"event": "A", "properties": {"time": 1, "distinct_id": [1]}}', BAD_DISTINCT_ID),
    (b'{"event": "A", "properties": {"time": 1, "distinct_id": true}}', BAD_DISTINCT_ID),
    (b'{"event": "A", "properties": {"time": 1, "$insert_id": [1]}}', BAD_INSERT_ID),
    (b"[" * 100_000 + b"]" * 100_000, TOO_DEEP),
    (b'{"event": "A", "properties": {"time": ' + b"9" * 5000 + b"}}", NOT_JSON),
    ("text, not bytes {", NOT_JSON),
    (42, NOT_OBJECT),
    (None, NOT_OBJECT),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_parse_line_gives_a_reason_for_each_malformed_line(line: object, reason: str) -> None:
    assert parse_line(line) == reason


def test_parse_line_takes_what_the_aggregator_can_count() -> None:
    good = {"event": "A", "properties": {"time": 1.5, "distinct_id": 7, "$insert_id": "i"}}
    assert parse_line(json.dumps(good).encode()) == good
    assert parse_line(json.dumps(good)) == good
    assert parse_line(good) == good
    # An integer beyond 64 bits: orjson gives the nearest float (json gave the int); one too
    # large for a float, too (1 and 400 zeros), gets json's int, as before.
    huge = {"event": "A", "properties": {"time": 10**30}}
    assert parse_line(json.dumps(huge)) == {"event": "A", "properties": {"time": 1e30}}
    huger = {"event": "A", "properties": {"time": 10**400}}
    assert parse_line(json.dumps(huger)) == huger
    config = parse_metrics_settings(local_settings("sqlite://"))
    result = aggregate_events([huge, huger, good], day(0), day(0), config)
    assert result.stats.outside == 3


class RawExport(QueryStandIn):
    """The stand-in, whose export also streams ``raw[from_date]`` lines as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _RawHandler
        self.raw: dict[str, list[bytes]] = {}


class _RawHandler(_Handler):
    server: RawExport

    def _route(self, path: str, params: dict[str, str]) -> None:
        if path != "/api/2.0/export":
            return super()._route(path, params)
        lines = [json.dumps(e).encode() for e in self.server.exported(params)]
        lines += self.server.raw.get(params["from_date"], [])
        body = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=1)
        return self._send(200, body, {"Content-Encoding": "gzip"})


@pytest.fixture
def raw_api() -> t.Iterator[RawExport]:
    server = RawExport()
    server.limits = RateLimits(None, None, None, None, None)  # no 429, so no backoff
    with server:
        yield server


def test_malformed_lines_are_skipped_and_counted(
    raw_api: RawExport, tmp_path: pathlib.Path
) -> None:
    raw_api.events = dataset(range(3))
    bad = [line for line, _ in BAD_LINES if isinstance(line, bytes)]
    # A third a day: not more than 10 in any chunk (a day), so none fails the sync.
    raw_api.raw = {f"2026-01-0{n + 1}": bad[n::3] for n in range(3)}
    database = f"sqlite:///{tmp_path / 'm.db'}"
    settings = app_settings(raw_api, database, saved_funnels="", alert="", chunk_days="1")
    with MetricsStore(database) as store:
        report = sync(
            settings, day(0), day(2), query=client(raw_api), store=store, progress=False,
            today=day(5),
        )  # fmt: skip
        clean = aggregate_events(raw_api.events, day(0), day(2), parse_metrics_settings(settings))
        stored = [m for a in store.accounts() for m in store.daily(a, day(0), day(2))]
        assert sum(m.total_events for m in stored) == sum(m.total_events for m in clean.daily)
    assert report.ok
    assert report.malformed == len(bad)
    assert f"; {len(bad)} malformed export line(s) were skipped" in report.summary()


def many_lines(good: int, bad: int) -> list[object]:
    lines: list[object] = [
        json.dumps(event("Page Viewed", f"u{n}", DAY + n, plan="pro")).encode() for n in range(good)
    ]
    for n in range(bad):
        # Personal data in a malformed line must never reach the message.
        lines.insert(3 * n + 1, f'{{"event": "A", "email": "user{n}@mail.example"'.encode())
    return lines


def local_sync(
    query: ListQuery, store: MetricsStore, first: int = 0, last: int = 0, **extra: str
) -> t.Any:
    settings = local_settings("sqlite://", **extra)
    return sync(settings, day(first), day(last), query=query, store=store, progress=False,
                today=day(30))  # fmt: skip


def test_too_many_malformed_lines_fail_the_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    ok_day = [event("Page Viewed", "u1", 60)]
    with MetricsStore("sqlite://") as store:
        # Day 0 is fine; day 1 has 11 malformed lines of 1,000 (more than 10 and than 1%).
        query = ListQuery(ok_day, raw={day(1): many_lines(989, 11)})
        with pytest.raises(MalformedExportError) as caught:
            local_sync(query, store, 0, 1, chunk_days="1")
        message = str(caught.value)
        assert message.startswith(
            "the export of 2026-01-02 to 2026-01-02 has 11 malformed lines of 1,000"
            " (the limit: more than 10 and 1% of them): line 2: not JSON; line 5: not JSON;"
            " line 8: not JSON; line 11: not JSON; line 14: not JSON. Nothing of these days"
        )
        assert "mail.example" not in message
        assert isinstance(caught.value, (SyncError, MixpanelError))
        assert store.synced_days() == [day(0)]  # the day before is stored, day 1 is not
        assert store.daily("acme", day(1), day(1)) == []
        # 11 of 1,200 (less than 1%) and 10 of 500 (not more than 10) are skipped.
        for good, bad in ((1189, 11), (490, 10)):
            query = ListQuery([], raw={day(1): many_lines(good, bad)})
            report = local_sync(query, store, 1, 1)
            assert (report.malformed, report.events) == (bad, good)
        # More than MAX_MALFORMED fails while reading, whatever the share.
        monkeypatch.setattr(sync_module, "MAX_MALFORMED", 3)
        query = ListQuery([], raw={day(1): many_lines(10_000, 4)})
        with pytest.raises(MalformedExportError, match="malformed lines in its first 11 lines"
                           " .the limit: more than 3.: line 2: not JSON"):  # fmt: skip
            local_sync(query, store, 1, 1)


def test_malformed_lines_of_the_funnel_lookback_count_too() -> None:
    with MetricsStore("sqlite://") as store:
        query = ListQuery([], raw={day(-2): [b"{", b"[]"]})
        report = local_sync(query, store, 0, 0)
        # The lookback re-reads day -2 and -1 (funnel_window_hours 48) before day 0.
        assert report.malformed == 2


def test_pmixpanel_sync_stops_with_one_line_on_a_flood_of_malformed_lines(
    raw_api: RawExport, tmp_path: pathlib.Path
) -> None:
    raw_api.raw = {"2026-01-01": [b"{" for _ in range(20)]}
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    ini = write_ini(tmp_path, app_settings(raw_api, database, saved_funnels="", funnels=""))
    code, output = run(ini, "--from", "2026-01-01", "--to", "2026-01-01", "--no-progress")
    assert code == 2
    assert "20 malformed lines" in output
    assert output.count("\n") == 1  # one line, no traceback


def test_export_lines_are_the_export_undecoded(api: QueryStandIn) -> None:
    from pyramid_mixpanel.query import where_equals

    api.events = dataset(range(1))
    query = client(api)
    where = where_equals("company_id", "globex")
    (chunk,) = query.export_chunks(day(0), day(0), ["Page Viewed"], where)
    lines = list(chunk_lines(chunk))
    assert lines and all(isinstance(line, bytes) for line in lines)
    assert [parse_line(line) for line in lines] == list(chunk.events())
    companies = {json.loads(t.cast(bytes, line))["properties"]["company_id"] for line in lines}
    assert companies == {"globex"}
    assert api.requests[-1]["params"]["where"] == where


def test_a_value_nested_too_deep_for_json_is_too_long() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert label(deep) == TOO_LONG


def test_a_broken_export_stream_is_still_a_query_error(api: QueryStandIn, database: str) -> None:
    from pyramid_mixpanel.query import MixpanelQueryError

    api.events = dataset(range(1))
    api.cut_export = 5
    settings = app_settings(api, database, saved_funnels="", funnels="")
    with MetricsStore(database) as store, pytest.raises(MixpanelQueryError) as caught:
        sync(settings, day(0), day(0), query=client(api), store=store, progress=False,
             today=day(5))  # fmt: skip
    assert caught.value.status == 0
    assert "the export stream broke off" in str(caught.value)


# -- 3. a stopped sync keeps the funnel rows of its synced days -------------------------------


def local_funnels(store: MetricsStore) -> list[FunnelMetrics]:
    rows = [f for a in store.accounts() for f in store.funnels(a, day(-10), day(40))]
    return sorted((f for f in rows if f.source == "local"), key=lambda f: (f.account, f.date))


def expected_funnels(events: list[dict[str, t.Any]], last: int) -> list[FunnelMetrics]:
    """Funnel rows of days 0..last counted where their users stand at the end of ``last``."""
    config = parse_metrics_settings(local_settings("sqlite://"))
    kept = [e for e in events if utc_day(e) <= day(last)]
    funnels = aggregate_events(kept, day(0), day(last), config).funnels
    return sorted(funnels, key=lambda f: (f.account, f.date))


@pytest.fixture
def events() -> list[dict[str, t.Any]]:
    # 14 days; every day one acme user signs up across midnight (the funnel needs 2 days).
    return dataset(range(14))


def test_a_sync_stopped_between_chunks_keeps_the_funnel_rows_of_its_days(
    events: list[dict[str, t.Any]], database: str
) -> None:
    with MetricsStore(database) as store:
        with pytest.raises(RuntimeError, match="interrupted before 2026-01-08"):
            local_sync(ListQuery(events, fail_on=day(7)), store, 0, 13)
        assert store.synced_days()[-1] == day(6)
        # Days 5 and 6 are still in their 48-hour window: stored as they stand (the issue
        # lost these rows: only settled days were written).
        funnels = local_funnels(store)
        assert {f.date for f in funnels} == {day(n) for n in range(7)}
        assert funnels == expected_funnels(events, 6)
        # The resumed sync completes them.
        report = local_sync(ListQuery(events), store, 7, 13)
        assert report.days == 7
        assert local_funnels(store) == expected_funnels(events, 13)


def test_a_sync_stopped_after_its_last_chunk_keeps_every_funnel_row(
    events: list[dict[str, t.Any]], database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The case: killed after the last chunk is stored, before the still-open entries
    # were written; the next run is "up to date", so they were lost for good.
    def killed(self: Aggregator) -> list[FunnelMetrics]:
        raise KeyboardInterrupt

    with MetricsStore(database) as store:
        monkeypatch.setattr(Aggregator, "finish_result", killed)
        with pytest.raises(KeyboardInterrupt):
            local_sync(ListQuery(events), store, 0, 13)
        monkeypatch.undo()
        assert store.last_synced_day() == day(13)
        assert local_funnels(store) == expected_funnels(events, 13)


def poisoned_mark(monkeypatch: pytest.MonkeyPatch, action: t.Callable[[], None]) -> None:
    """Run ``action`` when a chunk marks its days synced: after its old rows are deleted."""
    real = store_module.upsert

    def upsert(connection: sa.Connection, table: sa.Table, *args: t.Any, **kw: t.Any) -> None:
        if table is sync_days_table:
            action()
        real(connection, table, *args, **kw)

    monkeypatch.setattr(store_module, "upsert", upsert)


def fewer_events(events: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """The events without initech and without the signups of even days: stale rows."""
    return [
        e
        for e in events
        if e["properties"].get("company_id") != "initech"
        and not (
            e["properties"].get("distinct_id", "").startswith("did-03")
            and int(e["properties"]["distinct_id"][4:8]) % 2 == 0
        )
    ]


def count_rows(store: MetricsStore) -> dict[str, int]:
    with store.engine.connect() as connection:
        return {
            table.name: connection.execute(
                sa.select(sa.func.count()).select_from(table)
            ).scalar_one()
            for table in (metrics_table, funnels_table, sync_days_table)
        }


def test_an_exception_after_the_old_rows_are_deleted_leaves_them(
    events: list[dict[str, t.Any]], database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MetricsStore(database) as store:
        local_sync(ListQuery(events), store, 0, 13)
        before = dump(store)

        def fail() -> None:
            # The stale rows of the chunk's days are deleted by now, in this transaction.
            raise RuntimeError("killed")

        poisoned_mark(monkeypatch, fail)
        with pytest.raises(RuntimeError, match="killed"):
            local_sync(ListQuery(fewer_events(events)), store, 0, 13)
        monkeypatch.undo()
        assert dump(store) == before
        # Without the failure, the same re-run does delete them: the test deletes something.
        local_sync(ListQuery(fewer_events(events)), store, 0, 13)
        after = count_rows(store)
        assert after["mixpanel_funnels"] < len(before["mixpanel_funnels"])
        assert after["mixpanel_metrics"] < len(before["mixpanel_metrics"])
        assert "initech" not in store.accounts()


def child(database: str, marker: str) -> None:
    """In a subprocess: re-sync with fewer events, and hang once the old rows are deleted."""
    import threading

    events = fewer_events(dataset(range(14)))

    def hang() -> None:
        pathlib.Path(marker).write_text("deleted")
        threading.Event().wait()  # until SIGKILL

    with pytest.MonkeyPatch.context() as patch, MetricsStore(database) as store:
        poisoned_mark(patch, hang)
        local_sync(ListQuery(events), store, 0, 13)


def test_a_sync_killed_inside_its_transaction_leaves_the_rows(
    events: list[dict[str, t.Any]], database: str, tmp_path: pathlib.Path
) -> None:
    with MetricsStore(database) as store:
        local_sync(ListQuery(events), store, 0, 13)
        before = dump(store)
    marker = tmp_path / "deleted"
    script = "import sys; from tests.test_metrics_hostile import child; child(*sys.argv[1:])"
    process = subprocess.Popen(
        [sys.executable, "-c", script, database, str(marker)],
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: marker.exists() or process.poll() is not None,
            60,
            lambda: process.poll(),
        )
        assert marker.exists(), process.communicate()[1].decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    with MetricsStore(database) as store:
        assert dump(store) == before


def test_open_funnel_rows_are_replaced_when_their_day_settles() -> None:
    config = parse_metrics_settings(local_settings("sqlite://", funnel_window_hours="24"))
    aggregator = Aggregator(config)
    first = aggregator.add_chunk(
        day(0), day(0), [event("Page Viewed", "u1", 100), event("User Signed Up", "u1", 200)]
    )
    assert first.funnels == []
    assert [(f.date, f.steps) for f in first.open_funnels] == [(day(0), [1, 1, 0])]
    second = aggregator.add_chunk(day(1), day(1), [event("Plan Upgraded", "u1", DAY + 50)])
    assert [(f.date, f.steps) for f in second.funnels] == [(day(0), [1, 1, 1])]
    assert second.open_funnels == []
    assert aggregator.finish() == []


def test_the_query_clients_export_decodes_what_json_takes_and_refuses_the_rest(
    raw_api: RawExport,
) -> None:
    """orjson decodes the lines; what it refuses but Python's json takes is still decoded."""
    raw_api.events = []
    raw_api.raw[day(0).isoformat()] = [
        b'{"event": "A", "properties": {"time": 1767225600, "distinct_id": "u"}}',
        b'{"event": "B", "properties": {"time": NaN}}',  # not JSON, but json takes it
    ]
    first, second = client(raw_api).export(day(0), day(0))
    assert first == {"event": "A", "properties": {"time": 1767225600, "distinct_id": "u"}}
    assert second["event"] == "B" and second["properties"]["time"] != second["properties"]["time"]
    raw_api.raw[day(0).isoformat()] = [b"{not json"]
    with pytest.raises(MixpanelError, match="the export stream broke off"):
        list(client(raw_api).export(day(0), day(0)))
