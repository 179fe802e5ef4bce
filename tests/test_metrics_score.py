"""Engagement score, anomaly flags and the alert hook."""

from __future__ import annotations

import logging
import math

import pytest

from pyramid_mixpanel.metrics import (
    Anomaly,
    MetricsSettings,
    detect_anomaly,
    engagement_score,
    log_anomaly,
    parse_metrics_settings,
)
from pyramid_mixpanel.metrics.score import send_alert

from . import metrics_helpers
from .metrics_helpers import day

P = "mixpanel.metrics."


def settings(**values: object) -> MetricsSettings:
    raw: dict[str, object] = {P + "account_property": "company_id"}
    raw.update({P + key: value for key, value in values.items()})
    return parse_metrics_settings(raw)


SIGNALS = "Report Exported = reporting\nUser Invited = team\nPage Viewed = core"


@pytest.mark.parametrize(
    ("adopted", "users", "expected"),
    [
        ({"reporting": 4, "team": 4, "core": 4}, 4, 100.0),
        ({}, 4, 0.0),
        ({"reporting": 4}, 0, 0.0),
        # 100 * (3 * 2/4 + 1 * 1/4 + 1 * 4/4) / 5 = 55
        ({"reporting": 2, "team": 1, "core": 4}, 4, 55.0),
        # More adopters than users (cannot happen, but the score stays within 0-100).
        ({"reporting": 9, "team": 9, "core": 9}, 4, 100.0),
    ],
)
def test_engagement_score_formula(adopted: dict[str, int], users: int, expected: float) -> None:
    config = settings(signals=SIGNALS, weights="reporting = 3")
    assert engagement_score(adopted, users, config) == expected


def test_no_signals_no_score() -> None:
    assert engagement_score({"x": 3}, 3, settings()) == 0.0


def test_anomalies_need_enough_history() -> None:
    config = settings(anomaly_min_days="7")
    assert detect_anomaly("acme", day(10), 10_000, [100] * 6, config) is None
    assert detect_anomaly("acme", day(10), 10_000, [100] * 7, config) is not None


def test_spike_and_drop() -> None:
    config = settings()
    history = [100, 110, 90, 105, 95, 100, 100, 100]
    mean = sum(history) / len(history)
    stddev = math.sqrt(sum((v - mean) ** 2 for v in history) / len(history))
    spike = detect_anomaly("acme", day(10), 200, history, config)
    assert spike == Anomaly(
        account="acme",
        date=day(10),
        kind="spike",
        total_events=200,
        mean=100.0,
        stddev=round(max(stddev, 10.0), 4),  # sqrt(mean) = 10 is the floor
        z=round((200 - mean) / max(stddev, 10.0), 4),
        threshold=3.0,
        history_days=8,
    )
    drop = detect_anomaly("acme", day(10), 0, history, config)
    assert drop is not None
    assert (drop.kind, drop.z) == ("drop", -10.0)
    assert detect_anomaly("acme", day(10), 125, history, config) is None


def test_flat_history_is_not_flagged_for_a_small_change() -> None:
    config = settings()
    # stddev 0, floored at sqrt(100) = 10: 120 is z = 2.
    assert detect_anomaly("acme", day(10), 120, [100] * 10, config) is None
    flagged = detect_anomaly("acme", day(10), 130, [100] * 10, config)
    assert flagged is not None
    assert flagged.z == 3.0  # exactly the threshold counts
    # A quiet account: floored at 1.
    assert detect_anomaly("acme", day(10), 2, [0] * 10, config) is None
    assert detect_anomaly("acme", day(10), 3, [0] * 10, config) is not None


def test_threshold_is_configurable() -> None:
    config = settings(anomaly_threshold="1.5", anomaly_min_days="2", anomaly_days="2")
    assert detect_anomaly("acme", day(3), 115, [100, 100], config) is not None


def test_alert_hook_receives_the_anomaly() -> None:
    config = settings(alert="tests.metrics_helpers.record_alert")
    metrics_helpers.ALERTS.clear()
    anomaly = detect_anomaly("acme", day(10), 500, [100] * 7, config)
    assert anomaly is not None
    assert send_alert(anomaly, config) is True
    assert [anomaly] == metrics_helpers.ALERTS


def test_default_alert_is_a_logged_warning(caplog: pytest.LogCaptureFixture) -> None:
    anomaly = detect_anomaly("acme", day(10), 0, [100] * 7, settings())
    assert anomaly is not None
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        assert send_alert(anomaly, settings()) is True
    assert caplog.messages == [
        "mixpanel.metrics_anomaly kind='drop' account='acme' date='2026-01-11' events=0"
        " usual=100.0 stddev=10.0 z=-10.0"
    ]
    assert log_anomaly.__doc__


def test_a_failing_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    config = settings(alert="tests.metrics_helpers.failing_alert")
    anomaly = detect_anomaly("acme", day(10), 0, [100] * 7, config)
    assert anomaly is not None
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        assert send_alert(anomaly, config) is False
    assert caplog.messages == [
        "mixpanel.metrics_alert_failed account='acme' date='2026-01-11'"
        " error='RuntimeError: pager is down'"
    ]
