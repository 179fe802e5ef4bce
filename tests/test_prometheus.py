"""The Prometheus export: a real app (WebTest) scraped while it delivers to a loopback Mixpanel.

Each test scrapes its own ``CollectorRegistry`` (``mixpanel.prometheus.registry``), so nothing
is left registered between tests; the one test of the default registry takes its collector out.
"""

from __future__ import annotations

import importlib
import logging
import pathlib
import sqlite3
import sys
import threading
import typing as t

import prometheus_client
import pytest
import webtest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.security import Denied

from pyramid_mixpanel import (
    MixpanelConfigurationError,
    get_runtime,
    prometheus,
)
from pyramid_mixpanel.delivery import BackgroundEngine
from pyramid_mixpanel.prometheus import (
    PROMETHEUS_KEY,
    MixpanelCollector,
    collector,
    parse_prometheus_settings,
)
from pyramid_mixpanel.runtime import Runtime

from .loopback import MixpanelStandIn, free_port, wait_until
from .observed_app import ORIGIN, User, observed_app

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class DenyAll:
    """A security policy that grants nothing."""

    def identity(self, request: Request) -> None:
        return None

    def authenticated_userid(self, request: Request) -> None:
        return None

    def permits(self, request: Request, context: object, permission: str) -> Denied:
        return Denied(f"not {permission}")


def make_app(
    runtimes: list[Runtime],
    settings: dict[str, object] | None = None,
    *,
    relay: bool = False,
    security: bool = False,
) -> tuple[webtest.TestApp, Registry]:
    base: dict[str, object] = {
        "mixpanel.prometheus.path": "/metrics",
        "mixpanel.prometheus.registry": CollectorRegistry(),
        **(settings or {}),
    }

    def configure(config: Configurator) -> None:
        config.include("pyramid_mixpanel.prometheus")
        if relay:
            config.add_request_method(
                lambda request: User(request.headers.get("X-User", "user-1")), "user", reify=True
            )
            config.include("pyramid_mixpanel.relay")
        if security:
            config.set_security_policy(DenyAll())

    return observed_app(runtimes, base, configure)


def scrape(app: webtest.TestApp) -> Scrape:
    response = app.get("/metrics")
    assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
    return parse(response.text)


def parse(text: str) -> Scrape:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Scrape, name: str, **labels: str) -> float | None:
    return scraped.get((name, tuple(sorted(labels.items()))))


def messages(scraped: Scrape, outcome: str) -> float | None:
    return value(scraped, "pyramid_mixpanel_messages_total", lane="mixpanel", outcome=outcome)


def lane(scraped: Scrape, name: str) -> float | None:
    return value(scraped, name, lane="mixpanel")


def engine_of(registry: Registry) -> BackgroundEngine:
    delivery = get_runtime(registry).lanes["mixpanel"]
    assert isinstance(delivery, BackgroundEngine)
    return delivery


