"""MixpanelQuery against the loopback stand-in of Mixpanel's query side, with known answers."""

from __future__ import annotations

import datetime as dt
import threading
import typing as t
from collections.abc import Iterator

import pytest
import requests

from pyramid_mixpanel import MixpanelQuery, MixpanelQueryError, MultipleProfilesFoundException
from pyramid_mixpanel.delivery.policy import RetryPolicy
from pyramid_mixpanel.query import ExportChunk, where_equals
from pyramid_mixpanel.query_limits import QueryLimits, SlidingWindow, limits_for

from .query_standin import PROJECT_ID, SECRET, USERNAME, QueryStandIn

DAY = dt.date(2026, 1, 1)
EPOCH = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp())


def event(name: str, user: str, day: int, minute: int = 0, **props: t.Any) -> dict[str, t.Any]:
    when = EPOCH + day * 86400 + minute * 60
    return {"event": name, "properties": {"distinct_id": user, "time": when, **props}}


@pytest.fixture
def api() -> Iterator[QueryStandIn]:
    with QueryStandIn() as server:
        yield server


class FakeTime:
    """A clock that only moves when slept on, recording every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client(api: QueryStandIn, **kwargs: t.Any) -> MixpanelQuery:
    kwargs.setdefault("sleep", lambda seconds: None)
    kwargs.setdefault("limits", QueryLimits())
    return MixpanelQuery(api.settings(), **kwargs)


# -- export -----------------------------------------------------------------------------------


def test_export_streams_whole_days_in_chunks(api: QueryStandIn) -> None:
    api.events = [event("Page Viewed", f"u{i % 7}", day=i % 20, minute=i) for i in range(200)]
    query = client(api)
    exported = list(query.export(DAY, DAY + dt.timedelta(days=9), chunk_days=4))
    expected = [e for e in api.events if e["properties"]["time"] < EPOCH + 10 * 86400]
    assert sorted(map(str, exported)) == sorted(map(str, expected))
    exports = [r for r in api.requests if r["path"] == "/api/2.0/export"]
    assert [(r["params"]["from_date"], r["params"]["to_date"]) for r in exports] == [
        ("2026-01-01", "2026-01-04"),
        ("2026-01-05", "2026-01-08"),
        ("2026-01-09", "2026-01-10"),
    ]
    assert all(r["params"]["project_id"] == PROJECT_ID for r in exports)


def test_export_filters_and_resumable_chunks(api: QueryStandIn) -> None:
    api.events = [
        event("Page Viewed", "a", 0, company_id="acme"),
        event("Signed Up", "a", 0, company_id="acme"),
        event("Page Viewed", "b", 1, company_id="globex"),
        event("Page Viewed", "c", 2, company_id="acme"),
    ]
    query = client(api)
    chunks = list(query.export_chunks("2026-01-01", "2026-01-03", ["Page Viewed"], chunk_days=1))
    assert [c.from_date for c in chunks] == [DAY + dt.timedelta(days=n) for n in range(3)]
    assert all(isinstance(c, ExportChunk) and c.from_date == c.to_date for c in chunks)
    assert api.requests == []  # nothing is fetched before a chunk is read
    # Resume after the first chunk: only the rest is requested.
    rest = [e for chunk in chunks[1:] for e in chunk.events()]
    assert [e["properties"]["distinct_id"] for e in rest] == ["b", "c"]
    acme = list(query.export(DAY, "2026-01-03", where=where_equals("company_id", "acme")))
    assert [e["event"] for e in acme] == ["Page Viewed", "Signed Up", "Page Viewed"]
    assert api.requests[-1]["params"]["where"] == 'properties["company_id"] == "acme"'


def test_export_is_gzip_compressed_on_the_wire(api: QueryStandIn) -> None:
    api.events = [event("Page Viewed", "u", 0, Path="/x" * 50) for _ in range(50)]
    api.blank_lines = True  # skipped, not parsed
    seen: list[str] = []
    session = requests.Session()
    session.hooks["response"].append(
        lambda response, **kw: seen.append(response.headers.get("Content-Encoding", ""))
    )
    assert len(list(client(api, session=session).export(DAY, DAY))) == 50
    assert seen == ["gzip"]


def test_a_broken_export_stream_is_an_error_naming_the_chunk(api: QueryStandIn) -> None:
    api.events = [event("Page Viewed", "u", 0, minute=n) for n in range(10)]
    api.cut_export = 3
    query = client(api)
    received = []
    with pytest.raises(MixpanelQueryError) as info:
        for item in query.export(DAY, DAY):
            received.append(item)
    assert len(received) < 10  # what arrived before the break (buffering decides how much)
    assert info.value.status == 0
    assert "the export stream broke off" in info.value.error
    assert info.value.request.startswith("GET /api/2.0/export?from_date=2026-01-01")
    assert len(list(query.export(DAY, DAY))) == 10  # the chunk again, whole


def test_dates_are_checked(api: QueryStandIn) -> None:
    query = client(api)
    with pytest.raises(ValueError, match="to_date 2026-01-01 is before from_date 2026-01-02"):
        list(query.export("2026-01-02", "2026-01-01"))
    with pytest.raises(ValueError, match="from_date must be a date or 'YYYY-MM-DD'"):
        list(query.export("yesterday", "2026-01-01"))
    with pytest.raises(ValueError, match="chunk_days must be at least 1"):
        list(query.export_chunks(DAY, DAY, chunk_days=0))
    moment = dt.datetime(2026, 1, 1, 23, 59)
    assert [c.from_date for c in query.export_chunks(moment, moment)] == [DAY]


# -- profiles ---------------------------------------------------------------------------------


def test_engage_follows_every_page(api: QueryStandIn) -> None:
    api.page_size = 3
    api.profiles = [
        {"$distinct_id": f"u{n}", "$properties": {"$email": f"u{n}@x.com", "plan": "pro"}}
        for n in range(8)
    ]
    profiles = list(client(api).engage(output_properties=["plan"]))
    assert [p["$distinct_id"] for p in profiles] == [f"u{n}" for n in range(8)]
    assert profiles[0]["$properties"] == {"plan": "pro"}
    pages = [r["params"] for r in api.requests]
    assert [p.get("page") for p in pages] == [None, "1", "2"]
    assert pages[1]["session_id"] == "session-1"
    assert pages[0]["output_properties"] == '["plan"]'
    api.page_size = 4  # an exact multiple: the empty page after the last one ends it
    assert len(list(client(api).engage(cohort_id=12))) == 8
    assert api.requests[-1]["params"]["filter_by_cohort"] == '{"id": 12}'


def test_profile_by_email_through_engage_quotes_the_value(api: QueryStandIn) -> None:
    api.profiles = [
        {"$distinct_id": "1", "$properties": {"$email": "a@x.com"}},
        {"$distinct_id": "2", "$properties": {"$email": "b@x.com"}},
        {"$distinct_id": "3", "$properties": {"$email": "b@x.com"}},
    ]
    query = client(api)
    assert query.profile_by_email("a@x.com") == api.profiles[0]
    assert query.profile_by_email("nobody@x.com") is None
    with pytest.raises(MultipleProfilesFoundException):
        query.profile_by_email("b@x.com")
    hostile = 'x" or true or "'
    assert query.profile_by_email(hostile) is None
    assert api.requests[-1]["params"]["where"] == 'properties["$email"] == "x\\" or true or \\""'


# -- reports ----------------------------------------------------------------------------------


def test_saved_funnels_with_known_answers(api: QueryStandIn) -> None:
    api.saved_funnels = {7: {"name": "Signup", "steps": ["Page Viewed", "Signed Up", "Paid"]}}
    api.events = [
        event("Page Viewed", "a", 0, 1, company_id="acme"),
        event("Signed Up", "a", 0, 2, company_id="acme"),
        event("Paid", "a", 0, 3, company_id="acme"),
        event("Page Viewed", "b", 0, 1, company_id="acme"),
        event("Signed Up", "c", 0, 1, company_id="globex"),  # skipped a step: not counted
        event("Page Viewed", "d", 0, 1, company_id="globex"),
        event("Signed Up", "d", 0, 2, company_id="globex"),
    ]
    query = client(api)
    assert query.funnels() == [{"funnel_id": 7, "name": "Signup"}]
    overall = query.funnel(7, DAY, DAY)["data"]["2026-01-01"]
    assert [s["count"] for s in overall["steps"]] == [3, 2, 1]
    assert overall["analysis"]["completion"] == 1
    by_account = query.funnel(7, DAY, DAY, on='properties["company_id"]', unit="day", length=7)
    data = by_account["data"]["2026-01-01"]
    assert [s["count"] for s in data["acme"]["steps"]] == [2, 1, 1]
    assert [s["count"] for s in data["globex"]["steps"]] == [1, 1, 0]
    params = api.requests[-1]["params"]
    assert (params["unit"], params["length"], params["funnel_id"]) == ("day", "7", "7")
    with pytest.raises(MixpanelQueryError) as info:
        query.funnel(8, DAY, DAY)
    assert info.value.status == 400
    assert info.value.error == "Funnel does not exist"


def test_insights_segmentation_and_retention(api: QueryStandIn) -> None:
    api.bookmarks = {"123": {"series": {"Page Viewed": {"2026-01-01": 5}}}}
    api.retention = {"2026-01-01": {"counts": [10, 4], "first": 10}}
    api.events = [event("Page Viewed", "a", 0), event("Page Viewed", "b", 1)]
    query = client(api)
    assert query.insights(123) == api.bookmarks["123"]
    with pytest.raises(MixpanelQueryError, match="404 to /api/query/insights: Report not found"):
        query.insights(999)
    values = query.segmentation("Page Viewed", DAY, "2026-01-02", unit="day")["data"]["values"]
    assert values == {"Page Viewed": {"2026-01-01": 1, "2026-01-02": 1}}
    answer = query.retention(DAY, DAY, born_event="Signed Up", event="Page Viewed")
    assert answer == api.retention
    assert api.requests[-1]["params"]["born_event"] == "Signed Up"


# -- auth, errors, retries, limits ------------------------------------------------------------


def test_service_account_auth_and_workspace(api: QueryStandIn) -> None:
    settings = api.settings(**{"mixpanel.service_account.workspace_id": "77"})
    query = MixpanelQuery(settings, limits=QueryLimits())
    assert query.funnels() == []
    (seen,) = api.requests
    assert seen["params"] == {"project_id": PROJECT_ID, "workspace_id": "77"}
    assert seen["auth"].startswith("Basic ")


def test_bad_credentials_raise_without_the_secret(api: QueryStandIn) -> None:
    settings = api.settings(**{"mixpanel.service_account.secret": "wrong-secret-xyz"})
    query = MixpanelQuery(settings, limits=QueryLimits(), sleep=lambda s: None)
    with pytest.raises(MixpanelQueryError) as info:
        query.funnels()
    assert info.value.status == 401
    assert info.value.error == "Invalid credentials"
    assert "wrong-secret-xyz" not in repr(info.value.__dict__)
    assert len(api.requests) == 1  # a 401 is not retried


def test_legacy_api_secret_is_the_basic_auth_user(api: QueryStandIn) -> None:
    settings = {"mixpanel.query_api_host": api.base_url, "mixpanel.api_secret": "legacy"}
    query = MixpanelQuery(settings, limits=QueryLimits())
    with pytest.raises(MixpanelQueryError):
        query.funnels()  # the stand-in only knows the service account
    assert api.requests[0]["params"] == {}


def test_429_and_5xx_are_retried_with_backoff(api: QueryStandIn) -> None:
    api.fail_next = [
        (429, '{"error": "too many requests"}', {"Retry-After": "7"}),
        (503, "<html>unavailable</html>", {}),
    ]
    waits: list[float] = []
    query = client(api, sleep=waits.append, retry=RetryPolicy(base=2.0, cap=60.0))
    assert query.funnels() == []
    assert len(api.requests) == 3
    assert waits[0] >= 7  # Retry-After is a floor
    assert 0 <= waits[1] <= 4  # the second attempt's ceiling


def test_retries_give_up_with_the_last_error(api: QueryStandIn) -> None:
    api.fail_next = [(429, "", {})] * 3
    query = client(api, max_retries=2)
    with pytest.raises(MixpanelQueryError) as info:
        query.insights(1)
    assert info.value.status == 429
    assert info.value.error == "Too Many Requests"
    assert info.value.request == "GET /api/query/insights?bookmark_id=1"


def test_error_answers_without_error_text(api: QueryStandIn) -> None:
    api.fail_next = [(400, '{"status": "error"}', {}), (499, "", {})]
    query = client(api)
    with pytest.raises(MixpanelQueryError) as info:
        query.funnels()
    assert info.value.error == '{"status": "error"}'
    with pytest.raises(MixpanelQueryError) as info:
        query.funnels()
    assert info.value.error == "no error text"


def test_unreachable_mixpanel_is_retried_then_raised() -> None:
    with QueryStandIn() as api:
        settings = api.settings()
    query = MixpanelQuery(settings, limits=QueryLimits(), max_retries=1, sleep=lambda s: None)
    with pytest.raises(MixpanelQueryError) as info:
        query.funnels()
    assert info.value.status == 0
    assert "ConnectionError" in info.value.error


def test_client_side_hourly_budget_waits_instead_of_429(api: QueryStandIn) -> None:
    fake = FakeTime()
    limits = QueryLimits(queries_per_hour=2, clock=fake.clock, sleep=fake.sleep)
    query = client(api, limits=limits)
    for _ in range(3):
        query.funnels()
    assert fake.sleeps == [3600.0]  # the third query waited for the first to leave the window
    assert len(api.requests) == 3


def test_export_budget_per_second_and_per_hour() -> None:
    fake = FakeTime()
    limits = QueryLimits(exports_per_hour=4, exports_per_second=2, clock=fake.clock,
                         sleep=fake.sleep)  # fmt: skip
    waited = [limits.export() for _ in range(5)]
    assert waited[:2] == [0.0, 0.0]
    assert waited[2] == pytest.approx(1.0)  # third in the same second
    assert waited[4] == pytest.approx(3600.0 - 1.0)  # fifth in the same hour


def test_concurrent_queries_are_capped() -> None:
    limits = QueryLimits(concurrent_queries=1)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with limits.query():
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with limits.query():
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.2)
    assert order == ["first in"]  # the second waits for the slot
    release.set()
    one.join(10)
    two.join(10)
    assert order == ["first in", "first out", "second in"]


def test_clients_of_one_project_share_limits(api: QueryStandIn) -> None:
    one = MixpanelQuery(api.settings())
    two = MixpanelQuery(api.settings())
    assert one.limits is two.limits
    legacy = MixpanelQuery({"mixpanel.api_secret": "legacy-secret"})
    assert legacy.limits is limits_for(legacy._project_key())
    assert "legacy-secret" not in repr(legacy._project_key())


def test_sliding_window_frees_slots_as_time_passes() -> None:
    fake = FakeTime()
    window = SlidingWindow(2, 10.0, fake.clock, fake.sleep)
    assert window.acquire() == 0
    fake.now += 6
    assert window.acquire() == 0
    assert window.acquire() == pytest.approx(4.0)  # the first call leaves the window
    assert window.acquire() == pytest.approx(6.0)


def test_credentials_names_for_the_standin() -> None:
    assert USERNAME and SECRET  # the stand-in's credentials are what api.settings() uses
