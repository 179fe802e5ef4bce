"""MixpanelQuery against the loopback stand-in of Mixpanel's query side, with known answers."""

from __future__ import annotations

import datetime as dt
import pathlib
import threading
import time
import typing as t
from collections.abc import Iterator

import pytest
import requests

from pyramid_mixpanel import MixpanelQuery, MixpanelQueryError, MultipleProfilesFoundException
from pyramid_mixpanel.delivery.policy import RetryPolicy
from pyramid_mixpanel.query import ExportChunk, where_equals
from pyramid_mixpanel.query_limits import (
    MemoryLimitStore,
    QueryLimits,
    SlidingWindow,
    limits_for,
)

from .postgres import PostgresServer, postgres  # noqa: F401  # the fixture
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
    api.cohorts = {"12": [f"u{n}" for n in range(0, 8, 2)]}  # every other profile
    assert len(list(client(api).engage(cohort_id=12))) == 4
    assert api.requests[-1]["params"]["filter_by_cohort"] == '{"id": 12}'


def test_profile_by_email_through_engage_quotes_the_value(api: QueryStandIn) -> None:
    api.profiles = [
        {"$distinct_id": "1", "$properties": {"$email": "a@x.com"}},
        {"$distinct_id": "2", "$properties": {"$email": "b@x.com"}},
        {"$distinct_id": "3", "$properties": {"$email": "b@x.com"}},
    ]
    query = client(api)
    # The same answer as the JQL lookup (and the original package): distinct_id and email.
    found = query.profile_by_email("a@x.com", use_jql=False)
    assert found == {"distinct_id": "1", "email": "a@x.com"}
    assert query.profile_by_email("nobody@x.com", use_jql=False) is None
    with pytest.raises(MultipleProfilesFoundException):
        query.profile_by_email("b@x.com", use_jql=False)
    hostile = 'x" or true or "'
    assert query.profile_by_email(hostile, use_jql=False) is None
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
    policy = RetryPolicy(base=2.0, cap=60.0)
    query = client(api, sleep=waits.append, retry=policy)
    assert query.funnels() == []
    assert len(api.requests) == 3
    assert waits[0] >= 7  # Retry-After is a floor
    # The second attempt's backoff plus Mixpanel's 1-5 s of jitter.
    assert policy.ceiling(2) + 1 <= waits[1] <= policy.ceiling(2) + 5


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
    # The third query waited for the first to leave the window, and a margin for the way there.
    assert fake.sleeps == [3600.25]
    assert len(api.requests) == 3


def test_export_budget_per_second_and_per_hour() -> None:
    fake = FakeTime()
    limits = QueryLimits(exports_per_hour=4, exports_per_second=2, clock=fake.clock,
                         sleep=fake.sleep, margin=0)  # fmt: skip
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


def test_a_client_from_parsed_settings(api: QueryStandIn) -> None:
    from pyramid_mixpanel.settings import parse_settings

    query = MixpanelQuery(parse_settings(api.settings()), limits=QueryLimits())
    assert query.funnels() == []


# -- the stand-in's rules, through the real client --------------------------------------------


def test_standin_export_is_not_deduplicated(api: QueryStandIn) -> None:
    api.events = [
        event("Page Viewed", f"u{n}", 0, n, **{"$insert_id": f"id-{n}"}) for n in range(6)
    ]
    api.duplicate_every = 3  # a retried send, stored twice by Mixpanel
    exported = list(client(api).export(DAY, DAY))
    ids = [e["properties"]["$insert_id"] for e in exported]
    assert ids == ["id-0", "id-1", "id-2", "id-3", "id-4", "id-5", "id-2", "id-5"]
    assert exported[6] == exported[2]  # the same name, distinct_id, time and $insert_id


