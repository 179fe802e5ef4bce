"""Delivery through a real Pyramid app (WebTest) to a loopback Mixpanel and Customer.io.

Whatever Mixpanel does — answer, refuse, fail, rate limit, hang or vanish — a view that
succeeded answers 200, within a bounded time, and no secret reaches a log line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import typing as t
from collections.abc import Iterator

import mixpanel
import pytest
import requests
import structlog
import webtest
from pyramid.config import Configurator
from pyramid.request import Request

from pyramid_mixpanel import Delivery, EventProperties, Events, ProfileProperties, get_runtime
from pyramid_mixpanel.consumer import PoliteBufferedConsumer
from pyramid_mixpanel.delivery import BackgroundEngine, Message, RetryPolicy, Transport
from pyramid_mixpanel.log import Log
from pyramid_mixpanel.runtime import Runtime
from pyramid_mixpanel.settings import MixpanelSettings

from .loopback import CustomerIOStandIn, MixpanelStandIn, wait_until

TOKEN = "tok-0123456789abcdef"
SECRETS = (TOKEN, "sa-secret-value", "legacy-secret", "cio-api-key", "cio-site-id")


@pytest.fixture
def mixpanel_api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


@pytest.fixture
def customerio_api() -> Iterator[CustomerIOStandIn]:
    with CustomerIOStandIn() as server:
        yield server


def view(request: Request) -> dict[str, str]:
    request.mixpanel.distinct_id = "user-1"
    request.mixpanel.track(Events.page_viewed, {EventProperties.path: request.path})
    request.mixpanel.profile_set({ProfileProperties.dollar_email: "a@example.com"})
    if "old" in request.params:
        old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
        request.mixpanel.track(Events.user_charged, {EventProperties.title: "old"}, time=old)
    if "many" in request.params:
        for i in range(int(request.params["many"])):
            request.mixpanel.track(Events.button_link_clicked, {EventProperties.title: str(i)})
    return {"ok": "yes"}


def make_app(server: MixpanelStandIn, **settings: str) -> tuple[webtest.TestApp, Runtime]:
    base = {
        "mixpanel.token": TOKEN,
        "mixpanel.api_host": server.base_url,
        "mixpanel.connect_timeout": "0.5",
        "mixpanel.read_timeout": "0.5",
        "mixpanel.flush_interval": "0.05",
    }
    base.update(settings)
    with Configurator(settings=base) as config:
        config.include("pyramid_mixpanel")
        config.add_route("page", "/page")
        config.add_view(view, route_name="page", renderer="json")
    return webtest.TestApp(config.make_wsgi_app()), get_runtime(config.registry)


def engine(runtime: Runtime, lane: str = "mixpanel") -> BackgroundEngine:
    delivery = runtime.lanes[lane]
    assert isinstance(delivery, BackgroundEngine)
    return delivery


def no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# -- sync delivery (PoliteBufferedConsumer) ------------------------------------------------


def test_sync_delivery_posts_events_and_profiles(mixpanel_api: MixpanelStandIn) -> None:
    app, _ = make_app(mixpanel_api, **{"mixpanel.delivery": "sync"})
    app.get("/page", status=200)
    (event,) = mixpanel_api.received["imports"]
    assert event["event"] == "Page Viewed"
    assert event["properties"]["token"] == TOKEN
    assert event["properties"]["Path"] == "/page"
    assert len(event["properties"]["$insert_id"]) <= 36
    (profile,) = mixpanel_api.received["people"]
    assert profile["$set"] == {"$email": "a@example.com"}
    assert [r.path for r in mixpanel_api.requests] == ["/import", "/engage"]


@pytest.mark.parametrize("mode", ["down", "hang", "error500", "rate_limited", "bad_request"])
def test_sync_delivery_failures_never_reach_the_request(
    mixpanel_api: MixpanelStandIn, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(mixpanel_api, **{"mixpanel.delivery": "sync"})
    mixpanel_api.set_mode(mode)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        app.get("/page", status=200)
    elapsed = time.monotonic() - started
    # Bounded by one read timeout (0.5 s) plus slack: unreachable Mixpanel is not retried per
    # endpoint. (A behaviour bound, not a benchmark.)
    assert elapsed < 2.0
    assert "mixpanel.delivery_failed" in caplog.text
    no_secrets(caplog.text)
    if mode in ("down", "hang"):
        assert "mixpanel.unreachable_skipped" in caplog.text
        assert [r.path for r in mixpanel_api.requests] in ([], ["/import"])
    else:
        assert len(mixpanel_api.requests) == 2  # reachable: each endpoint gets its answer


def test_sync_import_auth(mixpanel_api: MixpanelStandIn) -> None:
    service_account = {
        "mixpanel.delivery": "sync",
        "mixpanel.service_account.username": "sa.user",
        "mixpanel.service_account.secret": "sa-secret-value",
        "mixpanel.service_account.project_id": "4242",
    }
    app, _ = make_app(mixpanel_api, **service_account)
    app.get("/page?old=1", status=200)
    # Recent and old events alike go to /import with the account.
    page, imported = [r for r in mixpanel_api.requests if r.path == "/import"]
    assert page.auth == imported.auth == ("sa.user", "sa-secret-value")
    assert imported.query["project_id"] == "4242"
    assert imported.records[0]["event"] == "User Charged"

    legacy, _ = make_app(
        mixpanel_api, **{"mixpanel.delivery": "sync", "mixpanel.api_secret": "legacy-secret"}
    )
    legacy.get("/page?old=1", status=200)
    assert [r.auth for r in mixpanel_api.requests if r.path == "/import"][-1] == (
        "legacy-secret",
        "",
    )
    token_only, _ = make_app(mixpanel_api, **{"mixpanel.delivery": "sync"})
    token_only.get("/page?old=1", status=200)
    assert [r.auth for r in mixpanel_api.requests if r.path == "/import"][-1] == (TOKEN, "")


def test_polite_consumer_batches_at_2000(mixpanel_api: MixpanelStandIn) -> None:
    app, _ = make_app(mixpanel_api, **{"mixpanel.delivery": "sync"})
    app.get("/page?many=2500", status=200)
    tracks = [r for r in mixpanel_api.requests if r.path == "/import"]
    assert [len(r.records) for r in tracks] == [2000, 501]


def test_polite_consumer_used_directly(mixpanel_api: MixpanelStandIn) -> None:
    consumer = PoliteBufferedConsumer(max_size=2, api_host=mixpanel_api.base_url)
    api = mixpanel.Mixpanel(TOKEN, consumer=consumer)
    for i in range(3):
        api.track("u", "Page Viewed", {"i": i})
    consumer.send("nonsense", "{}")  # logged, not raised
    consumer.flush()
    assert [len(r.records) for r in mixpanel_api.requests] == [2, 1]
    assert consumer.failed == 1  # the message for an endpoint that does not exist


def test_polite_consumer_with_a_service_account(mixpanel_api: MixpanelStandIn) -> None:
    credentials = mixpanel.ServiceAccountCredentials("sa.user", "sa-secret-value", "4242")
    consumer = PoliteBufferedConsumer(
        api_host=mixpanel_api.base_url, credentials=credentials, request_timeout=1.0
    )
    api = mixpanel.Mixpanel(TOKEN, consumer=consumer)
    api.import_data(None, "u", "Old Event", 1_600_000_000, {})
    api.people_set("u", {"$name": "U"})
    consumer.flush()
    engaged, imported = mixpanel_api.requests  # endpoint by endpoint: /engage, then /import
    assert (imported.path, imported.auth, imported.query["project_id"]) == (
        "/import",
        ("sa.user", "sa-secret-value"),
        "4242",
    )
    # Profiles go to /engage as plain JSON: Mixpanel does not take gzip there.
    assert engaged.path == "/engage"
    assert "content-encoding" not in engaged.headers


def test_the_polite_consumer_setting_counts_what_it_lost(
    mixpanel_api: MixpanelStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    app, runtime = make_app(
        mixpanel_api, **{"mixpanel.consumer": "pyramid_mixpanel.PoliteBufferedConsumer"}
    )
    app.get("/page", status=200)
    assert len(mixpanel_api.requests) == 2
    mixpanel_api.set_mode("bad_request")
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        app.get("/page", status=200)
    assert runtime.stats["failed"] == 2
    assert runtime.lanes["mixpanel"].stats.snapshot() == {"consumed": 2, "failed": 2}
    no_secrets(caplog.text)


class ExplodingConsumer(mixpanel.Consumer):  # type: ignore[misc]  # untyped base
    def send(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"exploded with {TOKEN}")


def test_a_failing_custom_consumer_is_logged(
    mixpanel_api: MixpanelStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = make_app(
        mixpanel_api, **{"mixpanel.consumer": "tests.test_functional_delivery.ExplodingConsumer"}
    )
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        app.get("/page", status=200)
    assert "mixpanel.consumer_failed" in caplog.text
    assert "exploded with ***" in caplog.text
    no_secrets(caplog.text)


def test_structlog_logs_are_clean_too(mixpanel_api: MixpanelStandIn) -> None:
    app, _ = make_app(
        mixpanel_api, **{"mixpanel.delivery": "sync", "pyramid_heroku.structlog": "true"}
    )
    mixpanel_api.set_mode("bad_request")
    with structlog.testing.capture_logs() as logs:
        app.get("/page", status=200)
    assert any(entry["event"] == "mixpanel.delivery_failed" for entry in logs)
    no_secrets(repr(logs))


# -- background delivery ------------------------------------------------------------------


def test_background_delivery_gzips_only_track_and_import(mixpanel_api: MixpanelStandIn) -> None:
    app, runtime = make_app(mixpanel_api, **{"mixpanel.delivery": "background"})
    for _ in range(3):
        app.get("/page", status=200)
    mixpanel_api.wait_for_events(3)
    wait_until(lambda: len(mixpanel_api.received["people"]) == 3, 5, lambda: None)
    for request in mixpanel_api.requests:
        assert request.headers["content-type"] == "application/json"
        # Mixpanel documents gzip on /track and /import only (reference/profile-set).
        expected = "gzip" if request.path in ("/track", "/import") else None
        assert request.headers.get("content-encoding") == expected, request.path
    stats = engine(runtime).stats.snapshot()
    wait_until(lambda: engine(runtime).stats.snapshot()["sent"] == 6, 5, lambda: stats)
    engine(runtime).close(1)


@pytest.mark.parametrize("mode", ["down", "hang", "slow", "error500", "rate_limited"])
def test_background_requests_stay_fast_and_nothing_is_lost(
    mixpanel_api: MixpanelStandIn, mode: str
) -> None:
    app, runtime = make_app(
        mixpanel_api,
        **{"mixpanel.delivery": "background", "mixpanel.read_timeout": "0.3"},
    )
    engine(runtime).policy = RetryPolicy(base=0.05, cap=0.2, jitter=(0.0, 0.01))
    mixpanel_api.set_mode(mode, delay=1.0, retry_after="0")
    started = time.monotonic()
    for _ in range(5):
        app.get("/page", status=200)
    # Five requests while Mixpanel misbehaves: none waits for it.
    assert time.monotonic() - started < 1.0
    mixpanel_api.set_mode("up")
    events = mixpanel_api.wait_for_events(5, timeout=15)
    assert len(events) == 5  # every event exactly once after dedupe
    engine(runtime).close(2)


def test_background_refusals_become_dead_letters(mixpanel_api: MixpanelStandIn) -> None:
    app, runtime = make_app(mixpanel_api, **{"mixpanel.delivery": "background"})
    mixpanel_api.set_mode("bad_request")
    app.get("/page", status=200)
    wait_until(lambda: len(engine(runtime).store.dead()) == 2, 5, engine(runtime).store.dead)
    assert "HTTP 400: bad request: invalid data" in engine(runtime).store.dead()[0].error
    engine(runtime).close(1)


def test_strict_import_keeps_only_refused_records_dead(mixpanel_api: MixpanelStandIn) -> None:
    _, runtime = make_app(mixpanel_api, **{"mixpanel.delivery": "background"})
    now = int(time.time())
    good = json.dumps(
        {"event": "A", "properties": {"time": now, "distinct_id": "u", "$insert_id": "a1"}},
        separators=(",", ":"),
    )
    # Refused by this client before sending: no time.
    bad = '{"event":"B","properties":{"distinct_id":"u","$insert_id":"b1"}}'
    engine(runtime).submit([("imports", good), ("imports", bad), ("imports", good)])
    wait_until(lambda: len(engine(runtime).store.dead()) == 1, 5, engine(runtime).store.dead)
    (letter,) = engine(runtime).store.dead()
    assert letter.body == bad
    assert letter.error == (
        "refused before sending: properties.time is missing or not epoch seconds or milliseconds"
    )
    assert [e["event"] for e in mixpanel_api.received["imports"]] == ["A", "A"]
    assert mixpanel_api.requests[-1].query == {"strict": "1"}
    assert mixpanel_api.requests[-1].auth == (TOKEN, "")
    wait_until(
        lambda: engine(runtime).stats.snapshot()["sent"] == 2, 5, engine(runtime).stats.snapshot
    )
    assert engine(runtime).stats.snapshot()["dead"] == 1
    engine(runtime).close(1)


def test_spool_keeps_messages_across_processes(
    mixpanel_api: MixpanelStandIn, tmp_path: t.Any
) -> None:
    spool = str(tmp_path / "spool.db")
    settings = {"mixpanel.delivery": "background", "mixpanel.spool_path": spool}
    mixpanel_api.set_mode("down")
    app, runtime = make_app(mixpanel_api, **settings)
    app.get("/page", status=200)
    assert engine(runtime).stats.snapshot()["spooled"] == 2
    engine(runtime).close(0.2)  # "the process exits" while Mixpanel is down
    mixpanel_api.set_mode("up")
    _, later = make_app(mixpanel_api, **settings)  # "the next process" with the same spool
    engine(later).start()
    mixpanel_api.wait_for_events(1)
    wait_until(lambda: engine(later).store.pending() == 0, 5, engine(later).store.pending)
    engine(later).close(1)


def test_customerio_has_a_background_lane_of_its_own(
    mixpanel_api: MixpanelStandIn, customerio_api: CustomerIOStandIn, tmp_path: t.Any
) -> None:
    app, runtime = make_app(
        mixpanel_api,
        **{
            "mixpanel.delivery": "background",
            "customerio.tracking.site_id": "cio-site-id",
            "customerio.tracking.api_key": "cio-api-key",
            "customerio.tracking.region": "eu",
            "customerio.tracking.url": customerio_api.base_url,
            "mixpanel.spool_path": str(tmp_path / "spool.db"),
        },
    )
    customerio_api.mode = "error500"
    lane = engine(runtime, "customerio")
    lane.policy = RetryPolicy(base=0.05, cap=0.1, jitter=(0.0, 0.01))
    app.get("/page", status=200)
    wait_until(lambda: len(customerio_api.requests) >= 2, 5, lambda: customerio_api.requests)
    # Customer.io failing holds back only its own lane: Mixpanel's messages went out.
    wait_until(
        lambda: engine(runtime).stats.snapshot()["sent"] == 2, 5, engine(runtime).stats.snapshot
    )
    assert engine(runtime).stats.snapshot()["retried"] == 0
    wait_until(lambda: lane.stats.snapshot()["retried"] >= 2, 5, lane.stats.snapshot)
    assert lane.store.pending() == 2  # both calls wait in the Customer.io lane's tables
    customerio_api.mode = "up"
    wait_until(lambda: lane.stats.snapshot()["sent"] == 2, 5, lane.stats.snapshot)
    methods = {(method, path) for method, path, _, _ in customerio_api.requests}
    assert ("POST", "/api/v1/customers/user-1/events") in methods
    assert ("PUT", "/api/v1/customers/user-1") in methods
    # Each lane keeps its own tables in the shared spool file.
    assert getattr(lane.store, "lane", None) == "customerio"
    assert engine(runtime).store.pending() == lane.store.pending() == 0
    runtime.close(1)


# -- Customer.io (sync) ---------------------------------------------------------------------


def customerio_settings(server: CustomerIOStandIn) -> dict[str, str]:
    return {
        "mixpanel.delivery": "sync",
        "customerio.tracking.site_id": "cio-site-id",
        "customerio.tracking.api_key": "cio-api-key",
        "customerio.tracking.region": "us",
        "customerio.tracking.url": server.base_url,
    }


def test_customerio_replication_with_the_current_client(
    mixpanel_api: MixpanelStandIn, customerio_api: CustomerIOStandIn
) -> None:
    created = dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)

    def signup(request: Request) -> dict[str, str]:
        request.mixpanel.distinct_id = "user/7"
        request.mixpanel.track(Events.user_signed_up, {EventProperties.path: "/signup"})
        request.mixpanel.profile_set(
            {
                ProfileProperties.dollar_created: created,
                ProfileProperties.dollar_email: "a@example.com",
            }
        )
        request.mixpanel.track(Events.page_viewed, skip_customerio=True)
        return {}

    settings = {
        "mixpanel.token": TOKEN,
        "mixpanel.api_host": mixpanel_api.base_url,
        **customerio_settings(customerio_api),
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("signup", "/signup")
        config.add_view(signup, route_name="signup", renderer="json")
    webtest.TestApp(config.make_wsgi_app()).get("/signup", status=200)

    # The profile first (the identify endpoint), so Customer.io knows the person of the event.
    identify, track = customerio_api.requests
    assert track[0:2] == ("POST", "/api/v1/customers/user/7/events")
    assert track[2] == ("cio-site-id", "cio-api-key")
    assert track[3] == {"name": "User Signed Up", "data": {"Path": "/signup"}}
    assert identify[0:2] == ("PUT", "/api/v1/customers/user/7")
    assert identify[3] == {"created_at": int(created.timestamp()), "email": "a@example.com"}
    profile = mixpanel_api.received["people"][0]
    assert profile["$set"]["$created"] == "2021-03-04T05:06:07"


@pytest.mark.parametrize("mode", ["error500", "bad_request", "hang"])
def test_customerio_failures_are_logged_not_raised(
    mixpanel_api: MixpanelStandIn,
    customerio_api: CustomerIOStandIn,
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = make_app(mixpanel_api, **customerio_settings(customerio_api))
    customerio_api.mode = mode
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        app.get("/page", status=200)
    assert "customerio.delivery_failed" in caplog.text
    no_secrets(caplog.text)
    customerio_api.release.set()


def test_nothing_is_sent_anywhere_when_the_view_fails(
    mixpanel_api: MixpanelStandIn, customerio_api: CustomerIOStandIn
) -> None:
    def failing(request: Request) -> None:
        view(request)
        raise RuntimeError("the database said no")

    settings = {
        "mixpanel.token": TOKEN,
        "mixpanel.api_host": mixpanel_api.base_url,
        **customerio_settings(customerio_api),
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("fail", "/fail")
        config.add_view(failing, route_name="fail")
    with pytest.raises(RuntimeError):
        webtest.TestApp(config.make_wsgi_app()).get("/fail")
    assert mixpanel_api.requests == []
    assert customerio_api.requests == []


def test_polite_consumer_with_one_batch_and_mixpanel_down(
    mixpanel_api: MixpanelStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    mixpanel_api.set_mode("down")
    consumer = PoliteBufferedConsumer(api_host=mixpanel_api.base_url, import_api_secret="legacy")
    mixpanel.Mixpanel(TOKEN, consumer=consumer).track("u", "Page Viewed")
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        consumer.flush()
    assert consumer.failed == 1
    assert "mixpanel.delivery_failed" in caplog.text
    assert "unreachable_skipped" not in caplog.text  # nothing else was waiting


class FlushlessConsumer(mixpanel.Consumer):  # type: ignore[misc]  # untyped base
    """A consumer without flush(), like mixpanel.Consumer; records instead of posting."""

    sent: t.ClassVar[list[str]] = []

    def __init__(self) -> None:
        pass

    def send(self, endpoint: str, json_message: str, *args: object) -> None:
        self.sent.append(endpoint)


def test_sync_consumer_without_flush(mixpanel_api: MixpanelStandIn) -> None:
    app, _ = make_app(
        mixpanel_api,
        **{"mixpanel.consumer": "tests.test_functional_delivery.FlushlessConsumer"},
    )
    app.get("/page", status=200)
    assert FlushlessConsumer.sent == ["events", "people"]


class RecordingDelivery(Delivery):
    """A delivery backend of an app's own, named by ``mixpanel.delivery``."""

    released: t.ClassVar[list[tuple[str, list[Message]]]] = []

    def __init__(self, transport: Transport, settings: MixpanelSettings, log: Log) -> None:
        super().__init__()
        self.lane = transport.name

    def submit(self, messages: t.Sequence[Message]) -> int:
        self.released.append((self.lane, list(messages)))
        return 0


