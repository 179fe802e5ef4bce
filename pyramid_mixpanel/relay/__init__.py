"""A first-party endpoint that relays front-end events to Mixpanel, safely.

``config.include("pyramid_mixpanel.relay")`` adds ``POST /mixpanel/track`` (see
``mixpanel.relay.path``) and serves ``pyramid_mixpanel:static/relay.js``, a small script that
sends page views and clicks on ``data-mixpanel-click`` elements to it. Events go through
``request.mixpanel``: they are checked against the catalogue, released only when the call
succeeded and delivered like every other event. Identity, client IP and device come from the
server; the front end only chooses among allowed events and properties.
"""

from __future__ import annotations

import typing as t

from pyramid.interfaces import PHASE1_CONFIG
from pyramid.security import NO_PERMISSION_REQUIRED

from .._extras import require
from ..runtime import get_runtime
from .client import device_properties
from .config import RelaySettings, parse_relay_settings
from .ratelimit import TokenBuckets
from .view import RelayRefusedError, RelayState, RelayView

if t.TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = [
    "RELAY_KEY",
    "STATIC_NAME",
    "RelayRefusedError",
    "RelaySettings",
    "RelayState",
    "RelayView",
    "includeme",
    "relay_state",
]

#: Registry key of the :class:`RelayState` (settings, rate-limit buckets, counters).
RELAY_KEY = "pyramid_mixpanel.relay"
ROUTE_NAME = "pyramid_mixpanel.relay"
#: Where ``relay.js`` is served; build its URL with
#: ``request.static_url("pyramid_mixpanel:static/relay.js")``.
STATIC_NAME = "pyramid_mixpanel-static"


def relay_state(config: Configurator) -> RelayState:
    """The app's :class:`RelayState`, built from the ``mixpanel.relay.*`` settings once.

    Called from configuration actions (after the core's, which builds the runtime): by the
    relay and by the browser-SDK proxy, which share one policy, one set of rate-limit buckets
    and one set of counters.
    """
    existing = config.registry.get(RELAY_KEY)
    if isinstance(existing, RelayState):
        return existing
    runtime = get_runtime(config.registry)
    settings = parse_relay_settings(config.get_settings(), runtime.catalog)
    if any(network.prefixlen == 0 for network in settings.trusted_proxies):
        # Every address is then a trusted proxy: X-Forwarded-For, which any client can
        # write, decides the client IP (geolocation, the anonymous rate-limit key).
        runtime.log.warning(
            "mixpanel.relay_trusts_every_proxy",
            setting="mixpanel.relay.trusted_proxies",
            detail="a network of prefix length 0 (0.0.0.0/0, ::/0) trusts every address:"
            " any client can spoof X-Forwarded-For; list only your proxies",
        )
    buckets = TokenBuckets(settings.rate, settings.burst, settings.max_clients)
    state = RelayState(settings, buckets)
    config.registry[RELAY_KEY] = state
    if settings.parse_user_agent:
        # Said now, not at the first call; and ua-parser compiles its rules on first use
        # (~0.1 s): pay that at startup.
        require("ua_parser", "relay", "mixpanel.relay.parse_user_agent = true (the default)")
        device_properties("Mozilla/5.0")
    return state


def includeme(config: Configurator) -> None:
    """Register the relay route and view, and the static ``relay.js``.

    Includes ``pyramid_mixpanel`` itself when the app has not. The ``mixpanel.relay.*``
    settings are parsed and checked against the catalogue once, when the configuration is
    committed (so ``config.add_settings`` after this include still counts); the route is added
    then, after the app's own routes.
    """
    config.include("pyramid_mixpanel")

    def register() -> None:
        state = relay_state(config)
        config.add_route(ROUTE_NAME, state.settings.path)
        config.add_view(
            RelayView(state),
            route_name=ROUTE_NAME,
            # The relay has its own CSRF check (mixpanel.relay.csrf) that answers in JSON, and
            # is open to anonymous visitors (identity comes from the server, not the body).
            require_csrf=False,
            permission=NO_PERMISSION_REQUIRED,
        )

    # After the core's action (same phase, registered later), which builds the runtime.
    config.action(RELAY_KEY, register, order=PHASE1_CONFIG)
    config.add_static_view(STATIC_NAME, "pyramid_mixpanel:static/", cache_max_age=3600)