def test_standin_export_in_the_project_timezone(api: QueryStandIn) -> None:
    late = event("Page Viewed", "a", 1, 3 * 60)  # 2026-01-02 03:00 UTC: 19:00 on Jan 1 in LA
    early = event("Page Viewed", "b", 1, 9 * 60)  # 2026-01-02 09:00 UTC: 01:00 on Jan 2 in LA
    api.events = [late, early]
    query = client(api)
    assert [e["properties"]["distinct_id"] for e in query.export(DAY, DAY)] == []
    api.project_timezone = "America/Los_Angeles"  # a project created before 2023, UTC-8
    (first,) = query.export(DAY, DAY)
    # Its day is the project's, and its time the project's wall clock in seconds.
    assert first["properties"]["distinct_id"] == "a"
    assert first["properties"]["time"] == late["properties"]["time"] - 8 * 3600
    assert first["properties"]["time"] // 86400 * 86400 == EPOCH
    (second,) = query.export(DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1))
    assert second["properties"]["distinct_id"] == "b"
    assert [r["params"]["from_date"] for r in api.requests] == [
        "2026-01-01",
        "2026-01-01",
        "2026-01-02",
    ]


def test_standin_funnels_have_one_bucket_per_day(api: QueryStandIn) -> None:
    api.saved_funnels = {7: {"name": "Signup", "steps": ["Page Viewed", "Signed Up"]}}
    api.events = [
        event("Page Viewed", "u1", 0, 10),
        event("Signed Up", "u1", 1, 10),  # the next day: counted in the entry day's bucket
        event("Page Viewed", "u2", 1, 10),
        event("Page Viewed", "u2", 1, 20),  # enters once a day
        event("Page Viewed", "u3", 2, 10),
        event("Signed Up", "u3", 3, 10),  # after to_date: still a completion
    ]
    query = client(api)
    answer = query.funnel(7, DAY, "2026-01-03")
    assert answer["meta"]["dates"] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    steps = {d: [s["count"] for s in body["steps"]] for d, body in answer["data"].items()}
    assert steps == {"2026-01-01": [1, 1], "2026-01-02": [1, 0], "2026-01-03": [1, 1]}
    weekly = query.funnel(7, DAY, "2026-01-03", unit="week")["data"]
    assert [s["count"] for s in weekly["2026-01-01"]["steps"]] == [3, 2]
    assert api.requests[-1]["params"]["unit"] == "week"


def test_standin_funnel_length_is_in_its_unit(api: QueryStandIn) -> None:
    # Saved in the UI with a one-hour window.
    api.saved_funnels = {
        7: {"name": "F", "steps": ["Page Viewed", "Signed Up"], "length": 1, "length_unit": "hour"}
    }
    api.events = [event("Page Viewed", "u1", 0, 0), event("Signed Up", "u1", 0, 120)]
    query = client(api)

    def completed(**kwargs: t.Any) -> int:
        return int(query.funnel(7, DAY, DAY, **kwargs)["data"]["2026-01-01"]["steps"][1]["count"])

    assert completed() == 0  # the saved hour
    assert "length" not in api.requests[-1]["params"]
    assert completed(length=1) == 1  # one day: sent with its unit, never alone
    assert (api.requests[-1]["params"]["length"], api.requests[-1]["params"]["length_unit"]) == (
        "1",
        "day",
    )
    assert completed(length=90, length_unit="minute") == 0
    assert completed(length=3, length_unit="hour") == 1
    # Why the unit always goes along: Mixpanel reads a length alone in the saved unit.
    alone = api.funnel({"funnel_id": "7", "from_date": "2026-01-01", "to_date": "2026-01-01",
                        "length": "1"})  # fmt: skip
    assert alone["data"]["2026-01-01"]["steps"][1]["count"] == 0
    sent = len(api.requests)
    with pytest.raises(ValueError, match="length_unit needs length"):
        query.funnel(7, DAY, DAY, length_unit="day")
    with pytest.raises(ValueError, match="length_unit must be one of day, hour, minute, second"):
        query.funnel(7, DAY, DAY, length=2, length_unit="week")
    with pytest.raises(ValueError, match="at most 90 days, got 91 day"):
        query.funnel(7, DAY, DAY, length=91)
    with pytest.raises(ValueError, match="above 0"):
        query.funnel(7, DAY, DAY, length=0, length_unit="hour")
    assert len(api.requests) == sent  # refused before asking Mixpanel


