"""Typed, request-aware Mixpanel (and Customer.io) tracking for Pyramid.

``config.include("pyramid_mixpanel")`` adds ``request.mixpanel``, a
:class:`~pyramid_mixpanel.track.MixpanelTrack` whose messages are released only after the
request succeeded. The documentation's Settings page (``docs/settings.md``) lists the settings,
its Tracking and Delivery pages (``docs/tracking.md``, ``docs/delivery.md``) the guarantees.
"""

from __future__ import annotations

import typing as t

from pyramid.interfaces import PHASE1_CONFIG

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
from .delivery import Delivery
from .exceptions import (
    MixpanelConfigurationError,
    MixpanelError,
    MixpanelQueryError,
    MultipleProfilesFoundException,
)
from .lifecycle import request_mixpanel
from .plan import lint
from .query import MixpanelQuery
from .runtime import RUNTIME_KEY, Runtime, build_runtime, get_runtime
from .settings import MixpanelSettings, parse_settings
from .track import MixpanelTrack

if t.TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = [
    "Delivery",
    "Event",
    "EventProperties",
    "Events",
    "GroupKeys",
    "GroupProperties",
    "MixpanelConfigurationError",
    "MixpanelError",
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
    "Runtime",
    "get_runtime",
    "includeme",
    "parse_settings",
]


def includeme(config: Configurator) -> None:
    """Set up ``request.mixpanel``.

    Registers the reified request method ``request.mixpanel`` and a configuration action that,
    when the configuration is committed (so settings added later by other includes still
    count), parses and validates the ``mixpanel.*`` / ``customerio.tracking.*`` settings once,
    builds the app's :class:`~pyramid_mixpanel.runtime.Runtime` (catalogue, logger, one delivery
    per lane) into the registry, and logs one "configured" line. Reach the runtime with
    :func:`get_runtime`; close it with ``get_runtime(registry).close()`` when an app is torn
    down before the process ends (at exit, background engines drain on their own).
    """
    config.add_request_method(request_mixpanel, "mixpanel", reify=True)

    def register() -> None:
        runtime = build_runtime(config.get_settings())
        config.registry[RUNTIME_KEY] = runtime
        runtime.log_configured()
        for issue in lint(runtime.catalog):
            runtime.log.warning("mixpanel.naming", issue=str(issue))
        runtime.open()

    # PHASE1: before the includes' own actions (relay, insights), which read the runtime.
    config.action(RUNTIME_KEY, register, order=PHASE1_CONFIG)
