"""Settings are parsed once, strictly, with errors that name the setting."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys

import hypothesis.strategies as st
import mixpanel
import pytest
from hypothesis import given, settings
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationExecutionError

from pyramid_mixpanel import EventProperties, Events, MixpanelConfigurationError, parse_settings
from pyramid_mixpanel.consumer import MockedConsumer, PoliteBufferedConsumer
from pyramid_mixpanel.converters import (
    as_base_url,
    as_bool,
    as_callable,
    as_lines,
    as_positive_float,
    as_secret,
    redact_url,
)
from pyramid_mixpanel.delivery import SyncDelivery
from pyramid_mixpanel.exceptions import explain
from pyramid_mixpanel.settings import SETTINGS


@dataclasses.dataclass(frozen=True)
class AppEvents(Events):
    pass


class NotAConsumer:
    pass


@pytest.mark.parametrize("value", ["false", "False", " off ", "no", "", "0", None, False])
def test_false_token_means_testing_mode(value: object) -> None:
    settings = parse_settings({"mixpanel.token": value})
    assert settings.token is None
    assert settings.testing


def test_defaults() -> None:
    settings = parse_settings({})
    assert settings.testing
    assert settings.events is Events
    assert settings.api_host == "https://api.mixpanel.com"
    assert settings.query_api_host == "https://mixpanel.com"
    assert settings.release_policy == "commit"
    assert settings.delivery == "background"
    assert (settings.connect_timeout, settings.read_timeout) == (2.0, 5.0)
    assert not settings.customerio_enabled
    assert not settings.has_service_account
    assert settings.secrets == ()


def test_every_key_parses() -> None:
    settings = parse_settings(
        {
            "mixpanel.token": "tok",
            "mixpanel.api_secret": "sec",
            "mixpanel.events": "tests.test_settings.AppEvents",
            "mixpanel.event_properties": EventProperties,
            "mixpanel.consumer": "pyramid_mixpanel.consumer.PoliteBufferedConsumer",
            "mixpanel.region": "EU",
            "mixpanel.service_account.username": "sa.user",
            "mixpanel.service_account.secret": "sa-secret",
            "mixpanel.service_account.project_id": "42",
            "mixpanel.connect_timeout": "0.5",
            "mixpanel.read_timeout": "1",
            "mixpanel.query_timeout": "30",
            "mixpanel.release_policy": "success",
            "pyramid_heroku.structlog": "true",
            "customerio.tracking.site_id": "site",
            "customerio.tracking.api_key": "cio-key",
            "customerio.tracking.region": "eu",
        }
    )
    assert settings.token == "tok"
    assert settings.events is AppEvents
    assert settings.consumer is PoliteBufferedConsumer
    assert settings.region == "eu"
    assert settings.api_host == "https://api-eu.mixpanel.com"
    assert settings.query_api_host == "https://eu.mixpanel.com"
    assert settings.has_service_account
    assert settings.connect_timeout == 0.5
    assert settings.release_policy == "success"
    assert settings.structlog is True
    assert settings.customerio_enabled
    assert set(settings.secrets) == {"tok", "sec", "sa-secret", "cio-key", "site"}
    # Secrets never show in repr (which ends up in logs and tracebacks).
    text = repr(settings)
    for secret in ("tok'", "sec'", "sa-secret", "cio-key", "site'"):
        assert secret not in text


def test_regions_pick_residency_hosts_and_api_host_wins() -> None:
    assert parse_settings({"mixpanel.region": "in"}).api_host == "https://api-in.mixpanel.com"
    settings = parse_settings({"mixpanel.region": "eu", "mixpanel.api_host": "proxy.example"})
    assert settings.api_host == "https://proxy.example"
    assert settings.query_api_host == "https://eu.mixpanel.com"
    local = parse_settings({"mixpanel.api_host": "http://127.0.0.1:8080/"})
    assert local.api_host == "http://127.0.0.1:8080"
    assert settings.export_api_host == "https://data-eu.mixpanel.com"
    india = parse_settings({"mixpanel.region": "in"})
    assert india.query_api_host == "https://in.mixpanel.com"
    assert india.export_api_host == "https://data-in.mixpanel.com"
    assert parse_settings({}).export_api_host == "https://data.mixpanel.com"
    proxied = parse_settings({"mixpanel.export_api_host": "http://127.0.0.1:9/"})
    assert proxied.export_api_host == "http://127.0.0.1:9"


NOT_CALLABLE = 42


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mixpanel.events": "nowhere.Events"}, "mixpanel.events = 'nowhere.Events' cannot be"),
        (
            {"mixpanel.events": "tests.test_settings.NotAConsumer"},
            "class in dotted_name needs to be based on pyramid_mixpanel.Events"
            " (mixpanel.events = 'tests.test_settings.NotAConsumer')",
        ),
        (
            {"mixpanel.consumer": "tests.test_settings.NotAConsumer"},
            "based on mixpanel.(Buffered)Consumer (mixpanel.consumer = ",
        ),
        (
            {"mixpanel.consumer": 42},
            "dotted_name must be a string, but it is: int (mixpanel.consumer takes a dotted name",
        ),
        ({"mixpanel.region": "mars"}, "mixpanel.region must be one of us, eu, in"),
        ({"mixpanel.api_host": "ftp://x"}, "mixpanel.api_host must be a host name"),
        ({"mixpanel.api_host": "http://"}, "mixpanel.api_host must be a host name"),
        ({"mixpanel.read_timeout": "soon"}, "mixpanel.read_timeout must be a number"),
        ({"mixpanel.read_timeout": "-1"}, "read_timeout must be a finite number greater than 0"),
        ({"mixpanel.read_timeout": "inf"}, "read_timeout must be a finite number greater than 0"),
        ({"mixpanel.read_timeout": True}, "mixpanel.read_timeout must be a number"),
        ({"mixpanel.batch_max_records": True}, "batch_max_records must be a whole number"),
        ({"mixpanel.api_host": "http://u:pw@:x"}, "got 'http://***@:x'"),
        ({"mixpanel.delivery": "nowhere.backend"}, "mixpanel.delivery = 'nowhere.backend'"),
        ({"mixpanel.delivery": "tests.test_settings.NOT_CALLABLE"}, "delivery backend factory"),
        (
            {"mixpanel.consumer": "pyramid_mixpanel.MockedConsumer", "mixpanel.delivery": "celery"},
            "cannot be combined with mixpanel.delivery = celery",
        ),
        ({"mixpanel.structlog": "ture"}, "mixpanel.structlog must be a boolean"),
        ({"mixpanel.release_policy": "never"}, "mixpanel.release_policy must be one of"),
        ({"pyramid_heroku.structlog": "ture"}, "pyramid_heroku.structlog must be a boolean"),
        ({"mixpanel.token": 123}, "mixpanel.token must be a string"),
        (
            {"mixpanel.service_account.username": "u"},
            "mixpanel.service_account.secret, mixpanel.service_account.project_id must be set",
        ),
        ({"customerio.tracking.site_id": "s"}, "customerio.tracking.api_key"),
        ({"customerio.tracking.region": "asia"}, "customerio.tracking.region must be one of"),
        ({"customerio.tracking.region": "asia"}, "Unknown customer.io region ("),
        ({"customerio.tracking.url": "http://127.0.0.1:1"}, "customerio.tracking.url is set"),
    ],
)
def test_mistakes_are_startup_errors_naming_the_setting(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(MixpanelConfigurationError) as info:
        parse_settings(settings)
    assert message in explain(info.value)  # the message, or the note under it
    assert isinstance(info.value, ValueError)


def test_secrets_never_appear_in_errors() -> None:
    with pytest.raises(MixpanelConfigurationError) as info:
        parse_settings({"mixpanel.service_account.secret": "very-secret"})
    assert "very-secret" not in str(info.value)


def test_unknown_keys_warn_with_the_closest_known_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        parse_settings({"mixpanel.tokne": "x", "customerio.tracking.siteid": "y", "other": "z"})
    text = caplog.text
    assert "Unknown setting mixpanel.tokne is ignored. Did you mean 'mixpanel.token'?" in text
    assert "customerio.tracking.siteid" in text
    assert "other" not in text


def test_customerio_package_is_required_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "customerio", None)
    with pytest.raises(MixpanelConfigurationError, match=r"pip install 'pyramid_mixpanel\["):
        parse_settings(
            {
                "customerio.tracking.site_id": "s",
                "customerio.tracking.api_key": "k",
                "customerio.tracking.region": "us",
            }
        )


def test_consumer_may_be_any_mixpanel_consumer_or_mocked() -> None:
    assert parse_settings({"mixpanel.consumer": mixpanel.Consumer}).consumer is mixpanel.Consumer
    assert parse_settings({"mixpanel.consumer": MockedConsumer}).consumer is MockedConsumer
    assert parse_settings({"mixpanel.consumer": " "}).consumer is None
    assert parse_settings({"mixpanel.consumer": None}).consumer is None


def test_small_parsers() -> None:
    assert as_secret("k", "  x ") == "x"
    assert as_bool("k", True) is True
    assert as_bool("k", "off") is False
    assert as_positive_float("k", 3) == 3.0
    assert as_base_url("k", "false") is None
    with pytest.raises(MixpanelConfigurationError, match="k must be a number"):
        as_positive_float("k", None)
    assert as_callable("k", " ") is None
    assert as_callable("k", "json.dumps") is json.dumps
    with pytest.raises(MixpanelConfigurationError, match="k must name a callable"):
        as_callable("k", "json.__doc__")
    assert as_lines("k", "a, b\nc") == ["a", "b", "c"]
    assert as_lines("k", ("a", " ", 3)) == ["a", "3"]


def test_the_structlog_setting_and_the_original_key() -> None:
    assert parse_settings({"mixpanel.structlog": "true"}).structlog is True
    assert parse_settings({"pyramid_heroku.structlog": "true"}).structlog is True
    both = {"mixpanel.structlog": "false", "pyramid_heroku.structlog": "true"}
    assert parse_settings(both).structlog is False  # our own key wins


def test_delivery_names_a_mode_or_a_backend() -> None:
    assert parse_settings({"mixpanel.delivery": " Sync "}).delivery == "sync"
    assert parse_settings({"mixpanel.delivery": ""}).delivery == "background"
    custom = parse_settings({"mixpanel.delivery": "pyramid_mixpanel.delivery.SyncDelivery"})
    assert custom.delivery == "pyramid_mixpanel.delivery.SyncDelivery"
    assert custom.delivery_factory is SyncDelivery


def test_includeme_validates_at_startup_through_a_config_action() -> None:
    config = Configurator(settings={"mixpanel.release_policy": "sometimes"})
    config.include("pyramid_mixpanel")
    with pytest.raises(ConfigurationExecutionError, match="mixpanel.release_policy"):
        config.commit()


def test_settings_added_after_the_include_still_count() -> None:
    config = Configurator(settings={})
    config.include("pyramid_mixpanel")
    config.add_settings({"mixpanel.token": "added-later"})
    config.commit()
    from pyramid_mixpanel.runtime import RUNTIME_KEY

    assert config.registry[RUNTIME_KEY].settings.token == "added-later"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mixpanel.queue_max_messages": "lots"}, "must be a whole number"),
        ({"mixpanel.batch_max_records": "2001"}, "must be between 1 and 2000"),
        ({"mixpanel.batch_max_records": "0"}, "must be between 1 and 2000"),
        (
            {"mixpanel.consumer": "mixpanel.Consumer", "mixpanel.delivery": "background"},
            "cannot be combined with mixpanel.delivery = background",
        ),
        (
            {"mixpanel.spool_path": "/tmp/x.db", "mixpanel.delivery": "sync"},
            "mixpanel.spool_path needs mixpanel.delivery = background",
        ),
        ({"mixpanel.spool_commit": "group"}, "it needs mixpanel.spool_path"),
        (
            {"mixpanel.spool_path": "/tmp/x.db", "mixpanel.spool_commit": "later"},
            "mixpanel.spool_commit must be one of request, group, got 'later'",
        ),
    ],
)
def test_delivery_settings_mistakes(settings: dict[str, object], message: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match=message):
        parse_settings(settings)


def test_delivery_settings() -> None:
    settings = parse_settings(
        {
            "mixpanel.delivery": "background",
            "mixpanel.spool_path": "/tmp/spool.db",
            "mixpanel.queue_max_messages": "5",
            "mixpanel.batch_max_bytes": "1000",
            "mixpanel.region": "false",
        }
    )
    assert (settings.delivery, settings.spool_path) == ("background", "/tmp/spool.db")
    assert (settings.queue_max_messages, settings.batch_max_bytes) == (5, 1000)
    assert settings.region == "us"
    assert parse_settings({"mixpanel.consumer": "mixpanel.Consumer"}).delivery == "sync"


# -- arbitrary values ----------------------------------------------------------------------------

VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "0", "-1", "off", "on", " ", "x" * 300]),
    st.sampled_from(["pyramid_mixpanel.Events", "os.path:join", "a.b:c", "{x}", "http://u:p@h"]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)


@settings(deadline=None)
@given(values=st.dictionaries(st.sampled_from([s.key for s in SETTINGS]), VALUES, max_size=6))
def test_arbitrary_values_are_parsed_or_refused_by_name(values: dict[str, object]) -> None:
    """Whatever an .ini file says, parsing either works or names the setting; nothing else."""
    try:
        parsed = parse_settings(values)
    except MixpanelConfigurationError as error:
        text = explain(error)
        assert any(key in text for key in values) or "mixpanel." in text
    else:
        for value in (parsed.connect_timeout, parsed.read_timeout, parsed.query_timeout):
            assert math.isfinite(value) and value > 0


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://u:p@host:1/x", "https://***@host:1/x"),
        ("u:p@host", "***@host"),
        ("https://host/path@x", "https://host/path@x"),  # an @ in a path is not a credential
        ("https://host", "https://host"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXPANEL_TOKEN", "tok-from-env")
    monkeypatch.setenv("MIXPANEL_SPOOL", "/tmp/from-env.db")
    settings = parse_settings(
        {"mixpanel.token": "env:MIXPANEL_TOKEN", "mixpanel.spool_path": " env:MIXPANEL_SPOOL "}
    )
    assert settings.token == "tok-from-env"
    assert settings.spool_path == "/tmp/from-env.db"
    # A variable that says "false" is testing mode, as the same word in the file would be.
    monkeypatch.setenv("MIXPANEL_TOKEN", "false")
    assert parse_settings({"mixpanel.token": "env:MIXPANEL_TOKEN"}).testing


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("env:NOT_THERE_AT_ALL", "mixpanel.token = env:NOT_THERE_AT_ALL: the environment"),
        ("env:", "env: must be followed by a variable name"),
        ("env:1BAD-NAME", "env: must be followed by a variable name"),
    ],
)
def test_environment_references_that_cannot_be_used(
    raw: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_THERE_AT_ALL", raising=False)
    with pytest.raises(MixpanelConfigurationError, match=message):
        parse_settings({"mixpanel.token": raw})


def test_a_value_from_the_environment_is_checked_as_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIXPANEL_TIMEOUT", "soon")
    with pytest.raises(MixpanelConfigurationError) as caught:
        parse_settings({"mixpanel.token": "t", "mixpanel.read_timeout": "env:MIXPANEL_TIMEOUT"})
    assert "mixpanel.read_timeout" in str(caught.value)


def test_structlog_output_without_structlog_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyramid_mixpanel.log import Log

    monkeypatch.setitem(sys.modules, "structlog", None)  # as without the extra
    with pytest.raises(MixpanelConfigurationError, match=r"pyramid_mixpanel\[structlog\]"):
        Log(use_structlog=True)
