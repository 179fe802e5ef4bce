"""The demo's tracking catalogue: the defaults plus what this app needs."""

from __future__ import annotations

from dataclasses import dataclass

import pyramid_mixpanel
from pyramid_mixpanel import Event, Property


@dataclass(frozen=True)
class Events(pyramid_mixpanel.Events):
    """Every event the demo sends."""

    plan_upgraded: Event = Event("Plan Upgraded", "A user moved to a paid plan.")


@dataclass(frozen=True)
class EventProperties(pyramid_mixpanel.EventProperties):
    """Properties of the demo's events."""

    plan: Property = Property("Plan", "The subscription plan.")


@dataclass(frozen=True)
class ProfileProperties(pyramid_mixpanel.ProfileProperties):
    """Properties of the demo's user profiles."""

    plan: Property = Property("Plan", "The subscription plan.")
    company: Property = Property("Company", "Where the user works.")
    upgrades: Property = Property("Upgrades", "How many times the user upgraded.")
