"""``mixpanel.metrics.*`` settings: defaults, parsing, and errors that name the key."""

from __future__ import annotations

import logging

import pytest

from pyramid_mixpanel.metrics import LocalFunnel, MetricsSettings, parse_metrics_settings
from pyramid_mixpanel.settings import MixpanelConfigurationError

from . import metrics_helpers

P = "mixpanel.metrics."


def parse(**values: object) -> MetricsSettings:
    settings: dict[str, object] = {P + "account_property": "company_id"}
    settings.update({P + key: value for key, value in values.items()})
    return parse_metrics_settings(settings)


def test_defaults() -> None:
    settings = parse()
    assert settings.database_url == "sqlite:///mixpanel-metrics.db"
    assert settings.account_property == "company_id"
    assert settings.account_getter is None
    assert settings.profile_account_property == "company_id"
    assert (settings.funnel_window_hours, settings.lookback_days) == (168, 7)
    assert (settings.anomaly_days, settings.anomaly_threshold, settings.anomaly_min_days) == (
        28,
        3.0,
        7,
    )
    assert settings.chunk_days == 7
    assert settings.alert is None
    assert parse(database_url="").database_url == "sqlite:///mixpanel-metrics.db"
    assert (settings.breakdowns, settings.funnels, settings.saved_funnels) == ((), (), ())
    assert settings.categories == ()
    # The URL may carry a password: it stays out of repr.
    assert "sqlite" not in repr(settings)


def test_everything_parsed() -> None:
    settings = parse(
        database_url="postgresql+psycopg://u:pw@127.0.0.1/db",
        breakdowns="plan, $browser\nplan",
        funnels="""
            Signup: Page Viewed > User Signed Up > Plan Upgraded
            Invite: Team Member Invited>Invite Accepted
        """,
        funnel_window_hours="36",
        saved_funnels="123\n456, 123",
        signals="Report Exported = reporting\nDashboard Viewed = reporting\nUser Invited = team",
        weights="reporting = 2.5\nteam = 0",
        anomaly_days="14",
        anomaly_threshold="2.5",
        anomaly_min_days="3",
        alert="tests.metrics_helpers:record_alert",
        chunk_days="3",
        profile_account_property="account",
        profile_properties=["plan", "$country_code"],
    )
    assert settings.database_url == "postgresql+psycopg://u:pw@127.0.0.1/db"
    assert settings.breakdowns == ("plan", "$browser")
    assert settings.funnels == (
        LocalFunnel("Signup", ("Page Viewed", "User Signed Up", "Plan Upgraded")),
        LocalFunnel("Invite", ("Team Member Invited", "Invite Accepted")),
    )
    assert (settings.funnel_window_hours, settings.lookback_days) == (36, 2)
    assert settings.saved_funnels == (123, 456)
    assert settings.signals == {
        "Report Exported": "reporting",
        "Dashboard Viewed": "reporting",
        "User Invited": "team",
    }
    assert settings.categories == ("reporting", "team")
    assert settings.weights == {"reporting": 2.5, "team": 0.0}
    assert (settings.anomaly_days, settings.anomaly_threshold, settings.anomaly_min_days) == (
        14,
        2.5,
        3,
    )
    assert settings.alert is metrics_helpers.record_alert
    assert settings.chunk_days == 3
    assert settings.profile_account_property == "account"
    assert settings.profile_properties == ("plan", "$country_code")