def test_standin_funnel_on_keeps_the_top_limit_values(api: QueryStandIn) -> None:
    api.saved_funnels = {7: {"name": "F", "steps": ["Page Viewed", "Signed Up"]}}
    api.events = [
        event("Page Viewed", f"{account}-{n}", 0, n, company_id=account)
        for account, users in (("a1", 4), ("a2", 3), ("a3", 2), ("a4", 1))
        for n in range(users)
    ] + [event("Page Viewed", "nobody", 0)]
    query = client(api)
    on = 'properties["company_id"]'
    every = query.funnel(7, DAY, DAY, on=on)["data"]["2026-01-01"]
    assert sorted(every) == ["a1", "a2", "a3", "a4", "undefined"]
    assert "limit" not in api.requests[-1]["params"]  # Mixpanel's default: the top 255
    top = query.funnel(7, DAY, DAY, on=on, limit=2)["data"]["2026-01-01"]
    assert sorted(top) == ["a1", "a2"]  # the most users entering
    assert [s["count"] for s in top["a1"]["steps"]] == [4, 0]
    assert api.requests[-1]["params"]["limit"] == "2"
    # Without a limit, 255 values at most.
    api.events = [event("Page Viewed", f"u{n}", 0, company_id=f"c{n:03d}") for n in range(300)]
    assert len(query.funnel(7, DAY, DAY, on=on)["data"]["2026-01-01"]) == 255
    assert len(query.funnel(7, DAY, DAY, on=on, limit=10_000)["data"]["2026-01-01"]) == 300
    sent = len(api.requests)
    for wrong in (0, 10_001, True, 2.5):
        with pytest.raises(ValueError, match="limit must be a whole number from 1 to 10,000"):
            query.funnel(7, DAY, DAY, on=on, limit=wrong)  # type: ignore[arg-type]
    assert len(api.requests) == sent


def test_standin_segmentation_honours_on_unit_type_where_limit(api: QueryStandIn) -> None:
    api.events = [
        event("Page Viewed", "u1", 0, 60, plan="pro"),
        event("Page Viewed", "u1", 0, 61, plan="pro"),
        event("Page Viewed", "u1", 0, 62, plan="pro"),
        event("Page Viewed", "u2", 0, 120, plan="free"),
        event("Page Viewed", "u3", 1, 0, plan="pro"),
        event("Page Viewed", "u4", 1, 0),
        event("Signed Up", "u1", 0, 60, plan="pro"),
    ]
    query = client(api)
    end = "2026-01-02"

    def values(**kwargs: t.Any) -> dict[str, dict[str, float]]:
        answer = query.segmentation("Page Viewed", DAY, end, **kwargs)
        return t.cast(dict[str, dict[str, float]], answer["data"]["values"])

    assert values() == {"Page Viewed": {"2026-01-01": 4, "2026-01-02": 2}}
    on = 'properties["plan"]'
    assert values(on=on) == {
        "pro": {"2026-01-01": 3, "2026-01-02": 1},
        "free": {"2026-01-01": 1, "2026-01-02": 0},
        "undefined": {"2026-01-01": 0, "2026-01-02": 1},
    }
    assert values(on=on, type="unique")["pro"] == {"2026-01-01": 1, "2026-01-02": 1}
    assert values(on=on, type="average")["pro"] == {"2026-01-01": 3.0, "2026-01-02": 1.0}
    hourly = query.segmentation("Page Viewed", DAY, DAY, unit="hour")["data"]
    assert hourly["series"][:3] == ["2026-01-01 00:00:00", "2026-01-01 01:00:00",
                                    "2026-01-01 02:00:00"]  # fmt: skip
    assert hourly["values"]["Page Viewed"]["2026-01-01 01:00:00"] == 3
    assert values(where=where_equals("plan", "free")) == {
        "Page Viewed": {"2026-01-01": 1, "2026-01-02": 0}
    }
    assert list(values(on=on, limit=1)) == ["pro"]
    assert api.requests[-1]["params"]["limit"] == "1"
    # Without a limit, the top 60 values.
    api.events = [event("Page Viewed", f"u{n}", 0, plan=f"p{n:02d}") for n in range(61)]
    assert len(values(on=on)) == 60
    assert len(values(on=on, limit=61)) == 61
    with pytest.raises(ValueError, match="limit must be a whole number"):
        values(on=on, limit=10_001)
    with pytest.raises(MixpanelQueryError, match="400 to /api/query/segmentation"):
        values(unit="week")  # not a unit of this endpoint


