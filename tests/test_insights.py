"""The insights include: JSON endpoints and the account page over a real sync, and the page in
headless Chromium, with the chart's bars found in a screenshot.

Data: the loopback query stand-in holds known events; ``sync`` (the real query client) stores
them in SQLite; a real Pyramid app serves them (WebTest, and waitress for the browser).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import pathlib
import threading
import typing as t
import zoneinfo
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import webtest
from hypothesis import given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st
from pyramid.authorization import ACLHelper, Allow, Authenticated
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.request import Request

from pyramid_mixpanel import query_limits
from pyramid_mixpanel.insights import INSIGHTS_KEY
from pyramid_mixpanel.insights import render as render_module
from pyramid_mixpanel.insights import views as views_module
from pyramid_mixpanel.insights.render import account_page, funnel_summary, volume_chart
from pyramid_mixpanel.insights.views import InsightsState, parse_insights_settings
from pyramid_mixpanel.metrics import (
    DailyMetrics,
    FunnelMetrics,
    MetricsStore,
    SyncError,
    export,
    sync,
)
from pyramid_mixpanel.query import MixpanelQuery
from pyramid_mixpanel.query_limits import QueryLimits
from pyramid_mixpanel.settings import MixpanelConfigurationError

from .browser import serve
from .loopback import wait_until
from .metrics_helpers import DAY, JAN1, day, event
from .postgres import postgres  # noqa: F401  # the fixture, for request.getfixturevalue
from .query_standin import PROJECT_ID, SECRET, USERNAME, QueryStandIn, RateLimits

FUNNEL = "Signup: Page Viewed > User Signed Up"


def dataset() -> list[dict[str, t.Any]]:
    """acme: 3 days, 2 users; globex: 1 day. Known answers below."""
    return [
        event("Page Viewed", "a1", 0 * DAY + 60, "acme"),
        event("User Signed Up", "a1", 0 * DAY + 120, "acme"),
        event("Page Viewed", "a2", 0 * DAY + 180, "acme"),
        event("Page Viewed", "a1", 1 * DAY + 60, "acme"),
        event("Page Viewed", "a1", 1 * DAY + 7200, "acme"),  # a second session
        event("Report Exported", "a2", 2 * DAY + 60, "acme"),
        event("Page Viewed", "g1", 0 * DAY + 60, "globex"),
    ]


@pytest.fixture
def api() -> Iterator[QueryStandIn]:
    with QueryStandIn() as server:
        server.events = dataset()
        server.profiles = [
            {"$distinct_id": "a1", "$properties": {"company_id": "acme", "plan": "pro"}},
            {"$distinct_id": "a2", "$properties": {"company_id": "acme", "plan": "free"}},
        ]
        yield server


@pytest.fixture
def settings(api: QueryStandIn, tmp_path: pathlib.Path) -> dict[str, str]:
    values = api.settings(
        **{
            "mixpanel.token": "false",
            "mixpanel.metrics.database_url": f"sqlite:///{tmp_path / 'metrics.db'}",
            "mixpanel.metrics.account_property": "company_id",
            "mixpanel.metrics.funnels": FUNNEL,
            "mixpanel.metrics.profile_properties": "plan",
            "mixpanel.insights.days": "7",
        }
    )
    values.pop("mixpanel.delivery")
    sync(values, "2026-01-01", "2026-01-03", progress=False, today=day(30))
    return values


class Root:
    """Only signed-in users may see insights."""

    __acl__: t.ClassVar = [(Allow, Authenticated, "mixpanel.insights")]

    def __init__(self, request: Request) -> None:
        pass


class HeaderSecurity:
    """A security policy for tests: ``X-User`` signs in."""

    def identity(self, request: Request) -> str | None:
        return t.cast("str | None", request.headers.get("X-User"))

    def authenticated_userid(self, request: Request) -> str | None:
        return self.identity(request)

    def permits(self, request: Request, context: object, permission: str) -> t.Any:
        principals = ["system.Everyone"]
        if self.identity(request):
            principals.append(Authenticated)
        return ACLHelper().permits(context, principals, permission)

    def remember(self, request: Request, userid: str, **kw: object) -> list[t.Any]:
        return []

    def forget(self, request: Request, **kw: object) -> list[t.Any]:
        return []


def make_app(settings: dict[str, str], secure: bool = True) -> webtest.TestApp:
    with Configurator(settings=settings, root_factory=Root) as config:
        if secure:
            config.set_security_policy(HeaderSecurity())
        config.include("pyramid_mixpanel.insights")
        app = config.make_wsgi_app()
    return webtest.TestApp(app, extra_environ={"HTTP_X_USER": "csm@example.com"})


RANGE = {"from": "2026-01-01", "to": "2026-01-03"}


def test_events_endpoint_known_answers(settings: dict[str, str]) -> None:
    app = make_app(settings)
    answer = app.get("/api/mixpanel/events/acme", RANGE).json
    assert answer["account"] == "acme"
    days = {d["date"]: d for d in answer["days"]}
    assert sorted(days) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    first = days["2026-01-01"]
    assert (first["total_events"], first["unique_users"], first["sessions"]) == (3, 2, 2)
    assert first["event_counts"] == {"Page Viewed": 2, "User Signed Up": 1}
    assert first["avg_events_per_user"] == 1.5
    assert days["2026-01-02"]["sessions"] == 2  # two hours apart: two sessions
    assert answer["top_events"][0] == {"event": "Page Viewed", "count": 4}
    assert {e["event"] for e in answer["top_events"]} == {
        "Page Viewed",
        "User Signed Up",
        "Report Exported",
    }
    # No one is named: neither distinct ids nor anything else about a person.
    assert "a1" not in app.get("/api/mixpanel/events/acme", RANGE).text


def test_funnels_and_users_endpoints(settings: dict[str, str]) -> None:
    app = make_app(settings)
    answer = app.get("/api/mixpanel/funnels/acme", RANGE).json
    funnels = answer["funnels"]
    assert [(f["date"], f["steps"]) for f in funnels] == [
        ("2026-01-01", [2, 1]),
        ("2026-01-02", [1, 0]),
    ]
    [whole] = answer["range"]
    assert (whole["funnel_name"], whole["steps"], whole["unique_users"]) == ("Signup", [2, 1], True)
    assert (whole["conversion_rate"], whole["completed_users"]) == (0.5, 1)
    first_day = [f for f in funnels if f["date"] == "2026-01-01"]
    assert len(first_day) == 1
    signup = first_day[0]
    assert signup["funnel_name"] == "Signup"
    assert signup["steps"] == [2, 1]
    assert signup["conversion_rate"] == 0.5
    assert signup["completed_users"] == 1
    assert signup["drop_off_step"] == 1
    users = app.get("/api/mixpanel/users/acme").json
    assert users["users"] == 2
    assert users["properties"] == {"plan": {"free": 1, "pro": 1}}
    app.get("/api/mixpanel/users/globex", status=404)


def test_unknown_accounts_and_bad_ranges(settings: dict[str, str]) -> None:
    app = make_app(settings)
    answer = app.get("/api/mixpanel/events/initech", status=404)
    assert answer.json == {"error": "no metrics for account 'initech'"}
    app.get("/api/mixpanel/funnels/initech", status=404)
    app.get("/mixpanel/accounts/initech", status=404)
    for bad in ({"from": "yesterday"}, {"from": "2026-01-03", "to": "2026-01-01"},
                {"from": "2024-01-01", "to": "2026-01-01"}):  # fmt: skip
        assert "error" in app.get("/api/mixpanel/events/acme", bad, status=400).json


#: Ranges a link, a typo or a probe may ask for: each answered 400 (they were 500s: a date
#: before year 1 computing the default start, for one), never a traceback.
BAD_RANGES: list[dict[str, str]] = [
    {"to": "0001-01-05"},  # the default start would be before year 1
    {"from": "9999-12-31"},  # after the default end (yesterday)
    {"from": "2024-13-01"},
    {"from": "2023-02-29"},
    {"from": ""},
    {"to": ""},
    {"to": "20260101"},  # date.fromisoformat takes it: not YYYY-MM-DD
    {"from": "2026-W01-1"},  # a week date, likewise
    {"to": "\uff12\uff10\uff12\uff16-\uff10\uff11-\uff10\uff11"},  # full-width digits
    {"to": "2026-01-01\n"},
    {"from": "1969-12-31", "to": "1970-01-02"},  # before any Mixpanel time
    {"from": "0001-01-01", "to": "9999-12-31"},  # a huge range
    {"from": "2025-01-01", "to": "2026-01-02"},  # 367 days
    {"from": "2026-01-03", "to": "2026-01-01"},  # backwards
]


def test_bad_ranges_answer_400_with_what_is_expected(settings: dict[str, str]) -> None:
    app = make_app(settings)
    for params in BAD_RANGES:
        for path in ("/api/mixpanel/events/acme", "/api/mixpanel/funnels/acme"):
            error = app.get(path, params, status=400).json["error"]
            assert error.startswith("from and to must be days") or error.startswith(
                "from must not be after to, and a range spans at most 366 days"
            ), (path, params, error)
        # The page answers a page (what a browser asks for) saying the same.
        page = app.get(
            "/mixpanel/accounts/acme", params, headers={"Accept": "text/html"}, status=400
        )
        assert page.content_type == "text/html"
        assert "from and to must be days" in page.text or "a range spans at most" in page.text


def test_ranges_at_the_edges(settings: dict[str, str]) -> None:
    app = make_app(settings)
    # The default start of a range ending near 1970 stops at 1970-01-01.
    answer = app.get("/api/mixpanel/events/acme", {"to": "1970-01-03"}).json
    assert (answer["from"], answer["to"], answer["days"]) == ("1970-01-01", "1970-01-03", [])
    answer = app.get("/api/mixpanel/events/acme", {"to": "9999-12-31"}).json
    assert (answer["from"], answer["to"]) == ("9999-12-25", "9999-12-31")  # insights.days = 7
    full = {"from": "2025-01-04", "to": "2026-01-04"}  # 366 days: the most
    assert len(app.get("/api/mixpanel/events/acme", full).json["days"]) == 3
    html = app.get("/mixpanel/accounts/acme", {"from": "9999-12-30", "to": "9999-12-31"}).text
    assert "0 events from 9999-12-30 to 9999-12-31" in html


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_account_ids_no_store_can_hold_are_not_found(
    backend: str, settings: dict[str, str], request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":  # where a NUL in a query was a DataError: a 500
        settings = dict(settings)
        database = request.getfixturevalue("postgres").database()
        settings["mixpanel.metrics.database_url"] = database
        sync(settings, "2026-01-01", "2026-01-03", progress=False, today=day(30))
    app = make_app(settings)
    for account in ("a%00b", "x" * 256, "%00"):
        for path in ("events", "funnels", "users"):
            answer = app.get(f"/api/mixpanel/{path}/{account}", status=404).json
            assert answer["error"].startswith("no ")
            assert len(answer["error"]) < 150  # the id is cut in the answer
        app.get(f"/mixpanel/accounts/{account}", status=404)
    assert app.get("/api/mixpanel/events/acme", RANGE).json["account"] == "acme"


def test_default_range_is_the_last_days_up_to_yesterday(settings: dict[str, str]) -> None:
    answer = make_app(settings).get("/api/mixpanel/events/acme").json
    yesterday = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    assert answer["to"] == yesterday.isoformat()
    assert answer["from"] == (yesterday - dt.timedelta(days=6)).isoformat()  # insights.days = 7


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_yesterday_is_the_project_timezones(settings: dict[str, str], zone: str) -> None:
    # UTC+14 and UTC-11: at any moment, their "yesterday" differs from one of UTC's.
    settings["mixpanel.project_timezone"] = zone
    app = make_app(settings)

    def yesterday() -> str:
        now = dt.datetime.now(zoneinfo.ZoneInfo(zone))
        return (now.date() - dt.timedelta(days=1)).isoformat()

    before = yesterday()
    answer = app.get("/api/mixpanel/events/acme").json
    assert answer["to"] in {before, yesterday()}  # the same, unless midnight passed there


def test_a_permission_protects_every_view(settings: dict[str, str]) -> None:
    app = make_app(settings)
    for path in (
        "/api/mixpanel/events/acme",
        "/api/mixpanel/funnels/acme",
        "/api/mixpanel/users/acme",
        "/api/mixpanel/sync",
        "/mixpanel/accounts/acme",
    ):
        app.get(path, extra_environ={"HTTP_X_USER": ""}, status=403)
    app.post("/api/mixpanel/sync", extra_environ={"HTTP_X_USER": ""}, status=403)


def test_the_account_page(settings: dict[str, str]) -> None:
    page = make_app(settings).get("/mixpanel/accounts/acme", RANGE)
    assert page.content_type == "text/html"
    html = page.text
    assert '<svg id="volume-chart"' in html
    assert html.count("<rect ") >= 3 + 2  # three days of bars, two funnel steps
    assert "<title>2026-01-01: 3 events</title>" in html
    assert '<td>Page Viewed</td><td class="n">4</td>' in html
    # a1 entered on day 1 (and signed up) and again on day 2, a2 on day 1: two users, each
    # counted once by their first entry, not three daily entries.
    assert "50% converted: 1 of 2 users completed (each user once" in html
    assert "step 1: 2 (100%)" in html
    assert "2 known users" in html


def test_sync_endpoint_runs_one_sync_at_a_time(settings: dict[str, str], api: QueryStandIn) -> None:
    app = make_app(settings)
    state: InsightsState = app.app.registry[INSIGHTS_KEY]
    # The sync runs up to yesterday, about 50 weekly exports: lift the export budgets (a
    # client-side wait, tested with the query client) for this project, Mixpanel's too. The
    # limits are shared through the metrics database here.
    key = MixpanelQuery(settings)._project_key()
    url = settings["mixpanel.metrics.database_url"]
    query_limits._SHARED[key, url] = QueryLimits(exports_per_second=1000, exports_per_hour=1000)
    api.limits = RateLimits(exports_per_hour=None, exports_per_second=None)
    status = app.get("/api/mixpanel/sync").json
    fresh = status.pop("freshness")
    assert status == {"running": False, "last_synced_day": "2026-01-03", "last_sync": None}
    # Synced up to Jan 3 long ago: stale, and said so.
    assert (fresh["last_synced_day"], fresh["max_age_hours"], fresh["stale"]) == (
        "2026-01-03",
        24,
        True,
    )
    assert fresh["age_hours"] > 24
    api.fail_next = [(400, '{"error": "project is being migrated"}', {})]
    exported = sum(1 for r in api.requests if r["path"] == "/api/2.0/export")
    started = app.post("/api/mixpanel/sync", status=202)
    assert started.json == {"status": "started"}
    wait_until(lambda: state.last_sync is not None, 30, lambda: None)
    assert state.last_sync is not None
    # The incremental sync resumed (re-reading the funnel window before 2026-01-04); its
    # first export was refused.
    exports = [r for r in api.requests if r["path"] == "/api/2.0/export"]
    assert len(exports) == exported + 1
    status = app.get("/api/mixpanel/sync").json
    assert status["running"] is False
    assert status["last_sync"]["status"] == "failed"
    assert "project is being migrated" in status["last_sync"]["error"]
    # A second run succeeds and says what it did.
    state.thread = None
    app.post("/api/mixpanel/sync", status=202)
    wait_until(lambda: (state.last_sync or {}).get("status") == "finished", 60, lambda: None)
    assert state.last_sync is not None
    assert state.last_sync["report"]["days"] > 0


def test_a_running_sync_answers_409(settings: dict[str, str]) -> None:
    app = make_app(settings)
    state: InsightsState = app.app.registry[INSIGHTS_KEY]
    release = threading.Event()
    state.thread = threading.Thread(target=release.wait, args=(10,))
    state.thread.start()
    try:
        assert app.post("/api/mixpanel/sync", status=409).json == {"status": "running"}
        assert app.get("/api/mixpanel/sync").json["running"] is True
    finally:
        release.set()
        state.thread.join(10)


def test_settings(caplog: pytest.LogCaptureFixture) -> None:
    parsed = parse_insights_settings(
        {
            "mixpanel.insights.permission": "view_metrics",
            "mixpanel.insights.api_prefix": "/internal/mp",
            "mixpanel.insights.page_prefix": "/cs/accounts",
            "mixpanel.insights.days": "90",
            "mixpanel.insights.dayz": "1",
        }
    )
    assert (parsed.permission, parsed.api_prefix, parsed.page_prefix, parsed.days) == (
        "view_metrics",
        "/internal/mp",
        "/cs/accounts",
        90,
    )
    assert "Unknown setting mixpanel.insights.dayz is ignored." in caplog.text
    assert parse_insights_settings({"mixpanel.insights.api_prefix": ""}).api_prefix == (
        "/api/mixpanel"
    )
    for value in ("api/mixpanel", "/api/", "/api/{x}"):
        with pytest.raises(MixpanelConfigurationError, match="must be a path"):
            parse_insights_settings({"mixpanel.insights.api_prefix": value})
    with pytest.raises(MixpanelConfigurationError, match="between 1 and 366"):
        parse_insights_settings({"mixpanel.insights.days": "400"})


def test_without_the_metrics_extra(
    settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyramid_mixpanel.insights.views", None)
    with pytest.raises(MixpanelConfigurationError, match=r"pyramid_mixpanel\[metrics\]"):
        make_app(settings)


def test_custom_prefixes(settings: dict[str, str]) -> None:
    settings = {
        **settings,
        "mixpanel.insights.api_prefix": "/internal/mp",
        "mixpanel.insights.page_prefix": "/cs",
    }
    app = make_app(settings, secure=False)  # no security policy: Pyramid allows every view
    app.get("/internal/mp/events/acme", RANGE, status=200)
    app.get("/cs/acme", RANGE, status=200)


def test_rendering_helpers() -> None:
    empty = volume_chart([], JAN1, day(2))
    assert "peak 0" in empty
    assert empty.count("<rect ") == 3
    spike = DailyMetrics("acme", JAN1, 10, 1, 1, 10.0, anomaly="spike")
    assert "#dc2626" in volume_chart([spike], JAN1, JAN1)  # anomalies stand out
    local = FunnelMetrics("acme", "Signup", "Signup", JAN1, [4, 2])
    saved = FunnelMetrics("acme", "7", "Saved", JAN1, [3, 1], "mixpanel")
    assert funnel_summary(local).startswith("50% converted: 2 of 4 users completed (each user")
    assert funnel_summary(saved).startswith("33% converted: 1 of 3 entries completed (Mixpanel")


def test_anomalies_are_named_on_the_page() -> None:
    days = [
        DailyMetrics("acme", JAN1, 10, 2, 2, 5.0, engagement_score=40.0),
        DailyMetrics("acme", day(1), 90, 2, 3, 45.0, engagement_score=72.4, anomaly="spike"),
    ]
    html = account_page("acme <3", JAN1, day(1), days, [("A<b>", 100)], [], None)
    assert "Unusual days: 2026-01-02 (spike)" in html
    assert "engagement score 72/100 on the last day" in html
    assert "acme &lt;3" in html
    assert "A&lt;b&gt;" in html  # names from the data are escaped
    assert "known users" not in html


def test_page_without_data_in_range(settings: dict[str, str]) -> None:
    html = make_app(settings).get("/mixpanel/accounts/globex", RANGE).text
    assert "No funnel data in this range." not in html or "Signup" in html
    html = (
        make_app(settings)
        .get("/mixpanel/accounts/acme", {"from": "2026-02-01", "to": "2026-02-03"})
        .text
    )
    assert "No events in this range." in html
    assert "No funnel data in this range." in html
    assert "0 events from 2026-02-01" in html


# -- the page in a real browser ---------------------------------------------------------------


@pytest.fixture
def site(settings: dict[str, str]) -> Iterator[str]:
    app = make_app(settings, secure=False).app
    with serve(app) as url:
        yield url


def colored_pixels(png: bytes, rgb: tuple[int, int, int]) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = image.tobytes()
    return sum(
        1
        for i in range(0, len(pixels), 3)
        if max(abs(pixels[i + k] - rgb[k]) for k in range(3)) < 30
    )


def test_the_page_in_chromium_shows_the_charts(
    browser: t.Any, site: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    from selenium.webdriver.common.by import By

    caplog.set_level(logging.WARNING)
    browser.set_window_size(1000, 1400)
    browser.get(f"{site}/mixpanel/accounts/acme?from=2026-01-01&to=2026-01-03")
    assert browser.title == "acme · Mixpanel insights"
    chart = browser.find_element(By.ID, "volume-chart")
    shot = chart.screenshot_as_png
    (tmp_path / "volume.png").write_bytes(shot)
    blue = colored_pixels(shot, (0x25, 0x63, 0xEB))
    assert blue > 2000  # three bars of the event-volume chart are drawn
    funnel = browser.find_element(By.CSS_SELECTOR, "svg.funnel-chart").screenshot_as_png
    assert colored_pixels(funnel, (0x16, 0xA3, 0x4A)) > 1000  # the funnel's step bars
    rows = browser.find_elements(By.CSS_SELECTOR, "#top-events tr")
    assert len(rows) == 4  # header + three events
    empty = browser.get_screenshot_as_png()
    assert colored_pixels(empty, (0x25, 0x63, 0xEB)) >= blue


def test_the_include_opens_no_database_until_a_view_needs_it(tmp_path: pathlib.Path) -> None:
    connections: list[object] = []

    def count(dbapi_connection: object, record: object) -> None:
        connections.append(dbapi_connection)

    sa.event.listen(sa.pool.Pool, "connect", count)
    try:
        database = tmp_path / "fresh.db"
        settings = {
            "mixpanel.token": "false",
            "mixpanel.metrics.database_url": f"sqlite:///{database}",
            "mixpanel.metrics.account_property": "company_id",
        }
        app = make_app(settings)
        assert connections == []  # include and commit: no connection, no migration
        assert not database.exists()
        # Before any migration the views say what to run instead of failing with SQL errors.
        answer = app.get("/api/mixpanel/events/acme", status=503).json
        assert "pmixpanel migrate" in answer["error"]
        app.get("/mixpanel/accounts/acme", status=503)
        assert app.get("/api/mixpanel/sync").json["last_synced_day"] is None
        assert connections  # the first view opened the store
        MetricsStore(settings["mixpanel.metrics.database_url"]).close()  # pmixpanel migrate
        app.get("/api/mixpanel/events/acme", status=404)  # migrated, no data for acme yet
    finally:
        sa.event.remove(sa.pool.Pool, "connect", count)
    state: InsightsState = app.app.registry[INSIGHTS_KEY]
    state.close()
    InsightsState(state.settings, {}, state.metrics).close()  # never opened: nothing to close


def test_settings_added_after_the_include_count(settings: dict[str, str]) -> None:
    with Configurator(settings=settings, root_factory=Root) as config:
        config.include("pyramid_mixpanel.insights")
        config.add_settings({"mixpanel.insights.api_prefix": "/later"})
    app = webtest.TestApp(config.make_wsgi_app())
    app.get("/later/events/acme", RANGE, status=200)
    app.get("/api/mixpanel/events/acme", RANGE, status=404)


# -- trends, the overview, CSV and chat commands ----------------------------------------------


def test_funnel_trends_compare_with_the_previous_period(settings: dict[str, str]) -> None:
    app = make_app(settings)
    day_two = {"from": "2026-01-02", "to": "2026-01-02"}
    [signup] = app.get("/api/mixpanel/funnels/acme", day_two).json["range"]
    # Day 2: a1 entered again and did not sign up; day 1 (the previous period): 1 of 2.
    assert (signup["steps"], signup["previous"]["steps"]) == ([1, 0], [2, 1])
    assert signup["change"] == {"conversion_points": -50.0, "steps": [-1, -1]}
    [first] = app.get("/api/mixpanel/funnels/acme", RANGE).json["range"]
    assert (first["previous"], first["change"]) == (None, None)  # nothing before Jan 1
    html = app.get("/mixpanel/accounts/acme", day_two).text
    assert "Previous period: 50% converted (1 of 2); -50 points." in html
    assert (
        "No entries in the previous period to compare with."
        in app.get("/mixpanel/accounts/acme", RANGE).text
    )
    assert views_module._previous(dt.date(1970, 1, 1), dt.date(1970, 1, 2)) is None
    epoch = {"from": "1970-01-01", "to": "1970-01-02"}  # no period before 1970 to look up
    assert app.get("/api/mixpanel/funnels/acme", epoch).json["range"] == []


def test_the_accounts_overview_api(settings: dict[str, str]) -> None:
    app = make_app(settings)
    answer = app.get("/api/mixpanel/accounts", RANGE).json
    assert (answer["total"], answer["sort"], answer["order"]) == (2, "events", "desc")
    acme, globex = answer["accounts"]
    assert (acme["account"], acme["events"], acme["active_days"]) == ("acme", 6, 3)
    # 2 users on day 1, 1 on day 2, 1 on day 3: a daily mean, said as such.
    assert acme["mean_daily_users"] == 1.33
    assert (acme["known_users"], acme["trend"], acme["previous_events"]) == (2, None, 0)
    assert (globex["account"], globex["events"], globex["known_users"]) == ("globex", 1, None)
    paged = app.get("/api/mixpanel/accounts", {**RANGE, "per_page": "1", "page": "2"}).json
    assert [row["account"] for row in paged["accounts"]] == ["globex"]
    by_name = app.get("/api/mixpanel/accounts", {**RANGE, "sort": "account"}).json
    assert [row["account"] for row in by_name["accounts"]] == ["acme", "globex"]
    scores = app.get("/api/mixpanel/accounts", {**RANGE, "sort": "score", "order": "asc"}).json
    assert len(scores["accounts"]) == 2
    later = {"from": "2026-01-04", "to": "2026-01-06"}  # the trend against Jan 1-3
    moved = app.get("/api/mixpanel/accounts", {**later, "sort": "trend"}).json["accounts"]
    assert moved[0]["trend"] == -1.0  # all events were in the previous period
    for bad in ({"sort": "x"}, {"order": "up"}, {"page": "0"}, {"per_page": "501"}, {"page": "a"}):
        error = app.get("/api/mixpanel/accounts", bad, status=400).json["error"]
        assert "sort" in error or "page" in error


def test_the_accounts_overview_page(settings: dict[str, str]) -> None:
    app = make_app(settings)
    html = app.get("/mixpanel/accounts", RANGE).text
    assert '<a href="/mixpanel/accounts/acme?from=2026-01-01&amp;to=2026-01-03">acme</a>' in html
    assert "sort=events&amp;order=asc" in html  # the current column flips
    assert 'name="viewport"' in html
    app.get("/mixpanel/accounts", {"sort": "nope"}, status=400)


def test_the_overview_page_of_an_empty_store(tmp_path: pathlib.Path) -> None:
    database = f"sqlite:///{tmp_path / 'empty.db'}"
    MetricsStore(database).close()
    settings = {
        "mixpanel.token": "false",
        "mixpanel.metrics.database_url": database,
        "mixpanel.metrics.account_property": "company_id",
    }
    html = make_app(settings).get("/mixpanel/accounts").text
    assert "No accounts have metrics yet." in html


def test_metrics_as_csv_for_analysts(settings: dict[str, str]) -> None:
    app = make_app(settings)
    answer = app.get("/api/mixpanel/metrics.csv", RANGE)
    assert answer.content_type == "text/csv"
    assert (
        'filename="mixpanel-metrics-2026-01-01-2026-01-03.csv"'
        in answer.headers["Content-Disposition"]
    )
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == list(export.CSV_COLUMNS)
    assert rows[1][:5] == ["acme", "2026-01-01", "3", "2", "2"]
    assert [row[0] for row in rows[1:]] == ["acme", "acme", "acme", "globex"]
    assert export.cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert (export.cell("acme"), export.cell(3)) == ("acme", 3)


@pytest.mark.parametrize(
    ("question", "command", "said"),
    [
        ("Show Mixpanel events for acme", "events", "acme: 6 events on 3 active days"),
        ("events for acme?", "events", "most frequent: Page Viewed"),
        ("What's the funnel conversion for acme?", "funnels", "Signup 50% (1 of 2)"),
        ("funnel conversion acme", "funnels", "acme, funnel conversion from 2026-01-01"),
    ],
)
def test_chat_commands(settings: dict[str, str], question: str, command: str, said: str) -> None:
    app = make_app(settings)
    answer = app.get("/api/mixpanel/ask", {**RANGE, "q": question}).json
    assert (answer["command"], answer["account"]) == (command, "acme")
    assert said in answer["summary"]
    assert answer["answer"]["account"] == "acme"


def test_chat_commands_that_are_not_understood(settings: dict[str, str]) -> None:
    app = make_app(settings)
    answer = app.get("/api/mixpanel/ask", {"q": "delete everything"}, status=400).json
    assert answer["understood"] == views_module.UNDERSTOOD
    app.get("/api/mixpanel/ask", {"q": "events for initech"}, status=404)
    later = {"from": "2026-01-05", "to": "2026-01-06"}
    quiet = app.get("/api/mixpanel/ask", {"q": "funnel conversion globex", **later}).json
    assert quiet["summary"] == "globex: no funnel data from 2026-01-05 to 2026-01-06."
    none = app.get("/api/mixpanel/ask", {"q": "events for acme", "from": "2026-01-05"}).json
    assert none["summary"].startswith("acme: 0 events on 0 active days")


def test_the_new_views_need_the_permission(settings: dict[str, str]) -> None:
    app = make_app(settings)
    for path in ("/api/mixpanel/accounts", "/api/mixpanel/metrics.csv", "/mixpanel/accounts"):
        app.get(path, extra_environ={"HTTP_X_USER": ""}, status=403)
    app.get("/api/mixpanel/ask", {"q": "events for acme"}, extra_environ={"HTTP_X_USER": ""},
            status=403)  # fmt: skip


def test_the_pages_fit_a_phone_in_chromium(browser: t.Any, site: str) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(375, 800)
    for path in ("/mixpanel/accounts/acme", "/mixpanel/accounts"):
        browser.get(f"{site}{path}?from=2026-01-01&to=2026-01-03")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= browser.execute_script("return window.innerWidth"), path
    table = browser.find_element(By.ID, "accounts")
    assert "acme" in table.text
    shot = browser.find_element(By.TAG_NAME, "body").screenshot_as_png
    assert colored_pixels(shot, (0x00, 0x00, 0xEE)) > 20  # the links to the account pages
    browser.get(f"{site}/mixpanel/accounts/acme?from=2026-01-01&to=2026-01-03")
    chart = browser.find_element(By.ID, "volume-chart").screenshot_as_png
    assert colored_pixels(chart, (0x25, 0x63, 0xEB)) > 500  # the bars, scaled down to fit


def test_the_activity_heatmap(settings: dict[str, str]) -> None:
    app = make_app(settings)
    heat = app.get("/api/mixpanel/events/acme", RANGE).json["heatmap"]
    assert heat["timezone"] == "UTC"
    assert heat["weekdays"][0] == "Mon"
    counts = heat["counts"]
    # 2026-01-01 is a Thursday: three events in its first hour; Friday one at 00:01 and one at
    # 02:01; Saturday one at 00:01.
    thursday, friday, saturday = counts[3], counts[4], counts[5]
    assert (thursday[0], sum(thursday)) == (3, 3)
    assert (friday[0], friday[2], sum(friday)) == (1, 1, 2)
    assert (saturday[0], sum(saturday)) == (1, 1)
    assert sum(map(sum, counts)) == 6
    html = app.get("/mixpanel/accounts/acme", RANGE).text
    assert '<svg id="heatmap"' in html
    assert "<title>Thu 00:00-00:59 UTC: 3 events</title>" in html
    assert html.count("<rect ") >= 7 * 24


def test_days_synced_before_the_hours_were_kept() -> None:
    old = DailyMetrics("acme", JAN1, 10, 1, 1, 10.0)  # no hours
    assert render_module.heatmap_counts([old]) == [[0] * 24 for _ in range(7)]
    assert 'fill-opacity="0.00"' in render_module.heatmap([old], "UTC")


def test_the_heatmap_in_chromium(browser: t.Any, site: str) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(1000, 1400)
    browser.get(f"{site}/mixpanel/accounts/acme?from=2026-01-01&to=2026-01-03")
    shot = browser.find_element(By.ID, "heatmap").screenshot_as_png
    assert colored_pixels(shot, (0x25, 0x63, 0xEB)) > 300  # the busiest cell, full blue


# -- connecting a service account at run time -----------------------------------------------

FERNET_KEY = "vI0m1K1S4d4d2s8YyHkq0aQmX0m3yQ9m3s2sBq8nZ1E="  # a test key


class ConnectSecurity(HeaderSecurity):
    """``X-User: admin`` may connect; other signed-in users may only read insights."""

    def permits(self, request: Request, context: object, permission: str) -> t.Any:
        if permission == "mixpanel.insights.connect":
            return request.headers.get("X-User") == "admin"
        return super().permits(request, context, permission)


def connect_app(settings: dict[str, str], **extra: str) -> webtest.TestApp:
    values = {
        key: value
        for key, value in settings.items()
        if not key.startswith("mixpanel.service_account.")
    }
    values.update({"mixpanel.metrics.secret_key": FERNET_KEY, **extra})
    with Configurator(settings=values, root_factory=Root) as config:
        config.set_security_policy(ConnectSecurity())
        config.include("pyramid_mixpanel.insights")
        app = config.make_wsgi_app()
    return webtest.TestApp(app, extra_environ={"HTTP_X_USER": "admin"})


def credentials(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "username": USERNAME,
        "secret": SECRET,
        "project_id": PROJECT_ID,
        "region": "EU",
    }
    body.update(changes)
    return body


def test_connect_verify_store_encrypted_then_sync_with_it(
    settings: dict[str, str], api: QueryStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = connect_app(settings)
    path = "/api/integrations/mixpanel/connect"
    assert app.get(path).json == {"connected": False}
    asked = len(api.requests)
    answer = app.post_json(path, credentials()).json
    assert api.requests[asked]["path"] == "/api/query/funnels/list"  # the one verification call
    assert answer["connected"] is True
    assert (answer["username"], answer["project_id"], answer["region"]) == (
        USERNAME,
        PROJECT_ID,
        "eu",
    )
    assert app.get(path).json == answer
    # The secret: never answered, never logged, stored encrypted.
    assert SECRET not in json.dumps(answer) and SECRET not in caplog.text
    database = settings["mixpanel.metrics.database_url"]
    with MetricsStore(database) as store:
        stored = store.connection()
        assert stored is not None and SECRET.encode() not in stored.token
        assert SECRET not in repr(stored)
    # A sync without a service account in the settings uses the connection.
    values = {k: v for k, v in settings.items() if not k.startswith("mixpanel.service_account.")}
    values["mixpanel.metrics.secret_key"] = FERNET_KEY
    report = sync(values, "2026-01-04", "2026-01-04", progress=False, today=day(30))
    assert report.ok and report.days == 1
    # Without the key it cannot be decrypted, and says so.
    values.pop("mixpanel.metrics.secret_key")
    with pytest.raises(SyncError, match="mixpanel.metrics.secret_key is not set"):
        sync(values, "2026-01-05", "2026-01-05", progress=False, today=day(30))
    # With another key: connect again.
    other = "x" * 43 + "="
    values["mixpanel.metrics.secret_key"] = other.replace("x", "A")
    with pytest.raises(MixpanelConfigurationError, match="connect again"):
        sync(values, "2026-01-05", "2026-01-05", progress=False, today=day(30))
    assert app.delete(path).json == {"connected": False, "deleted": True}
    assert app.delete(path).json == {"connected": False, "deleted": False}
    assert app.get(path).json == {"connected": False}


def test_connect_refusals(settings: dict[str, str], api: QueryStandIn) -> None:
    app = connect_app(settings)
    path = "/api/integrations/mixpanel/connect"
    refused = app.post_json(path, credentials(secret="wrong-secret"), status=400).json
    assert refused == {"error": "Mixpanel refused these credentials (401)"}
    for body, error in (
        (credentials(region="mars"), "region must be one of us, eu, in"),
        (credentials(project_id="abc"), "project_id must be the project's number"),
        (credentials(username=""), "username must be a non-empty string"),
        (credentials(secret=7), "secret must be a non-empty string"),
        (credentials(extra=1), "unknown fields: ['extra']"),
        ([1, 2], "send a JSON object"),
    ):
        assert error in app.post_json(path, body, status=400).json["error"]
    assert app.post(path, b"not json", content_type="application/json", status=400)
    # A number as project id is taken; no region means us.
    body = credentials(project_id=int(PROJECT_ID))
    del body["region"]
    assert app.post_json(path, body).json["region"] == "us"
    api.fail_next = [(500, "{}", {})]  # Mixpanel answers 500: cannot tell
    answer = app.post_json(path, credentials(), status=502).json
    assert answer["error"].startswith("Mixpanel could not verify them now")
    # Only who holds the connect permission may see or change it.
    for method in ("get", "delete"):
        getattr(app, method)(path, extra_environ={"HTTP_X_USER": "csm"}, status=403)
    app.post_json(path, credentials(), extra_environ={"HTTP_X_USER": "csm"}, status=403)


def test_connect_needs_a_secret_key(settings: dict[str, str]) -> None:
    app = connect_app(settings, **{"mixpanel.metrics.secret_key": ""})
    answer = app.post_json("/api/integrations/mixpanel/connect", credentials(), status=503)
    assert "mixpanel.metrics.secret_key" in answer.json["error"]


def test_a_bad_secret_key_stops_the_app(settings: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="must be a Fernet key") as raised:
        connect_app(settings, **{"mixpanel.metrics.secret_key": "not-a-key"})
    assert "not-a-key" not in str(raised.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings_hypothesis(max_examples=60, deadline=None)
@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "username": json_values,
                "secret": json_values,
                "project_id": json_values,
                "region": json_values,
            },
        ),
    )
)
def test_any_connect_body_gets_a_documented_answer(
    connect_client: webtest.TestApp, body: object
) -> None:
    answer = connect_client.post_json("/api/integrations/mixpanel/connect", body, status="*")
    assert answer.status_int in (200, 400, 502), answer.text
    assert "error" in answer.json or answer.json["connected"] is True


@pytest.fixture(scope="module")
def connect_client(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[webtest.TestApp]:
    with QueryStandIn() as server:
        database = f"sqlite:///{tmp_path_factory.mktemp('connect') / 'm.db'}"
        MetricsStore(database).close()
        values = server.settings(
            **{
                "mixpanel.token": "false",
                "mixpanel.metrics.database_url": database,
                "mixpanel.metrics.account_property": "company_id",
            }
        )
        values.pop("mixpanel.delivery")
        yield connect_app(values)


def test_saved_reports_on_the_page_and_in_the_api(
    settings: dict[str, str], api: QueryStandIn
) -> None:
    api.bookmarks = {
        "21": {
            "headers": ["$event", "company_id"],
            "series": {"Logged in": {"acme": {"2026-01-01": 3, "2026-01-02": 4}}},
        },
        "22": {"headers": ["$event"], "series": {"Signups": {"2026-01-02": 9}}},
    }
    values = {**settings, "mixpanel.metrics.reports": "21, 22"}
    sync(values, "2026-01-01", "2026-01-03", progress=False, today=day(30))
    app = make_app(settings)
    answer = app.get("/api/mixpanel/reports/acme", RANGE).json
    logged, signups = answer["reports"]
    assert (logged["metric"], logged["total"], logged["all_accounts"]) == ("Logged in", 7.0, False)
    assert logged["latest"] == {"date": "2026-01-02", "value": 4.0}
    assert [v["value"] for v in logged["values"]] == [3.0, 4.0]
    assert (signups["metric"], signups["all_accounts"]) == ("Signups", True)
    html = app.get("/mixpanel/accounts/acme", RANGE).text
    assert "<table id='reports'>" in html
    assert "Signups <small>(all accounts)</small>" in html
    empty = app.get("/mixpanel/accounts/globex", RANGE).text
    assert "Signups" in empty  # the report for every account
    quiet = app.get("/mixpanel/accounts/acme", {"from": "2026-02-01", "to": "2026-02-02"}).text
    assert "No saved reports in this range." in quiet