@pytest.fixture(params=["memory", "spool"])
def queue(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> dict[str, str]:
    """The queue settings: in memory, or the SQLite spool."""
    if request.param == "memory":
        return {}
    return {"mixpanel.spool_path": str(tmp_path / "spool.db")}


# -- a live app, delivering -------------------------------------------------------------------


def test_a_scrape_shows_what_was_delivered(runtimes: list[Runtime], queue: dict[str, str]) -> None:
    with MixpanelStandIn() as api:
        app, _ = make_app(runtimes, {"mixpanel.api_host": api.base_url, **queue})
        before = scrape(app)
        # Nothing handed over yet: the sender has not started, and is not down for it.
        assert lane(before, "pyramid_mixpanel_sender_up") == 1
        assert lane(before, "pyramid_mixpanel_queue_depth") == 0
        assert lane(before, "pyramid_mixpanel_oldest_pending_seconds") == 0
        assert lane(before, "pyramid_mixpanel_sender_errors_total") == 0
        sent = messages(before, "sent")
        assert sent == 0

        for _ in range(3):
            app.get("/page")

        after = wait_until(
            lambda: messages(scrape(app), "sent") == 3,
            10,
            lambda: scrape(app),
        )
        assert len(api.events()) == 3
        assert messages(after, "queued") == 3
        assert messages(after, "spooled") == (3 if queue else 0)
        assert messages(after, "retried") == messages(after, "dead") == 0
        assert lane(after, "pyramid_mixpanel_queue_depth") == 0
        assert lane(after, "pyramid_mixpanel_oldest_pending_seconds") == 0
        assert lane(after, "pyramid_mixpanel_sender_up") == 1


def test_depth_and_oldest_age_grow_while_mixpanel_is_unreachable(
    runtimes: list[Runtime], queue: dict[str, str]
) -> None:
    closed_port = f"http://127.0.0.1:{free_port()}"
    app, registry = make_app(runtimes, {"mixpanel.api_host": closed_port, **queue})
    for _ in range(3):
        app.get("/page")

    def held_back() -> bool:
        scraped = scrape(app)
        return (
            lane(scraped, "pyramid_mixpanel_queue_depth") == 3
            and (messages(scraped, "retried") or 0) >= 1
        )

    first = wait_until(held_back, 10, lambda: scrape(app))
    age = lane(first, "pyramid_mixpanel_oldest_pending_seconds")
    assert age is not None and age > 0
    assert messages(first, "sent") == 0
    assert lane(first, "pyramid_mixpanel_sender_up") == 1
    later = wait_until(
        lambda: (lane(scrape(app), "pyramid_mixpanel_oldest_pending_seconds") or 0) > age,
        10,
        lambda: scrape(app),
    )
    assert lane(later, "pyramid_mixpanel_queue_depth") == 3
    more = t.cast(float, lane(later, "pyramid_mixpanel_oldest_pending_seconds"))
    assert age < more < 30

    # Closed (as at shutdown), the sender is down.
    get_runtime(registry).close(0.1)
    stopped = wait_until(
        lambda: lane(scrape(app), "pyramid_mixpanel_sender_up") == 0, 10, lambda: scrape(app)
    )
    # What waited in memory is still said; a closed spool is not read any more (and says so).
    assert lane(stopped, "pyramid_mixpanel_queue_depth") == (None if queue else 3)


def test_the_relay_counts_accepted_items_and_refusals(runtimes: list[Runtime]) -> None:
    app, _ = make_app(runtimes, {"mixpanel.token": "false"}, relay=True)
    before = scrape(app)
    assert value(before, "pyramid_mixpanel_relay_calls_total", result="accepted") == 0
    # Testing mode: no lane, so no delivery figures.
    assert not [key for key in before if key[0] != "pyramid_mixpanel_relay_calls_total"]

    event = {"event": "Page Viewed", "properties": {"Path": "/"}}
    app.post_json("/mixpanel/track", event, headers={"Origin": ORIGIN}, status=200)
    app.post_json("/mixpanel/track", event, headers={"Origin": ORIGIN}, status=200)
    app.post_json("/mixpanel/track", event, headers={"Origin": "https://evil.test"}, status=403)

    after = scrape(app)
    assert value(after, "pyramid_mixpanel_relay_calls_total", result="accepted") == 2
    assert value(after, "pyramid_mixpanel_relay_calls_total", result="csrf") == 1


def test_a_sync_delivery_exports_its_counters_and_no_queue(runtimes: list[Runtime]) -> None:
    with MixpanelStandIn() as api:
        app, _ = make_app(
            runtimes, {"mixpanel.api_host": api.base_url, "mixpanel.delivery": "sync"}
        )
        assert not [key for key in scrape(app) if key[0] != "pyramid_mixpanel_relay_calls_total"]
        app.get("/page")
        scraped = scrape(app)
    assert messages(scraped, "sent") == 1
    for name in (
        "pyramid_mixpanel_queue_depth",
        "pyramid_mixpanel_oldest_pending_seconds",
        "pyramid_mixpanel_sender_up",
        "pyramid_mixpanel_sender_errors_total",
    ):
        assert lane(scraped, name) is None


# -- what the figures say in harder cases -----------------------------------------------------


def test_a_store_that_cannot_be_read_is_left_out_and_logged(
    runtimes: list[Runtime], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, registry = make_app(runtimes, {"mixpanel.api_host": f"http://127.0.0.1:{free_port()}"})
    engine = engine_of(registry)

    def broken(*args: object) -> t.NoReturn:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(engine.store, "pending", broken)
    monkeypatch.setattr(engine.store, "oldest_age", broken)
    with caplog.at_level(logging.WARNING, "pyramid_mixpanel"):
        scraped = scrape(app)
    assert lane(scraped, "pyramid_mixpanel_queue_depth") is None
    assert lane(scraped, "pyramid_mixpanel_oldest_pending_seconds") is None
    assert messages(scraped, "queued") == 0  # the rest is there
    logged = [r.getMessage() for r in caplog.records if "observed_unreadable" in r.getMessage()]
    assert len(logged) == 2
    assert "figure='queue_depth'" in logged[0] and "disk I/O error" in logged[0]
    assert "figure='oldest_age'" in logged[1]


def test_stores_without_an_age_and_a_shared_overflow(
    runtimes: list[Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, registry = make_app(runtimes, {"mixpanel.api_host": f"http://127.0.0.1:{free_port()}"})
    engine = engine_of(registry)

    class Bare:
        """A custom store that predates oldest_age()."""

        def pending(self) -> int:
            return 7

    monkeypatch.setattr(engine, "overflow", Bare())
    scraped = scrape(app)
    assert lane(scraped, "pyramid_mixpanel_queue_depth") == 7
    assert lane(scraped, "pyramid_mixpanel_oldest_pending_seconds") == 0

    monkeypatch.setattr(engine, "overflow", engine.store)  # counted once
    engine.store.put([("events", "{}")])
    scraped = scrape(app)
    assert lane(scraped, "pyramid_mixpanel_queue_depth") == 1
    assert (lane(scraped, "pyramid_mixpanel_oldest_pending_seconds") or 0) >= 0


def test_a_sender_that_stopped_is_down(runtimes: list[Runtime]) -> None:
    app, registry = make_app(runtimes, {"mixpanel.api_host": f"http://127.0.0.1:{free_port()}"})
    engine = engine_of(registry)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    engine._thread = dead  # as if it had died
    assert lane(scrape(app), "pyramid_mixpanel_sender_up") == 0


def test_a_closed_engine_that_never_sent_is_down(runtimes: list[Runtime]) -> None:
    app, registry = make_app(runtimes, {"mixpanel.api_host": f"http://127.0.0.1:{free_port()}"})
    assert lane(scrape(app), "pyramid_mixpanel_sender_up") == 1
    get_runtime(registry).close(0.1)
    assert lane(scrape(app), "pyramid_mixpanel_sender_up") == 0


# -- the collector and its registration -------------------------------------------------------


def test_describe_reads_nothing(runtimes: list[Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    _, registry = make_app(runtimes, {"mixpanel.prometheus.path": None})
    monkeypatch.setattr(engine_of(registry).store, "pending", lambda: 1 / 0)
    described = list(collector(registry).describe())
    assert [family.name for family in described] == [
        "pyramid_mixpanel_messages",
        "pyramid_mixpanel_sender_errors",
        "pyramid_mixpanel_queue_depth",
        "pyramid_mixpanel_oldest_pending_seconds",
        "pyramid_mixpanel_sender_up",
        "pyramid_mixpanel_relay_calls",
    ]
    assert all(not family.samples for family in described)


def test_apps_register_a_collector_of_a_runtime_with_their_own_registry(
    runtimes: list[Runtime],
) -> None:
    _, registry = make_app(runtimes, {"mixpanel.prometheus.path": ""}, relay=True)
    own = CollectorRegistry()
    own.register(collector(get_runtime(registry)))  # a runtime: lanes, no relay
    text = prometheus_client.generate_latest(own).decode()
    scraped = parse(text)
    assert lane(scraped, "pyramid_mixpanel_sender_up") == 1
    assert "pyramid_mixpanel_relay_calls" not in text


def test_a_later_app_takes_the_place_of_an_earlier_one_in_a_registry(
    runtimes: list[Runtime],
) -> None:
    shared = CollectorRegistry()
    _, first = make_app(runtimes, {"mixpanel.prometheus.registry": shared})
    app, second = make_app(runtimes, {"mixpanel.prometheus.registry": shared})
    assert isinstance(second[PROMETHEUS_KEY], MixpanelCollector)
    assert second[PROMETHEUS_KEY].observed.app is second
    engine_of(first).stats.add("queued", 5)
    assert messages(scrape(app), "queued") == 0  # the second app's, once

    # An app that took the collector out itself: the next one still registers.
    shared.unregister(second[PROMETHEUS_KEY])
    app, third = make_app(runtimes, {"mixpanel.prometheus.registry": shared})
    engine_of(third).stats.add("queued", 2)
    assert messages(scrape(app), "queued") == 2


def test_the_default_registry_and_no_view(runtimes: list[Runtime]) -> None:
    app, registry = make_app(
        runtimes, {"mixpanel.prometheus.registry": None, "mixpanel.prometheus.path": "off"}
    )
    try:
        engine_of(registry).stats.add("sent", 4)
        labels = {"lane": "mixpanel", "outcome": "sent"}
        assert REGISTRY.get_sample_value("pyramid_mixpanel_messages_total", labels) == 4
        app.get("/metrics", status=404)
    finally:
        REGISTRY.unregister(registry[PROMETHEUS_KEY])
        prometheus._INSTALLED.pop(REGISTRY, None)


def test_the_view_answers_head_and_obeys_its_permission(runtimes: list[Runtime]) -> None:
    app, _ = make_app(runtimes)
    assert app.head("/metrics").status_int == 200
    assert app.get("/metrics").headers["Cache-Control"] == "no-store"
    guarded, _ = make_app(
        runtimes, {"mixpanel.prometheus.permission": "metrics.view"}, security=True
    )
    guarded.get("/metrics", status=403)
    public, _ = make_app(runtimes, security=True)  # no permission set: the default (none)
    public.get("/metrics", status=200)


# -- settings ---------------------------------------------------------------------------------

THIS_REGISTRY = CollectorRegistry()


def test_settings_are_parsed() -> None:
    parsed = parse_prometheus_settings(
        {
            "mixpanel.prometheus.path": " /_/metrics ",
            "mixpanel.prometheus.registry": f"{__name__}.THIS_REGISTRY",
            "mixpanel.prometheus.permission": "view",
        }
    )
    assert parsed.path == "/_/metrics"
    assert parsed.registry is THIS_REGISTRY
    assert parsed.permission == "view"
    defaults = parse_prometheus_settings({"mixpanel.prometheus.registry": " "})
    assert defaults.path is None and defaults.registry is REGISTRY and defaults.permission is None


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("path", "metrics", "mixpanel.prometheus.path must be a plain URL path"),
        ("path", "/{name}", "mixpanel.prometheus.path must be a plain URL path"),
        ("registry", "os.path", "must name a prometheus_client CollectorRegistry"),
        ("registry", "no_such_module.registry", "mixpanel.prometheus.registry = "),
        ("registry", 3, "got int"),
    ],
)
def test_bad_settings_stop_the_app(
    runtimes: list[Runtime], key: str, raw: object, message: str
) -> None:
    # Raised when the configuration is committed: Pyramid wraps it, with the message.
    with pytest.raises(ConfigurationError, match=message):
        make_app(runtimes, {f"mixpanel.prometheus.{key}": raw})


def test_an_unknown_key_is_logged_with_the_closest(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "pyramid_mixpanel"):
        parse_prometheus_settings({"mixpanel.prometheus.pth": "/metrics"})
    assert "Did you mean 'mixpanel.prometheus.path'?" in caplog.text


# -- without the extra ------------------------------------------------------------------------


def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "pyramid_mixpanel.prometheus")
    with pytest.raises(MixpanelConfigurationError) as raised:
        importlib.import_module("pyramid_mixpanel.prometheus")
    assert "pip install 'pyramid_mixpanel[prometheus]'" in str(raised.value)
    assert "pyramid_mixpanel.prometheus needs the prometheus_client package" in str(raised.value)


def test_a_broken_prometheus_client_says_what_broke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(prometheus_client, "generate_latest")
    monkeypatch.delitem(sys.modules, "pyramid_mixpanel.prometheus")
    with pytest.raises(ImportError, match="generate_latest"):
        importlib.import_module("pyramid_mixpanel.prometheus")