def test_standin_answers_429_without_retry_after(api: QueryStandIn) -> None:
    api.events = [event("Page Viewed", "u", 0)]
    moment = [0.0]
    api.clock = lambda: moment[0]
    answers: list[tuple[int, str | None]] = []
    session = requests.Session()
    session.hooks["response"].append(
        lambda r, **kw: answers.append((r.status_code, r.headers.get("Retry-After")))
    )
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        moment[0] += seconds

    # Our own budget lifted, to see Mixpanel's: 3 exports a second.
    lifted = QueryLimits(exports_per_second=100, exports_per_hour=100)
    query = client(api, session=session, sleep=sleep, limits=lifted)
    for _ in range(4):
        assert len(list(query.export(DAY, DAY))) == 1
    assert answers == [(200, None)] * 3 + [(429, None), (200, None)]
    assert api.rate_limited == 1
    # No Retry-After: the client's own backoff (2 s plus 1-5 s of jitter) is what it waited.
    (wait,) = waits
    assert RetryPolicy().ceiling(1) + 1 <= wait <= RetryPolicy().ceiling(1) + 5
    # And 60 queries an hour: the 61st is refused until the hour has passed.
    api.limits.queries_per_hour = 2
    query = client(api, max_retries=0, limits=QueryLimits(queries_per_hour=100))
    query.funnels()
    query.funnels()
    with pytest.raises(MixpanelQueryError) as info:
        query.funnels()
    assert (info.value.status, info.value.error) == (429, "rate limit exceeded")
    moment[0] += 3601
    assert query.funnels() == []


@pytest.mark.parametrize(("kind", "most"), [("query", 5), ("export", 2)])
def test_standin_refuses_more_concurrent_calls_than_mixpanel_allows(
    api: QueryStandIn, kind: str, most: int
) -> None:
    api.limits.concurrent_exports = most  # 100 in truth: fewer threads show the same
    api.hold = threading.Event()
    lifted = QueryLimits(concurrent_queries=100, concurrent_exports=100, exports_per_second=100)
    query = client(api, max_retries=0, limits=lifted)
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(query.funnels() if kind == "query" else list(query.export(DAY, DAY)))
        except MixpanelQueryError as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=call) for _ in range(most + 1)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while api.rate_limited < 1:  # the one call beyond the limit is refused at once
        assert time.monotonic() < deadline, "no call was refused"
        time.sleep(0.01)
    api.hold.set()
    for thread in threads:
        thread.join(20)
    assert outcomes.count(429) == 1
    assert len(outcomes) == most + 1
    assert api.most_at_once[kind] == most


def test_an_export_holds_its_concurrency_slot_while_it_streams(api: QueryStandIn) -> None:
    api.events = [event("Page Viewed", "u", 0, n) for n in range(3)]
    store = MemoryLimitStore()
    limits = QueryLimits(concurrent_exports=1, store=store, key="p")
    query = client(api, limits=limits)

    def free() -> bool:
        now = time.monotonic()
        token = store.lease("p:export:running", 1, now, now + 60)
        if token is not None:
            store.release("p:export:running", token)
        return token is not None

    stream = query.export(DAY, DAY)
    next(stream)
    assert not free()  # the stream is still being read
    assert len(list(stream)) == 2
    assert free()
    api.cut_export = 1
    with pytest.raises(MixpanelQueryError, match="broke off"):
        list(query.export(DAY, DAY))
    assert free()  # a broken stream gives its slot back
    api.fail_next = [(400, '{"error": "bad"}', {})]
    with pytest.raises(MixpanelQueryError, match="bad"):
        list(query.export(DAY, DAY))
    assert free()


# -- limits shared between processes ----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """A migrated metrics database: where the processes of an app share the limits."""
    from pyramid_mixpanel.metrics import MetricsStore

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'metrics.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.database()
    MetricsStore(url).close()
    return url


