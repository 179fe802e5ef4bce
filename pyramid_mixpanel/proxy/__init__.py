"""Mixpanel's browser SDK through the app's own domain, checked and delivered like server events.

``config.include("pyramid_mixpanel.proxy")`` serves the API of ``mixpanel-browser`` under
``mixpanel.proxy.prefix`` (``/lantern`` by default), so a page initialises the SDK with
``api_host`` set to the site's origin plus that prefix::

    mixpanel.init(TOKEN, {api_host: location.origin + "/lantern"})

Ad blockers block Mixpanel's domains, not the site's own. Unlike a forwarding proxy, every item
goes through the relay's rules (``mixpanel.relay.*``: allow-lists, limits, Origin check,
server-side identity, IP and user agent) and then the app's own delivery. See docs/proxy.md.
"""

from __future__ import annotations

import typing as t

from pyramid.interfaces import PHASE1_CONFIG
from pyramid.security import NO_PERMISSION_REQUIRED

from ..relay import relay_state
from ..runtime import get_runtime
from .config import ProxySettings, parse_proxy_settings
from .protocol import Call, ProtocolError, decode_call, encode_answer
from .view import ENDPOINTS, SDK_EVENT_PROPERTIES, ProxyView

if t.TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = [
    "ENDPOINTS",
    "PROXY_KEY",
    "SDK_EVENT_PROPERTIES",
    "Call",
    "ProtocolError",
    "ProxySettings",
    "ProxyView",
    "decode_call",
    "encode_answer",
    "includeme",
]

#: Registry key of the parsed :class:`ProxySettings`.
PROXY_KEY = "pyramid_mixpanel.proxy"
ROUTE_NAMES = ("pyramid_mixpanel.proxy", "pyramid_mixpanel.proxy.slash")


def includeme(config: Configurator) -> None:
    """Register the proxy's routes and view (``<prefix>/<endpoint>`` with or without ``/``).

    Includes ``pyramid_mixpanel`` itself when the app has not. Settings are parsed when the
    configuration is committed, after the core's action, sharing the relay's state (rules,
    rate-limit buckets and counters) when the relay is included too.
    """
    config.include("pyramid_mixpanel")

    def register() -> None:
        proxy = parse_proxy_settings(config.get_settings())
        config.registry[PROXY_KEY] = proxy
        state = relay_state(config)
        runtime = get_runtime(config.registry)
        view = ProxyView(state, proxy, runtime.settings.token, runtime.log)
        prefix = proxy.prefix
        for name, pattern in zip(
            ROUTE_NAMES, (f"{prefix}/{{endpoint}}", f"{prefix}/{{endpoint}}/"), strict=True
        ):
            config.add_route(name, pattern)
            config.add_view(
                view,
                route_name=name,
                # The SDK cannot send Pyramid's CSRF token (sendBeacon has no headers): the
                # proxy checks Origin/Referer itself, and identity comes from the server.
                require_csrf=False,
                permission=NO_PERMISSION_REQUIRED,
            )

    config.action(PROXY_KEY, register, order=PHASE1_CONFIG)
