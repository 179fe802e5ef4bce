"""The runtime: built once per app, owned by its registry, closed with it; secret-free logs."""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import typing as t

import pytest
import structlog
from pyramid.config import Configurator

from pyramid_mixpanel import Delivery, Events, MixpanelQuery, MixpanelTrack, get_runtime
from pyramid_mixpanel.consumer import MockedConsumer
from pyramid_mixpanel.counters import Counters
from pyramid_mixpanel.delivery import BackgroundEngine, SyncDelivery
from pyramid_mixpanel.delivery.sync import ConsumerDelivery
from pyramid_mixpanel.exceptions import MixpanelConfigurationError
from pyramid_mixpanel.log import Log, redact
from pyramid_mixpanel.runtime import RUNTIME_KEY, Runtime, runtime_for
from pyramid_mixpanel.settings import parse_settings


def configure(settings: dict[str, object]) -> Configurator:
    config = Configurator(settings=settings)
    config.include("pyramid_mixpanel")
    config.commit()
    return config


def test_two_apps_with_equal_settings_get_their_own_runtime_and_engine() -> None:
    settings = {"mixpanel.token": "tok-two-apps"}
    first, second = configure(dict(settings)), configure(dict(settings))
    one, two = get_runtime(first.registry), get_runtime(second.registry)
    assert one is not two
    assert isinstance(one.mixpanel, BackgroundEngine)
    assert isinstance(two.mixpanel, BackgroundEngine)
    assert one.mixpanel is not two.mixpanel
    assert one.mixpanel.store is not two.mixpanel.store
    one.close()
    two.close()


def test_registry_settings_find_the_registry_runtime_without_a_cache() -> None:
    config = configure({"mixpanel.token": "tok-registry"})
    runtime = get_runtime(config.registry)
    # A view that builds MixpanelTrack(request.registry.settings) uses the app's delivery.
    assert runtime_for(config.registry.settings) is runtime
    assert MixpanelTrack(config.registry.settings)._runtime is runtime
    assert MixpanelTrack.from_registry(config.registry, "u")._runtime is runtime
    # Equal settings in another mapping are not the app's: a standalone runtime, never cached.
    other = runtime_for(dict(config.registry.settings))
    assert other is not runtime
    assert runtime_for(dict(config.registry.settings)) is not other
    assert runtime_for(runtime) is runtime
    runtime.close()


def test_standalone_runtimes_post_on_flush_and_start_no_thread() -> None:
    before = threading.active_count()
    runtime = runtime_for({"mixpanel.token": "tok-standalone"})
    assert isinstance(runtime.mixpanel, SyncDelivery)
    assert isinstance(runtime_for(parse_settings({"mixpanel.token": "t"})).mixpanel, SyncDelivery)
    celery = runtime_for(
        {
            "mixpanel.token": "t",
            "mixpanel.delivery": "celery",
            "mixpanel.celery_app": "tests.celery_app:app",
        }
    )
    assert isinstance(celery.mixpanel, SyncDelivery)
    assert threading.active_count() == before


def test_get_runtime_says_what_is_missing() -> None:
    config = Configurator(settings={"mixpanel.token": "false"})
    with pytest.raises(MixpanelConfigurationError, match="not configured in this registry"):
        get_runtime(config.registry)
    config.include("pyramid_mixpanel")
    with pytest.raises(MixpanelConfigurationError, match="commit the configuration"):
        get_runtime(config.registry)  # the runtime is built when the configuration commits
    config.commit()
    assert get_runtime(config.registry).settings.testing
    assert config.registry[RUNTIME_KEY] is get_runtime(config.registry)


