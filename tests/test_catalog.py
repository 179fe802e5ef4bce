"""The catalogue: default members, extension by subclassing, lookups and hints."""

from __future__ import annotations

import dataclasses

import pytest
from pyramid.exceptions import ConfigurationError

from pyramid_mixpanel import (
    Event,
    EventProperties,
    Events,
    GroupKeys,
    GroupProperties,
    ProfileMetaProperties,
    ProfileProperties,
    Property,
)
from pyramid_mixpanel.catalog import Catalog, closest, members, normalise


@dataclasses.dataclass(frozen=True)
class AppEvents(Events):
    site_deployed: Event = Event("Site Deployed", "A site went live.")


class UndecoratedEvents(Events):
    # No @dataclass: the member must still count.
    backup_completed = Event("Backup Completed")


def test_default_members_match_the_original_contract() -> None:
    assert {e.name for e in members(Events, Event).values()} == {
        "Page Viewed",
        "Button/Link Clicked",
        "User Signed Up",
        "User Logged In",
        "User Charged",
        "User Disabled",
    }
    assert {p.name for p in members(EventProperties, Property).values()} == {
        "Title",
        "Path",
        "$referrer",
    }
    assert {p.name for p in members(ProfileProperties, Property).values()} == {
        "$created",
        "$email",
        "$name",
        "$phone",
        "$unsubscribed",
    }
    assert {p.name for p in members(ProfileMetaProperties, Property).values()} == {
        "$ip",
        "$time",
        "$ignore_time",
        "$ignore_alias",
    }
    assert members(GroupKeys, Property) == {}
    assert Events.page_viewed == Event("Page Viewed")


def test_members_are_frozen_and_descriptions_do_not_affect_equality() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Events.page_viewed.name = "Other"  # type: ignore[misc]  # proving it is refused
    assert Event("Page Viewed", "x") == Event("Page Viewed", "y")
    assert hash(Property("Path", "a")) == hash(Property("Path"))
    assert Events.page_viewed.description


def test_subclasses_extend_the_defaults_with_or_without_dataclass() -> None:
    assert "site_deployed" in members(AppEvents, Event)
    assert "page_viewed" in members(AppEvents, Event)
    assert members(UndecoratedEvents, Event)["backup_completed"] == Event("Backup Completed")


def test_catalog_indexes_every_section() -> None:
    catalog = Catalog(events=AppEvents)
    assert Event("Site Deployed") in catalog.events.members
    assert catalog.events.by_name["Site Deployed"] is AppEvents.site_deployed
    assert [s.label for s in catalog.sections] == [
        "events",
        "event properties",
        "group keys",
        "profile properties",
        "profile meta properties",
        "group properties",
    ]
    assert Property("$name") in catalog.group_properties.members


def test_group_keys_are_accepted_as_event_properties() -> None:
    @dataclasses.dataclass(frozen=True)
    class Keys(GroupKeys):
        company: Property = Property("company_id")

    catalog = Catalog(group_keys=Keys)
    assert Property("company_id") in catalog.event_property_members
    assert Property("Path") in catalog.event_property_members


def test_unknown_member_error_names_it_and_suggests_the_closest() -> None:
    catalog = Catalog()
    error = catalog.events.unknown(Event("Page Viewd"))
    # The original package's message, then where to declare it and what is nearest.
    assert str(error) == "Event 'Event(name='Page Viewd')' is not a member of self.events"
    (note,) = error.__notes__
    assert "pyramid_mixpanel.catalog.Events" in note
    assert "Did you mean Events.page_viewed ('Page Viewed')?" in note
    assert catalog.events.hint("page_viewd") == " Did you mean Events.page_viewed ('Page Viewed')?"
    assert catalog.events.hint("zzzz") == ""


def test_dollar_names_must_be_reserved_by_mixpanel() -> None:
    @dataclasses.dataclass(frozen=True)
    class Bad(EventProperties):
        mine: Property = Property("$my_thing")

    with pytest.raises(ConfigurationError, match=r"Bad.mine = '\$my_thing'.*reserved"):
        Catalog(event_properties=Bad)

    @dataclasses.dataclass(frozen=True)
    class Good(ProfileProperties):
        first: Property = Property("$first_name")

    assert Property("$first_name") in Catalog(profile_properties=Good).profile_properties.members


def test_group_property_dollar_names_follow_profile_rules() -> None:
    @dataclasses.dataclass(frozen=True)
    class Bad(GroupProperties):
        ip: Property = Property("$ip")

    with pytest.raises(ConfigurationError, match="group properties"):
        Catalog(group_properties=Bad)


def test_normalise_and_closest() -> None:
    assert normalise("X-Mixpanel-Dark-Mode") == "xmixpaneldarkmode"
    assert normalise("Dark Mode") == normalise("dark_mode") == "darkmode"
    assert closest("dark_mode", ["Dark Mode", "Path"]) == " Did you mean 'Dark Mode'?"
    assert closest("Pathh", ["Path", "Title"]) == " Did you mean 'Path'?"
    assert closest("q", ["Path"]) == ""


def test_types_and_requirements_default_to_nothing_declared() -> None:
    from pyramid_mixpanel.catalog import PROPERTY_TYPES, Catalog

    assert Property("Path").type is None
    assert Event("Page Viewed").requires == ()
    assert PROPERTY_TYPES == ("string", "number", "boolean", "datetime", "list", "object")
    assert repr(Property("Price", type="number")) == "Property(name='Price')"
    assert Catalog().checks_plan is False