def test_a_custom_delivery_backend_named_by_dotted_name_receives_released_messages(
    mixpanel_api: MixpanelStandIn, customerio_api: CustomerIOStandIn
) -> None:
    app, runtime = make_app(
        mixpanel_api,
        **{
            "mixpanel.delivery": "tests.test_functional_delivery.RecordingDelivery",
            **{
                k: v
                for k, v in customerio_settings(customerio_api).items()
                if k != "mixpanel.delivery"
            },
        },
    )
    assert isinstance(runtime.mixpanel, RecordingDelivery)
    app.get("/page", status=200)
    lanes = {
        lane: [endpoint for endpoint, _ in messages]
        for lane, messages in RecordingDelivery.released
    }
    assert lanes == {"mixpanel": ["events", "people"], "customerio": ["track", "identify"]}
    assert mixpanel_api.requests == [] and customerio_api.requests == []  # the backend decides


@pytest.mark.parametrize("delivery", ["sync", "background"])
def test_every_kind_of_message_arrives_at_the_strict_stand_in(
    mixpanel_api: MixpanelStandIn, delivery: str
) -> None:
    """Events, events older than /track's window, profile and group updates, nothing refused."""
    from . import drill_app

    settings = {
        "mixpanel.token": TOKEN,
        "mixpanel.api_host": mixpanel_api.base_url,
        "mixpanel.delivery": delivery,
        "mixpanel.flush_interval": "0.05",
        **drill_app.CATALOG,
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("track", "/track")
        config.add_view(drill_app.track, route_name="track", renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    for n in range(3):
        app.get(f"/track?n={n}", status=200)
    wait_until(lambda: drill_app.every_kind_arrived(mixpanel_api, 3), 10, mixpanel_api.events)
    assert mixpanel_api.refused == [] and mixpanel_api.dropped == []
    lane = get_runtime(config.registry).lanes["mixpanel"]
    # Counted as sent only once Mixpanel took them: 3 requests, 4 messages each.
    wait_until(lambda: lane.stats["sent"] == 12, 5, lane.stats.snapshot)
    assert lane.stats["dead"] == lane.stats["failed"] == 0
    get_runtime(config.registry).close(1)


def test_an_event_spooled_through_a_six_day_outage_arrives_through_import(
    mixpanel_api: MixpanelStandIn, tmp_path: t.Any
) -> None:
    six_days_later = time.time() + 6 * 24 * 3600
    mixpanel_api.clock = lambda: six_days_later  # Mixpanel's "now" when it comes back
    settings = {"mixpanel.delivery": "background", "mixpanel.spool_path": str(tmp_path / "s.db")}
    mixpanel_api.set_mode("down")
    app, runtime = make_app(mixpanel_api, **settings)
    app.get("/page", status=200)
    runtime.close(0.2)  # the process ends during the outage; the spool keeps the messages
    mixpanel_api.set_mode("up")
    _, later = make_app(mixpanel_api, **settings)
    engine(later).transport.clock = lambda: six_days_later  # type: ignore[attr-defined]
    engine(later).start()
    (arrived,) = mixpanel_api.wait_for_events(1)
    assert arrived["properties"]["Path"] == "/page"
    assert {r.path for r in mixpanel_api.requests} == {"/import", "/engage"}
    wait_until(lambda: engine(later).store.pending() == 0, 5, engine(later).store.pending)
    assert engine(later).store.dead() == []
    # What /track would have done with it: answered, and dropped silently.
    answer = requests.post(
        f"{mixpanel_api.base_url}/track", data={"data": json.dumps([arrived])}, timeout=5
    )
    assert answer.json() == 0
    assert [reason for *_, reason in mixpanel_api.dropped] == ["older than 5 days"]
    later.close(1)


def test_events_without_any_credentials_become_dead_letters_with_the_reason(
    mixpanel_api: MixpanelStandIn,
) -> None:
    from pyramid_mixpanel.delivery import MixpanelTransport
    from pyramid_mixpanel.delivery.store import MemoryStore

    # A producer of its own that puts no token in its events, and no account configured.
    transport = MixpanelTransport(mixpanel_api.base_url)
    sender = BackgroundEngine(MemoryStore(100, 10**6), transport, Log(), flush_interval=0.05)
    body = json.dumps({"event": "E", "properties": {"distinct_id": "u", "time": int(time.time())}})
    sender.submit([("events", body)])
    wait_until(lambda: len(sender.store.dead()) == 1, 5, sender.store.dead)
    assert sender.store.dead()[0].error == (
        "refused before sending: no credentials for /import (no token, no account)"
    )
    assert sender.stats["dead"] == 1 and sender.stats["sent"] == 0
    assert mixpanel_api.requests == []  # never posted to /track, where it could vanish
    sender.close(1)
