"""The runtime built once per configuration, and logging that never leaks a secret."""

from __future__ import annotations

import logging

import pytest
import structlog
from pyramid.config import Configurator

from pyramid_mixpanel.consumer import MockedConsumer, PoliteBufferedConsumer
from pyramid_mixpanel.lifecycle import RUNTIME_KEY
from pyramid_mixpanel.log import Log, redact
from pyramid_mixpanel.runtime import Runtime, runtime_for
from pyramid_mixpanel.settings import parse_settings


def test_identical_settings_share_one_runtime() -> None:
    first = runtime_for({"mixpanel.token": "tok-share", "unrelated": "1"})
    second = runtime_for({"mixpanel.token": "tok-share", "unrelated": "2"})
    assert first is second
    assert runtime_for(first.settings) is first
    assert runtime_for({"mixpanel.token": "tok-other"}) is not first


def test_unhashable_setting_values_are_parsed_without_the_cache() -> None:
    settings: dict[str, object] = {"mixpanel.token": "tok", "mixpanel.extra_list": ["a"]}
    assert runtime_for(settings).settings.token == "tok"


def test_includeme_stores_the_runtime_and_logs_one_configured_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        with Configurator(
            settings={"mixpanel.token": "tok-configured", "mixpanel.api_secret": "sec"}
        ) as config:
            config.include("pyramid_mixpanel")
        runtime = config.registry[RUNTIME_KEY]
    assert isinstance(runtime, Runtime)
    (line,) = [r.getMessage() for r in caplog.records if "mixpanel.configured" in r.getMessage()]
    assert "mode='live'" in line
    assert "consumer='PoliteBufferedConsumer'" in line
    assert "events='pyramid_mixpanel.catalog.Events'" in line
    assert "customerio='off'" in line
    assert "tok-configured" not in caplog.text
    assert "sec'" not in caplog.text


def test_testing_mode_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        Runtime(parse_settings({"mixpanel.token": "false"})).log_configured()
    assert "mode='testing'" in caplog.text
    assert "consumer='MockedConsumer'" in caplog.text
    assert "mixpanel.testing_mode" in caplog.text


def test_make_consumer_uses_from_settings_or_no_arguments() -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "tok"}))
    assert isinstance(runtime.make_consumer(), PoliteBufferedConsumer)
    custom = Runtime(parse_settings({"mixpanel.token": "tok", "mixpanel.consumer": MockedConsumer}))
    assert isinstance(custom.make_consumer(), MockedConsumer)


@pytest.mark.parametrize("delivery", ["sync", "background"])
def test_deliver_with_nothing_to_send_does_nothing(delivery: str) -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "tok", "mixpanel.delivery": delivery}))
    runtime.deliver([])
    assert runtime.stats["released"] == 0
    assert runtime.stats["failed"] == 0
    assert (runtime.engine is None) == (delivery == "sync")


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
