"""Group Analytics: accounts are a group key's group ids, and their group profiles are synced
(Engage with ``data_group_id``, group-analytics-faq "Exporting Group Profiles via API")."""

from __future__ import annotations

import pathlib

import pytest
import webtest
from pyramid.config import Configurator

from pyramid_mixpanel import MixpanelConfigurationError
from pyramid_mixpanel.metrics import MetricsStore, parse_metrics_settings, sync
from pyramid_mixpanel.metrics.aggregate import AggregateStats, group_profiles
from pyramid_mixpanel.metrics.model import GroupProfile

from .metrics_helpers import day, event
from .query_standin import QueryStandIn

P = "mixpanel.metrics."
GROUPS = {"group_key": "company_id", "data_group_id": "-1405", "group_properties": "plan, seats"}


def config(**values: str) -> object:
    return parse_metrics_settings({P + k: v for k, v in values.items()})


def test_the_group_key_names_the_accounts() -> None:
    parsed = parse_metrics_settings({P + k: v for k, v in GROUPS.items()})
    assert (parsed.account_property, parsed.group_key, parsed.data_group_id) == (
        "company_id",
        "company_id",
        -1405,
    )
    assert parsed.group_properties == ("plan", "seats")
    unset = parse_metrics_settings({P + "group_key": "company_id", P + "data_group_id": ""})
    assert unset.data_group_id is None


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"group_key": "company_id", "group_properties": "plan"}, "needs mixpanel.metrics.data_"),
        ({"account_property": "c", "data_group_id": "5"}, "data_group_id needs"),
        ({"group_key": "company_id", "data_group_id": "abc"}, "must be the group key's id"),
        ({"group_key": "email"}, "identifies a person"),
    ],
)
def test_group_settings_are_checked(values: dict[str, str], error: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match=error):
        config(**values)


def test_group_profiles_keep_the_configured_properties() -> None:
    settings = parse_metrics_settings({P + k: v for k, v in GROUPS.items()})
    stats = AggregateStats()
    found = group_profiles(
        [
            {"$distinct_id": "acme", "$properties": {"plan": "pro", "seats": 12, "ceo": "x"}},
            {"$distinct_id": "globex", "$properties": {"plan": "p" * 300, "seats": float("nan")}},
            {"$distinct_id": "x" * 300, "$properties": {"plan": "free"}},  # refused: too long
            {"$distinct_id": "initech"},  # no properties
            {"$distinct_id": "hooli", "$properties": {"plan": "a\x00b", "seats": True}},
        ],
        settings,
        stats,
    )
    assert found == [
        GroupProfile("acme", "company_id", {"plan": "pro", "seats": 12}),
        GroupProfile("globex", "company_id", {"plan": "(too long)", "seats": "nan"}),
        GroupProfile("hooli", "company_id", {"plan": "a\ufffdb", "seats": True}),
    ]
    assert (stats.rejected_accounts, stats.long_values) == (1, 1)


def test_the_sync_stores_group_profiles_and_the_views_show_them(tmp_path: pathlib.Path) -> None:
    with QueryStandIn() as api:
        api.events = [event("Page Viewed", "u1", 60, "acme")]
        api.group_profiles = {
            "-1405": [
                {"$distinct_id": "acme", "$properties": {"plan": "pro", "seats": 12}},
                {"$distinct_id": "globex", "$properties": {"plan": "free"}},
            ]
        }
        database = f"sqlite:///{tmp_path / 'g.db'}"
        settings = api.settings(
            **{
                "mixpanel.token": "false",
                "mixpanel.metrics.database_url": database,
                **{P + k: v for k, v in GROUPS.items()},
            }
        )
        settings.pop("mixpanel.delivery")
        report = sync(settings, "2026-01-01", "2026-01-01", progress=False, today=day(30))
        assert report.ok and report.group_profiles == 2
        engage = [r for r in api.requests if r["path"] == "/api/query/engage"]
        assert any(r["params"].get("data_group_id") == "-1405" for r in engage)
        with MetricsStore(database) as store:
            assert store.group_profile("acme") == GroupProfile(
                "acme", "company_id", {"plan": "pro", "seats": 12}
            )
        with Configurator(settings=settings) as pyramid_config:
            pyramid_config.include("pyramid_mixpanel.insights")
            app = webtest.TestApp(pyramid_config.make_wsgi_app())
        answer = app.get("/api/mixpanel/groups/acme").json
        assert answer == {"account": "acme", "group_key": "company_id",
                          "properties": {"plan": "pro", "seats": 12}}  # fmt: skip
        app.get("/api/mixpanel/groups/initech", status=404)
        app.get("/api/mixpanel/groups/" + "x" * 300, status=404)
        html = app.get("/mixpanel/accounts/acme", {"from": "2026-01-01", "to": "2026-01-01"}).text
        assert "Group profile <small>(company_id)</small>" in html
        assert "<tr><th>seats</th><td>12</td></tr>" in html
        # Mixpanel refusing the group key's id: the error is reported, the rest is stored.
        settings[P + "data_group_id"] = "7"
        refused = sync(settings, "2026-01-01", "2026-01-01", progress=False, today=day(30))
        assert any(e.startswith("group profiles:") for e in refused.errors)
        with MetricsStore(database) as store:
            assert store.group_profile("globex") is not None  # kept from the last good sync
            store.replace_group_profiles([GroupProfile("acme", "company_id", {})])
            assert store.group_profile("globex") is None
        empty = app.get("/mixpanel/accounts/acme", {"from": "2026-01-01", "to": "2026-01-01"})
        assert "No properties." in empty.text