def shared(url: str, fake: FakeTime, **limits: t.Any) -> QueryLimits:
    """The limits of one process: its own store (engine, connections) on the shared database."""
    from pyramid_mixpanel.metrics.limits import SqlLimitStore

    return QueryLimits(clock=fake.clock, sleep=fake.sleep, store=SqlLimitStore(url), key="p",
                       margin=0, **limits)  # fmt: skip


def test_processes_share_the_hourly_budget(database: str) -> None:
    fake = FakeTime()
    one = shared(database, fake, queries_per_hour=3)
    two = shared(database, fake, queries_per_hour=3)
    for limits in (one, two, one):
        with limits.query() as waited:
            assert waited == 0
    fake.now += 10
    with two.query() as waited:
        assert waited == 3590.0  # the first call of either process left the window
    assert fake.sleeps == [3590.0]
    # Exports: their own windows, per hour and per second.
    assert [one.export(), two.export(), one.export(), two.export()] == [0, 0, 0, 1.0]


def test_processes_share_the_concurrency_slots(database: str) -> None:
    fake = FakeTime()
    one = shared(database, fake, concurrent_queries=1, poll_seconds=2.0, lease_seconds=30.0)
    two = shared(database, fake, concurrent_queries=1, poll_seconds=2.0, lease_seconds=30.0)
    with one.query():
        store = t.cast(t.Any, two.store)
        assert store.lease("p:query:running", 1, fake.now, fake.now + 30) is None
    with two.query():  # free again
        assert fake.sleeps == []
    # A process that died holding a slot: it counts until its lease expires.
    assert store.lease("p:query:running", 1, fake.now, fake.now + 30) is not None
    with one.query():
        pass
    assert fake.sleeps == [2.0] * 15  # polled until the dead process's lease ran out


