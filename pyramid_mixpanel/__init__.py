"""Typed, request-aware Mixpanel (and Customer.io) tracking for Pyramid.

``config.include("pyramid_mixpanel")`` adds ``request.mixpanel``, a
:class:`~pyramid_mixpanel.track.MixpanelTrack` whose messages are released only after the
request succeeded. See the README for settings and guarantees.
"""

from __future__ import annotations

import typing as t

from .catalog import (
    Event,
    EventProperties,
    Events,
    GroupKeys,
    GroupProperties,
    ProfileMetaProperties,
    ProfileProperties,
    Property,
)
from .consumer import MockedConsumer, PoliteBufferedConsumer
from .lifecycle import RUNTIME_KEY, request_mixpanel
from .plan import lint
from .query import MixpanelQuery, MixpanelQueryError, MultipleProfilesFoundException
from .runtime import Runtime, runtime_for
from .settings import MixpanelConfigurationError, MixpanelSettings, parse_settings
from .track import MixpanelTrack

if t.TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = [
    "Event",
    "EventProperties",
    "Events",
    "GroupKeys",
    "GroupProperties",
    "MixpanelConfigurationError",
    "MixpanelQuery",
    "MixpanelQueryError",
    "MixpanelSettings",
    "MixpanelTrack",
    "MockedConsumer",
    "MultipleProfilesFoundException",
    "PoliteBufferedConsumer",
    "ProfileMetaProperties",
    "ProfileProperties",
    "Property",
    "includeme",
    "parse_settings",
]


def includeme(config: Configurator) -> None:
    """Set up ``request.mixpanel``.

    Registers the reified request method ``request.mixpanel`` and, as a configuration action (so
    settings added later by other includes still count), parses and validates the
    ``mixpanel.*`` / ``customerio.tracking.*`` settings once, logging one "configured" line.
    """
    config.add_request_method(request_mixpanel, "mixpanel", reify=True)

    def register() -> None:
        runtime: Runtime = runtime_for(config.get_settings())
        config.registry[RUNTIME_KEY] = runtime
        runtime.log_configured()
        for issue in lint(runtime.catalog):
            runtime.log.warning("mixpanel.naming", issue=str(issue))
        if runtime.engine is not None and runtime.engine.store.pending():
            # Send what an earlier run left in the spool without waiting for new traffic.
            runtime.engine.start()

    config.action(RUNTIME_KEY, register)