def test_account_getter_instead_of_property() -> None:
    settings = parse_metrics_settings(
        {P + "account_getter": "tests.metrics_helpers.account_from_path"}
    )
    assert settings.account_getter is metrics_helpers.account_from_path
    assert settings.account_property is None
    assert settings.profile_account_property is None
    # Objects set from Python are taken as they are; "off" means not set.
    direct = parse_metrics_settings(
        {P + "account_getter": metrics_helpers.account_from_path, P + "alert": "off"}
    )
    assert direct.account_getter is metrics_helpers.account_from_path
    assert direct.alert is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "set one of mixpanel.metrics.account_property"),
        (
            {"account_property": "company_id", "account_getter": "tests.metrics_helpers:day"},
            "set one of mixpanel.metrics.account_property",
        ),
        ({"account_property": "$email"}, "mixpanel.metrics.account_property: '$email' identif"),
        ({"account_property": "distinct_id"}, "'distinct_id' identifies a person"),
        ({"account_getter": "tests.metrics_helpers:NOT_CALLABLE"}, "account_getter must name a"),
        ({"account_getter": "tests.nowhere:thing"}, "mixpanel.metrics.account_getter = "),
    ],
)
def test_account_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match=message.replace("$", r"\$")):
        parse_metrics_settings({P + key: value for key, value in values.items()})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("database_url", "not a url", "mixpanel.metrics.database_url is not an SQLAlchemy"),
        ("breakdowns", "plan\n$email", "mixpanel.metrics.breakdowns: '$email' identifies"),
        ("breakdowns", 42, "mixpanel.metrics.breakdowns: expected one item per line"),
        ("profile_properties", "First Name", "mixpanel.metrics.profile_properties: 'First Name'"),
        ("funnels", "Signup Page Viewed > Signed Up", "mixpanel.metrics.funnels: 'Signup Page"),
        ("funnels", "Signup: Page Viewed", "is not 'Name: First Event > Second Event"),
        ("funnels", ": A > B", "is not 'Name: First Event"),
        ("funnels", "S: A > > B", "is not 'Name: First Event"),
        ("funnels", "S: A > B\nS: B > C", "mixpanel.metrics.funnels: the funnel 'S' is defined"),
        ("funnel_window_hours", "0", "mixpanel.metrics.funnel_window_hours must be between 1"),
        ("funnel_window_hours", "a week", "funnel_window_hours must be a whole number"),
        ("saved_funnels", "123, abc", "mixpanel.metrics.saved_funnels: 'abc' is not a Mixpanel"),
        ("signals", "Report Exported", "mixpanel.metrics.signals: 'Report Exported' is not 'name"),
        ("signals", "= reporting", "is not 'name = value'"),
        ("signals", "A = x\nA = y", "mixpanel.metrics.signals: the event 'A' is mapped twice"),
        ("weights", "reporting", "mixpanel.metrics.weights: 'reporting' is not 'name = value'"),
        ("anomaly_days", "400", "mixpanel.metrics.anomaly_days must be between 1 and 366"),
        (
            "anomaly_threshold",
            "-1",
            "metrics.anomaly_threshold must be a finite number greater than 0",
        ),
        ("anomaly_min_days", "1", "mixpanel.metrics.anomaly_min_days must be at least 2"),
        ("anomaly_min_days", "30", "anomaly_min_days \\(30\\) cannot exceed .*anomaly_days \\(28"),
        ("alert", "tests.metrics_helpers:NOT_CALLABLE", "mixpanel.metrics.alert must name a"),
        ("chunk_days", "91", "mixpanel.metrics.chunk_days must be between 1 and 90"),
    ],
)
def test_value_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match=message.replace("$", r"\$")):
        parse(**{key: value})


def test_database_url_error_does_not_echo_the_value() -> None:
    with pytest.raises(MixpanelConfigurationError) as caught:
        parse(database_url="postgresql+psycopg://user:s3cret@host:notaport/db")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("signals", "weights", "message"),
    [
        (
            "A = reporting",
            "reportng = 2",
            "no event in mixpanel.metrics.signals maps to the "
            "category 'reportng'. Did you mean 'reporting'",
        ),
        ("A = reporting", "reporting = many", "the weight of 'reporting' must be a number >= 0"),
        ("A = reporting", "reporting = -1", "the weight of 'reporting' must be a number >= 0"),
        ("A = reporting", "reporting = nan", "the weight of 'reporting' must be a number >= 0"),
        ("A = reporting\nB = team", "reporting = 0\nteam = 0", "at least one weight must be"),
    ],
)
def test_weight_errors(signals: str, weights: str, message: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match=message):
        parse(signals=signals, weights=weights)


def test_saved_funnels_need_a_property() -> None:
    with pytest.raises(MixpanelConfigurationError, match="saved_funnels needs mixpanel.metrics"):
        parse_metrics_settings(
            {
                P + "account_getter": "tests.metrics_helpers.account_from_path",
                P + "saved_funnels": "1",
            }
        )


def test_profile_properties_need_the_account_property() -> None:
    with pytest.raises(MixpanelConfigurationError, match="profile_properties needs"):
        parse_metrics_settings(
            {
                P + "account_getter": "tests.metrics_helpers.account_from_path",
                P + "profile_properties": "plan",
            }
        )


def test_unknown_key_is_logged_with_the_closest(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        parse(breakdown="plan", **{"nothing_like_it": "1"})
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "Unknown setting mixpanel.metrics.breakdown is ignored."
        " Did you mean 'mixpanel.metrics.breakdowns'?" in messages
    )
    assert "Unknown setting mixpanel.metrics.nothing_like_it is ignored." in messages


def test_core_settings_ignore_the_metrics_prefix(caplog: pytest.LogCaptureFixture) -> None:
    from pyramid_mixpanel import parse_settings

    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        parse_settings({"mixpanel.token": "t", P + "account_property": "company_id"})
    assert not caplog.records


@pytest.mark.parametrize("off", ["off", "false", "", False])
def test_profile_sync_can_be_turned_off_with_an_account_property(off: object) -> None:
    # docs/settings.md's promise: off means no profile sync, not "the event property again".
    assert parse(profile_account_property=off).profile_account_property is None
    with pytest.raises(MixpanelConfigurationError, match="profile_properties needs"):
        parse(profile_account_property=off, profile_properties="plan")