def test_the_query_client_never_builds_delivery(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool.db"
    threads = threading.active_count()
    query = MixpanelQuery(
        {
            "mixpanel.token": "tok",
            "mixpanel.spool_path": str(spool),
            "mixpanel.events": "nowhere.Events",  # not even the catalogue is resolved
            "mixpanel.service_account.username": "sa",
            "mixpanel.service_account.secret": "sa-secret",
            "mixpanel.service_account.project_id": "1",
        }
    )
    assert query.settings.service_account_project_id == "1"
    assert not spool.exists()
    assert os.listdir(tmp_path) == []
    assert threading.active_count() == threads


def test_includeme_stores_the_runtime_and_logs_one_configured_line(
    caplog: pytest.LogCaptureFixture, tmp_path: pathlib.Path
) -> None:
    spool = str(tmp_path / "spool.db")
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        config = configure(
            {
                "mixpanel.token": "tok-configured",
                "mixpanel.api_secret": "sec",
                "mixpanel.spool_path": spool,
            }
        )
    runtime = get_runtime(config.registry)
    assert isinstance(runtime, Runtime)
    (line,) = [r.getMessage() for r in caplog.records if "Mixpanel configured" in r.getMessage()]
    # The original package's line, then the settings that differ from their defaults.
    assert line == (
        "Mixpanel configured consumer=PoliteBufferedConsumer, events=Events,"
        " event_properties=EventProperties, profile_properties=ProfileProperties,"
        f" profile_meta_properties=ProfileMetaProperties, customerio=False, spool_path={spool}"
    )
    assert "tok-configured" not in caplog.text
    assert "sec'" not in caplog.text
    runtime.close()


def test_testing_mode_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    source = {"mixpanel.token": "false"}
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        Runtime(parse_settings(source), source=source).log_configured()
    assert [r.getMessage() for r in caplog.records] == [
        "Mixpanel configured consumer=MockedConsumer, events=Events,"
        " event_properties=EventProperties, profile_properties=ProfileProperties,"
        " profile_meta_properties=ProfileMetaProperties, customerio=False",
        "mixpanel.setup mode='testing' reason='mixpanel.token = false' release_policy='commit'",
        "Mixpanel is in testing mode, no message will be sent!",
    ]


@pytest.mark.parametrize(
    ("source", "lines"),
    [
        (
            {},
            [
                "Mixpanel configured consumer=MockedConsumer, events=Events,"
                " event_properties=EventProperties, profile_properties=ProfileProperties,"
                " profile_meta_properties=ProfileMetaProperties, customerio=False",
                "Mixpanel is in testing mode, no message will be sent!",
            ],
        ),
        (
            {"mixpanel.token": "project-token"},
            [
                "Mixpanel configured consumer=PoliteBufferedConsumer, events=Events,"
                " event_properties=EventProperties, profile_properties=ProfileProperties,"
                " profile_meta_properties=ProfileMetaProperties, customerio=False",
            ],
        ),
    ],
)
def test_an_originals_setup_logs_the_originals_lines_alone(
    source: dict[str, str], lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Apps' tests written for the original compare every startup line.
    with caplog.at_level(logging.DEBUG):
        runtime = Runtime(parse_settings(source), source=source)
        runtime.log_configured()
    assert [r.getMessage() for r in caplog.records] == lines
    runtime.close()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({}, {"mode": "testing", "reason": "mixpanel.token is not set"}),
        ({"mixpanel.token": " Off "}, {"mode": "testing", "reason": "mixpanel.token = off"}),
        ({"mixpanel.token": ""}, {"mode": "testing", "reason": "mixpanel.token = (empty)"}),
        ({"mixpanel.token": False}, {"mode": "testing", "reason": "mixpanel.token = false"}),
        (
            {"mixpanel.token": "project-token", "mixpanel.delivery": "sync"},
            {"mode": "live", "delivery": "sync", "region": "us", "customerio": "off"},
        ),
        (
            {"mixpanel.token": "project-token", "mixpanel.consumer": "mixpanel.Consumer"},
            {"mode": "live", "delivery": "sync, through Consumer"},
        ),
        (
            {"mixpanel.token": "project-token", "mixpanel.region": "eu"},
            {"queue": "memory", "api_host": "https://api-eu.mixpanel.com", "region": "eu"},
        ),
    ],
)
def test_the_startup_line_says_what_runs(
    source: dict[str, object], expected: dict[str, str]
) -> None:
    described = Runtime(parse_settings(source), source=source).setup()
    assert {key: described[key] for key in expected} == expected
    assert "project-token" not in str(described)


