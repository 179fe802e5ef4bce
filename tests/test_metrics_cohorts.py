"""Mixpanel cohorts counted as accounts of their own: ``cohort:<id>``, for metrics and local
funnels (members from Engage's ``filter_by_cohort``, reference/engage-query)."""

from __future__ import annotations

import pathlib

import pytest

from pyramid_mixpanel import MixpanelConfigurationError
from pyramid_mixpanel.metrics import MetricsStore, parse_metrics_settings, sync

from .metrics_helpers import day, event
from .query_standin import QueryStandIn

P = "mixpanel.metrics."


def test_a_cohort_is_counted_as_an_account(tmp_path: pathlib.Path) -> None:
    with QueryStandIn() as api:
        api.events = [
            event("Page Viewed", "u1", 60, "acme"),
            event("User Signed Up", "u1", 120, "acme"),
            event("Page Viewed", "u2", 180, "globex"),
            event("Page Viewed", "u3", 240, "globex"),
            event("Page Viewed", "u3", 300, None),  # no account: the cohort's still
            event("Page Viewed", "u2", 360, ["acme", "globex"]),  # two accounts, and a cohort
            event("Page Viewed", None, 420, "acme"),  # no user: no cohort
        ]
        api.profiles = [
            {"$distinct_id": user, "$properties": {"company_id": "acme"}}
            for user in ("u1", "u2", "u3", None)
        ]
        api.cohorts = {"77": ["u1", "u3", None], "78": ["u2"]}  # (a profile without an id)
        database = f"sqlite:///{tmp_path / 'c.db'}"
        settings = api.settings(
            **{
                "mixpanel.token": "false",
                P + "database_url": database,
                P + "account_property": "company_id",
                P + "funnels": "Signup: Page Viewed > User Signed Up",
                P + "cohorts": "77, 78, 79",
                P + "profile_account_property": "off",
            }
        )
        settings.pop("mixpanel.delivery")
        report = sync(settings, "2026-01-01", "2026-01-01", progress=False, today=day(30))
        assert report.cohort_members == {"cohort:77": 3, "cohort:78": 1}
        assert any(e.startswith("cohort 79:") for e in report.errors)  # unknown: refused
        with MetricsStore(database) as store:
            [cohort] = store.daily("cohort:77", day(0), day(0))
            assert (cohort.total_events, cohort.unique_users) == (4, 2)
            [other] = store.daily("cohort:78", day(0), day(0))
            assert other.total_events == 2
            [acme] = store.daily("acme", day(0), day(0))
            assert acme.total_events == 4  # the accounts' own figures are unchanged
            [funnel] = store.funnel_totals("cohort:77", day(0), day(0))
            assert funnel.steps == [2, 1]  # u1 completed, u3 entered
            assert "cohort:77" in store.accounts()


def test_cohorts_need_the_account_property() -> None:
    with pytest.raises(MixpanelConfigurationError, match="cohorts needs"):
        parse_metrics_settings(
            {P + "account_getter": "tests.metrics_helpers.account_from_path", P + "cohorts": "1"}
        )
    with pytest.raises(MixpanelConfigurationError, match="is not a Mixpanel cohort id"):
        parse_metrics_settings({P + "account_property": "c", P + "cohorts": "x"})