def test_takes_at_the_same_moment_never_exceed_the_limit(database: str) -> None:
    from pyramid_mixpanel.metrics.limits import SqlLimitStore

    stores = [SqlLimitStore(database) for _ in range(6)]
    start = threading.Barrier(len(stores))
    results: list[float] = []

    def take(store: SqlLimitStore) -> None:
        start.wait(10)
        results.append(store.take("p:race", 4, 3600.0, 1000.0))

    threads = [threading.Thread(target=take, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [0.0] * 4 + [3600.0] * 2
    for store in stores:
        store.engine.dispose()


def test_limits_are_shared_with_another_process(database: str) -> None:
    """A real second process holds every concurrent slot; this one waits for them."""
    import subprocess
    import sys

    script = (
        "import contextlib, sys\n"
        "from pyramid_mixpanel.query_limits import limits_for\n"
        "limits = limits_for(('host', '4242'), sys.argv[1])\n"
        "with contextlib.ExitStack() as held:\n"
        "    for _ in range(5):\n"
        "        held.enter_context(limits.query())\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "held\n"
        from pyramid_mixpanel.metrics.limits import SqlLimitStore
        from pyramid_mixpanel.query_limits import project_digest

        store = SqlLimitStore(database)
        name = f"{project_digest(('host', '4242'))}:query:running"
        assert store.lease(name, 5, time.time(), time.time() + 60) is None
        child.stdin.close()  # the child lets go and exits
        assert child.wait(30) == 0
        assert store.lease(name, 5, time.time(), time.time() + 60) is not None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_without_the_table_a_process_keeps_its_own_limits(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pyramid_mixpanel.metrics import MetricsStore
    from pyramid_mixpanel.metrics.limits import SqlLimitStore

    url = f"sqlite:///{tmp_path / 'unmigrated.db'}"
    moment = [0.0]
    store = SqlLimitStore(url, recheck=300.0, clock=lambda: moment[0])
    caplog.set_level("WARNING", "pyramid_mixpanel")
    assert [store.take("p:w", 1, 60.0, 1.0), store.take("p:w", 1, 60.0, 2.0)] == [0.0, 59.0]
    assert caplog.text.count("the table mixpanel_query_limits is missing") == 1  # once a check
    assert "pmixpanel migrate" in caplog.text
    MetricsStore(url).close()  # pmixpanel migrate
    moment[0] = 299.0
    assert store.take("p:w", 1, 60.0, 3.0) == 58.0  # not asked again yet: its own limits
    moment[0] = 300.0
    assert store.take("p:w", 1, 60.0, 3.0) == 0.0  # the table now: a fresh window
    assert caplog.text.count("is missing") == 1


def test_a_failing_database_never_fails_a_query(caplog: pytest.LogCaptureFixture) -> None:
    from pyramid_mixpanel.log import Log
    from pyramid_mixpanel.metrics.limits import SqlLimitStore

    # Nothing listens on port 1 of the loopback.
    url = "postgresql+psycopg://mp:pg-password-77@127.0.0.1:1/metrics?connect_timeout=5"
    store = SqlLimitStore(url, Log(("sa-secret",)))
    assert "pg-password-77" not in repr(store)
    caplog.set_level("WARNING", "pyramid_mixpanel")
    assert store.take("p:w", 1, 60.0, 1.0) == 0.0
    token = store.lease("p:c", 1, 1.0, 61.0)
    assert token is not None and store.lease("p:c", 1, 2.0, 62.0) is None
    store.release("p:c", token)
    assert store.lease("p:c", 1, 2.0, 62.0) is not None
    assert "mixpanel.query_limits_unshared" in caplog.text
    assert "OperationalError" in caplog.text
    assert "pg-password-77" not in caplog.text


def test_a_database_that_fails_after_the_check_is_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pyramid_mixpanel.metrics import MetricsStore
    from pyramid_mixpanel.metrics.limits import SqlLimitStore

    url = f"sqlite:///{tmp_path / 'gone.db'}"
    MetricsStore(url).close()
    store = SqlLimitStore(url)
    assert store.take("p:w", 1, 60.0, 1.0) == 0.0
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE mixpanel_query_limits")
    caplog.set_level("WARNING", "pyramid_mixpanel")
    assert store.take("p:w", 1, 60.0, 2.0) == 0.0  # this process's own window
    assert "the database failed: OperationalError" in caplog.text


def test_rows_made_the_portable_way_and_after_a_fork(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from pyramid_mixpanel.metrics import limits as sql_limits

    store = sql_limits.SqlLimitStore(database, portable=True)
    assert store.take("p:portable", 1, 60.0, 1.0) == 0.0
    other = sql_limits.SqlLimitStore(database, portable=True)
    assert other.take("p:portable", 1, 60.0, 2.0) == 59.0  # the row was there already
    # In a forked child the parent's pooled connections are left alone; new ones are opened.
    disposed: list[bool] = []
    monkeypatch.setattr(store.engine, "dispose", lambda close=True: disposed.append(close))
    child = os.getpid() + 1
    monkeypatch.setattr(os, "getpid", lambda: child)
    assert store.take("p:portable", 2, 60.0, 3.0) == 0.0
    assert disposed == [False]


def test_the_metrics_database_shares_the_limits_unless_told_otherwise(
    api: QueryStandIn, tmp_path: pathlib.Path
) -> None:
    from pyramid_mixpanel.metrics.limits import SqlLimitStore

    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    query = MixpanelQuery(api.settings(**{"mixpanel.metrics.database_url": url}))
    assert isinstance(query.limits.store, SqlLimitStore)
    assert query.limits.clock is time.time  # every process agrees on the wall clock
    again = MixpanelQuery(api.settings(**{"mixpanel.query_limits_url": url}))
    assert again.limits is query.limits
    other = MixpanelQuery(
        api.settings(**{"mixpanel.query_limits_url": f"sqlite:///{tmp_path / 'other.db'}"})
    )
    assert other.limits.store is not query.limits.store
    alone = MixpanelQuery(
        api.settings(**{"mixpanel.metrics.database_url": url, "mixpanel.query_limits_url": "off"})
    )
    assert alone.limits.store is None
    assert alone.limits is MixpanelQuery(api.settings()).limits
    # Another project on the same database: its own rows, through the same store.
    legacy = {"mixpanel.api_secret": "legacy-secret", "mixpanel.query_limits_url": url}
    assert MixpanelQuery(legacy).limits.store is query.limits.store