def test_a_consumer_setting_gives_the_consumer_delivery() -> None:
    runtime = Runtime(
        parse_settings({"mixpanel.token": "tok", "mixpanel.consumer": MockedConsumer})
    )
    assert isinstance(runtime.mixpanel, ConsumerDelivery)
    assert isinstance(runtime.mixpanel.make_consumer(), MockedConsumer)
    assert runtime.mixpanel.submit([]) == 0
    assert runtime.close() == 0


@pytest.mark.parametrize("delivery", ["sync", "background"])
def test_deliver_with_nothing_to_send_does_nothing(delivery: str) -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "tok", "mixpanel.delivery": delivery}))
    runtime.deliver([])
    assert runtime.stats["released"] == 0
    assert runtime.stats["failed"] == 0
    assert isinstance(runtime.mixpanel, BackgroundEngine) == (delivery == "background")
    assert list(runtime.lanes) == ["mixpanel"]
    runtime.close()


class Exploding(Delivery):
    """A custom backend with a bug."""

    def __init__(self, transport: t.Any, settings: t.Any, log: Log) -> None:
        super().__init__()

    def submit(self, messages: t.Sequence[tuple[str, str]]) -> int:
        raise RuntimeError("backend bug")


def test_a_custom_backend_that_raises_never_reaches_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "tok", "mixpanel.delivery": Exploding}))
    assert runtime.settings.delivery == "tests.test_runtime.Exploding"
    track = MixpanelTrack(runtime, distinct_id="u")
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        track.track(Events.page_viewed)
        track.flush()
    assert runtime.stats["failed"] == 1
    assert "mixpanel.delivery_error delivery='Exploding' messages=1" in caplog.text
    assert runtime.close() == 0  # the base class's close: nothing left


def test_a_factory_that_returns_something_else_is_a_startup_error() -> None:
    with pytest.raises(MixpanelConfigurationError, match="not a pyramid_mixpanel.delivery"):
        Runtime(parse_settings({"mixpanel.token": "tok", "mixpanel.delivery": lambda *a: 42}))


def test_redact() -> None:
    assert redact("token=abc and abc", ["abc", ""]) == "token=*** and ***"


def test_stdlib_log_redacts_event_and_fields(caplog: pytest.LogCaptureFixture) -> None:
    log = Log(["s3cret"])
    with caplog.at_level(logging.DEBUG, logger="pyramid_mixpanel"):
        log.debug("got s3cret", detail="x s3cret y", count=3)
        log.info("plain")
    assert "got *** detail='x *** y' count=3" in caplog.text
    assert "s3cret" not in caplog.text
    assert caplog.records[-1].getMessage() == "plain"


def test_stdlib_log_skips_disabled_levels(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        Log().warning("quiet")
    assert caplog.text == ""


def test_structlog_log_redacts() -> None:
    log = Log(["s3cret"], use_structlog=True)
    with structlog.testing.capture_logs() as logs:
        log.warning("leak s3cret?", error="boom s3cret", n=1)
        log.error("e")
    assert logs[0] == {
        "event": "leak ***?",
        "error": "boom ***",
        "n": 1,
        "log_level": "warning",
    }
    assert logs[1]["log_level"] == "error"


def test_header_properties_are_found_among_any_environ_keys() -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "false"}))
    assert runtime.header_props({"PATH_INFO": "/", "HTTP_HOST": "x"}) == {}
    found = runtime.header_props({"HTTP_X_MIXPANEL_TITLE": "Hi", "HTTP_HOST": "x"})
    assert {prop.name: value for prop, value in found.items()} == {"Title": "Hi"}
    # Not a header of ours, although the prefix appears inside the key.
    assert runtime.header_props({"XHTTP_X_MIXPANEL_TITLE": "no"}) == {}
    # A non-string key is not WSGI; the lookup still works instead of failing the request.
    odd: dict[object, object] = {1: "one", "HTTP_X_MIXPANEL_PATH": "/p"}
    found = runtime.header_props(odd)  # type: ignore[arg-type]  # the mistake under test
    assert {prop.name: value for prop, value in found.items()} == {"Path": "/p"}


