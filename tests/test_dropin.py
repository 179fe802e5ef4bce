"""What code written for the original package sees: its classes, functions, texts and lines.

The original's own published suite runs in ``test_original_suite.py``; these are the corners it
does not reach (error paths of the polite consumer, logging of errors, request doubles).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator

import mixpanel
import pytest
import structlog
from pyramid import testing

from pyramid_mixpanel import Events, MixpanelTrack
from pyramid_mixpanel.consumer import MockedConsumer, PoliteBufferedConsumer
from pyramid_mixpanel.delivery.sync import ConsumerDelivery
from pyramid_mixpanel.exceptions import explain, with_note
from pyramid_mixpanel.log import Log, RedactedError
from pyramid_mixpanel.runtime import Runtime
from pyramid_mixpanel.settings import parse_settings
from pyramid_mixpanel.track import mixpanel_init

from .loopback import MixpanelStandIn

# Nothing listens on the discard port of loopback: connections are refused at once.
REFUSED = "http://127.0.0.1:9"


@pytest.fixture
def mixpanel_api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


def test_notes_explain_without_changing_the_message() -> None:
    error = with_note(ValueError("bad"), "set mixpanel.x")
    assert str(error) == "bad"
    assert explain(error) == "bad (set mixpanel.x)"
    assert explain(with_note(ValueError("plain"), "")) == "plain"  # an empty note is no note
    assert not hasattr(with_note(ValueError("plain"), ""), "__notes__")


def test_a_logged_error_keeps_its_traceback_but_not_its_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cret"
    log = Log([secret])
    url = f"https://{secret}@api.example"
    try:
        raise OSError(f"could not reach {url}")
    except OSError as exc:
        error = exc
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        log.say("error", "It seems like Mixpanel is down.", error=error, endpoint="events")
        log.say("debug", "not shown", error=error)
    (record,) = caplog.records
    assert record.getMessage() == "It seems like Mixpanel is down. endpoint=events"
    assert record.exc_info is not None and record.exc_info[0] is RedactedError
    assert str(record.exc_info[1]) == "OSError: could not reach https://***@api.example"
    assert "test_dropin.py" in caplog.text  # the frames are kept: they show code, not values
    assert "s3cret" not in caplog.text


def test_structlog_gets_the_error_as_exc_info() -> None:
    log = Log(["s3cret"], use_structlog=True)
    with structlog.testing.capture_logs() as logs:
        log.say("error", "It seems like Mixpanel is down.", error=OSError("x"), key="s3cret")
    assert logs == [
        {
            "event": "It seems like Mixpanel is down.",
            "key": "***",
            "exc_info": True,
            "log_level": "error",
        }
    ]


def test_the_polite_consumer_says_mixpanel_is_down_and_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing(PoliteBufferedConsumer):
        def _flush_endpoint(self, endpoint: str) -> None:
            raise mixpanel.MixpanelException("HTTP 503")

    consumer = Failing(use_structlog=False)
    mixpanel.Mixpanel("tok", consumer=consumer).track("u", "Page Viewed")
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel.consumer"):
        consumer.flush()
    assert [r.getMessage() for r in caplog.records] == ["It seems like Mixpanel is down."]


def test_an_unreachable_mixpanel_costs_one_attempt_per_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = PoliteBufferedConsumer(api_host=REFUSED, request_timeout=1.0)
    api = mixpanel.Mixpanel("tok", consumer=consumer)
    api.track("u", "Page Viewed")
    api.people_set("u", {"$name": "U"})
    api.group_set("company", "c1", {"Plan": "pro"})
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        consumer.flush()
    assert consumer.failed == 3
    # The first endpoint found Mixpanel unreachable; the others were not tried.
    assert caplog.text.count("mixpanel.delivery_failed") == 1
    assert caplog.text.count("mixpanel.unreachable_skipped") == 2
    assert consumer._down


def test_a_full_buffer_is_sent_at_once_even_after_an_outage(mixpanel_api: MixpanelStandIn) -> None:
    consumer = PoliteBufferedConsumer(max_size=1, api_host=mixpanel_api.base_url)
    consumer._down = True  # the last flush found Mixpanel unreachable
    mixpanel.Mixpanel("tok", consumer=consumer).track("u", "Page Viewed")
    assert [len(r.records) for r in mixpanel_api.requests] == [1]
    assert not consumer._down and consumer.failed == 0


def test_a_consumer_delivery_builds_a_consumer_when_given_none() -> None:
    runtime = Runtime(
        parse_settings({"mixpanel.token": "tok", "mixpanel.consumer": MockedConsumer})
    )
    delivery = runtime.mixpanel
    assert isinstance(delivery, ConsumerDelivery)
    assert delivery.submit([("events", '{"event": "Page Viewed", "properties": {}}')]) == 0
    runtime.close()


def test_the_customerio_client_is_built_once_and_only_when_configured() -> None:
    plain = MixpanelTrack({"mixpanel.token": "false"}, distinct_id="u")
    assert plain.cio is None
    settings = {
        "mixpanel.token": "false",
        "customerio.tracking.site_id": "site",
        "customerio.tracking.api_key": "key",
        "customerio.tracking.region": "eu",
    }
    mp = MixpanelTrack(settings, distinct_id="u")
    assert type(mp.cio).__name__ == "CustomerIO"
    assert mp.cio is mp.cio


def test_the_configured_line_names_every_setting_that_differs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = {
        "mixpanel.token": "tok",
        "mixpanel.region": "eu",
        "mixpanel.delivery": "sync",
        "mixpanel.release_policy": "always",
        "mixpanel.header_properties": "off",
    }
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        runtime = Runtime(parse_settings(settings))
        runtime.log_configured()
        runtime.close()
    assert (
        caplog.records[0]
        .getMessage()
        .endswith(
            "customerio=False, delivery=sync, region=eu, release_policy=always,"
            " header_properties=off"
        )
    )


def test_mixpanel_init_builds_what_request_mixpanel_is() -> None:
    with testing.testConfig(settings={"mixpanel.token": "false"}) as config:
        config.include("pyramid_mixpanel")
        request = testing.DummyRequest(headers={"X-Mixpanel-Title": "Hi"})
        request.user = types.SimpleNamespace(distinct_id="u1")
        mp = mixpanel_init(request)
        mp.track(Events.page_viewed)
        assert mp.mocked_messages[0]["msg"]["properties"] == {
            "distinct_id": "u1",
            "Title": "Hi",
        }


def test_mixpanel_init_works_without_the_include_and_without_an_environ() -> None:
    registry = types.SimpleNamespace(settings={"mixpanel.token": "false"})
    request = types.SimpleNamespace(registry=registry, headers={"X-Mixpanel-Path": "/p"})
    mp = mixpanel_init(request)  # a request double, on purpose
    assert mp.api._consumer.mocked_messages == []
    with pytest.raises(AttributeError, match="distinct_id must be set"):
        mp.track(Events.page_viewed)
    mp.distinct_id = "u2"
    mp.track(Events.page_viewed)
    assert mp.mocked_messages[0]["msg"]["properties"]["Path"] == "/p"
