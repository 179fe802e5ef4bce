"""Saved Insights reports: the answer's shapes (openapi/query.openapi.yaml, "Query Saved
Report"), the sync that stores them per account and day, and the page and API that show them."""

from __future__ import annotations

import datetime as dt
import pathlib

import pytest

from pyramid_mixpanel import MixpanelConfigurationError
from pyramid_mixpanel.metrics import MetricsStore, parse_metrics_settings, sync
from pyramid_mixpanel.metrics.reports import (
    ALL_ACCOUNTS,
    ReportValue,
    report_span,
    report_values,
)

from .metrics_helpers import day
from .query_standin import QueryStandIn

MON, TUE = "2026-01-05T00:00:00-08:00", "2026-01-06T00:00:00-08:00"


def test_a_report_broken_down_by_account() -> None:
    answer = {
        "headers": ["$event", "company_id"],
        "series": {
            "Logged in": {
                "acme": {MON: 5, TUE: {"value": 7}},
                "globex": {MON: 1},
                "$overall": {MON: 6},  # Mixpanel's total: not an account
            },
        },
    }
    values, warning = report_values(answer, 9, "company_id")
    assert warning is None
    assert values == [
        ReportValue("acme", "9", "Logged in", dt.date(2026, 1, 5), 5.0),
        ReportValue("acme", "9", "Logged in", dt.date(2026, 1, 6), 7.0),
        ReportValue("globex", "9", "Logged in", dt.date(2026, 1, 5), 1.0),
    ]


def test_other_breakdowns_are_added_up_and_odd_values_left_out() -> None:
    answer = {
        "headers": ["$event", "plan", "company_id"],
        "series": {
            "Exported": {
                "pro": {"acme": {MON: 2, TUE: float("nan")}},
                "free": {"acme": {MON: 3, "not a day": 4, TUE: True}, "x" * 300: {MON: 1}},
            },
        },
    }
    values, warning = report_values(answer, 3, "company_id")
    assert values == [ReportValue("acme", "3", "Exported", dt.date(2026, 1, 5), 5.0)]
    assert warning == "report 3: 1 value(s) of account ids the store cannot keep"


@pytest.mark.parametrize(
    ("answer", "warning"),
    [
        ({"headers": ["$event"], "series": {"Signed up": {MON: 4}}}, "is not broken down"),
        ({"series": {"Signed up": {MON: 4}}}, "is not broken down"),
        ([], "the answer has no series"),
        ({"headers": ["$event"], "series": []}, "the answer has no series"),
    ],
)
def test_reports_not_per_account_or_not_a_report(answer: object, warning: str) -> None:
    values, said = report_values(answer, 4, "company_id")
    assert said is not None and warning in said
    assert all(v.account == ALL_ACCOUNTS for v in values)
    assert report_values({"series": {"m": {MON: 1}}}, 4, None)[0][0].account == ALL_ACCOUNTS


def test_the_sync_stores_reports_and_the_pages_show_them(tmp_path: pathlib.Path) -> None:
    with QueryStandIn() as api:
        api.bookmarks = {
            "11": {
                "date_range": {"from_date": MON, "to_date": "2026-01-06T23:59:59.999000-08:00"},
                "headers": ["$event", "company_id"],
                "series": {"Logged in": {"acme": {MON: 5, TUE: 7}, "globex": {MON: 2}}},
            },
            "12": {"headers": ["$event"], "series": {"Signups": {MON: 40}}},
        }
        database = f"sqlite:///{tmp_path / 'r.db'}"
        settings = api.settings(
            **{
                "mixpanel.token": "false",
                "mixpanel.metrics.database_url": database,
                "mixpanel.metrics.account_property": "company_id",
                "mixpanel.metrics.reports": "11, 12, 13",
                "mixpanel.metrics.profile_account_property": "off",
            }
        )
        settings.pop("mixpanel.delivery")
        report = sync(settings, "2026-01-05", "2026-01-06", progress=False, today=day(30))
        assert report.report_values == 4
        assert any("report 12 is not broken down by company_id" in w for w in report.warnings)
        assert any(e.startswith("saved report 13:") for e in report.errors)  # unknown: refused
        with MetricsStore(database) as store:
            acme = store.reports("acme", day(4), day(5))
            assert [(v.account, v.metric, v.value) for v in acme] == [
                ("acme", "Logged in", 5.0),
                ("acme", "Logged in", 7.0),
                (ALL_ACCOUNTS, "Signups", 40.0),
            ]
            # A later pull replaces the days the report covers: Tuesday's 7 is gone.
            api.bookmarks["11"]["series"]["Logged in"]["acme"] = {MON: 6}
            sync(settings, "2026-01-05", "2026-01-06", progress=False, today=day(30))
            assert [v.value for v in store.reports("acme", day(4), day(5))] == [6.0, 40.0]
            assert store.forget("acme") > 0
            assert [v.account for v in store.reports("acme", day(4), day(5))] == [ALL_ACCOUNTS]
            assert store.prune(day(10)) > 0
            assert store.reports("globex", day(4), day(5)) == []


def test_the_span_of_an_answer() -> None:
    span = {"from_date": MON, "to_date": TUE}
    assert report_span({"date_range": span}) == (dt.date(2026, 1, 5), dt.date(2026, 1, 6))
    bad: list[object] = [{}, {"date_range": 1}, {"date_range": {"from_date": TUE, "to_date": MON}}]
    for answer in [*bad, []]:
        assert report_span(answer) is None


def test_odd_shapes_and_settings(tmp_path: pathlib.Path) -> None:
    # A key that is not text, and a level that is not an object, are skipped.
    answer = {"headers": ["$event"], "series": {"m": {1: 2, MON: 3}, "n": 5}}
    values, _ = report_values(answer, 1, None)
    assert [(v.metric, v.value) for v in values] == [("m", 3.0)]
    with MetricsStore(f"sqlite:///{tmp_path / 'e.db'}") as store:
        store.write_reports("1", [])  # an empty answer without a span deletes nothing
        assert store.reports("acme", day(0), day(9)) == []
    with pytest.raises(MixpanelConfigurationError, match="is not a report's bookmark id"):
        parse_metrics_settings(
            {"mixpanel.metrics.account_property": "c", "mixpanel.metrics.reports": "12, abc"}
        )