def test_header_properties_can_be_narrowed_or_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    settings = {"mixpanel.token": "false", "mixpanel.header_properties": "title, $referrer"}
    runtime = Runtime(parse_settings(settings))
    environ = {
        "HTTP_X_MIXPANEL_TITLE": "Hi",
        "HTTP_X_MIXPANEL_REFERRER": "https://a.example/",
        "HTTP_X_MIXPANEL_PATH": "/not-allowed",
    }
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        found = runtime.header_props(environ)
    assert {prop.name: value for prop, value in found.items()} == {
        "Title": "Hi",
        "$referrer": "https://a.example/",
    }
    assert (
        "Property 'path', from request header 'X-Mixpanel-Path' is not in"
        " mixpanel.header_properties"
    ) in caplog.text
    off = Runtime(parse_settings({"mixpanel.token": "false", "mixpanel.header_properties": "off"}))
    assert off.header_props(environ) == {}


def test_a_header_property_that_is_not_declared_is_a_startup_error() -> None:
    settings = {"mixpanel.token": "false", "mixpanel.header_properties": "Titel"}
    with pytest.raises(MixpanelConfigurationError) as error:
        Runtime(parse_settings(settings))
    assert str(error.value) == (
        "mixpanel.header_properties: 'Titel' is not a declared event property."
        " Did you mean 'Title'?"
    )


def test_header_values_over_the_limit_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "false"}))
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        found = runtime.header_props({"HTTP_X_MIXPANEL_TITLE": "x" * 5000})
        odd = runtime.header_props({"HTTP_X_MIXPANEL_PATH": b"/bytes"})  # not WSGI text
    assert found == {} and odd == {}
    assert "header_too_long_ignored header='X-Mixpanel-Title' length=5000 limit=255" in caplog.text
    assert "x" * 300 not in caplog.text  # never the value
    short = Runtime(parse_settings({"mixpanel.token": "false", "mixpanel.header_max_length": 3}))
    assert len(short.header_props({"HTTP_X_MIXPANEL_TITLE": "abc"})) == 1
    assert short.header_props({"HTTP_X_MIXPANEL_TITLE": "abcd"}) == {}


def test_credentials_in_the_api_host_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    settings = parse_settings(
        {
            "mixpanel.token": "tok",
            "mixpanel.delivery": "sync",
            "mixpanel.api_host": "https://proxyuser:hunter2@proxy.example:8443/mp",
        }
    )
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        runtime = Runtime(settings)
        runtime.log_configured()
        runtime.close()
    assert "hunter2" not in caplog.text and "proxyuser" not in caplog.text
    assert "delivery=sync, api_host=https://***@proxy.example:8443/mp" in caplog.text


def test_counters_show_themselves() -> None:
    counters = Counters(["sent"])
    counters.add("dead", 2)
    assert repr(counters) == "Counters({'sent': 0, 'dead': 2})"
    assert counters["nothing"] == 0


def test_query_settings_come_from_app_settings_or_a_parsed_object() -> None:
    settings = parse_settings(
        {
            "mixpanel.token": "tok",
            "mixpanel.region": "eu",
            "mixpanel.api_secret": "legacy",
        }
    )
    query = MixpanelQuery(settings)
    assert query.settings.query_api_host == "https://eu.mixpanel.com"
    assert query.settings.secrets == ("legacy",)
    assert not query.settings.has_service_account
    assert MixpanelQuery(query.settings).settings is query.settings


def test_the_retiring_api_secret_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        settings = {"mixpanel.token": "tok-live", "mixpanel.api_secret": "sec-legacy-123"}
        Runtime(parse_settings(settings)).log_configured()
    assert "mixpanel.api_secret_deprecated retires='2027-03-03'" in caplog.text
    assert "sec-legacy-123" not in caplog.text
