"""Settings of the browser-SDK proxy (``mixpanel.proxy.*``), parsed once at startup.

The proxy shares the relay's policy (``mixpanel.relay.*``: allow-lists, identity getter,
trusted proxies, rate limits, Origin checks, value limits); these settings are what only the
proxy has.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ..converters import Setting, as_bool, one_of, parse_table, positive_int
from ..exceptions import MixpanelConfigurationError
from ..relay.config import as_route_path

__all__ = ["FLAG_ANSWERS", "ProxySettings", "parse_proxy_settings"]

PREFIX = "mixpanel.proxy."
#: What ``flags/`` and ``settings/`` calls get: an empty answer (no flags, default SDK
#: settings) or a refusal.
FLAG_ANSWERS = ("empty", "refuse")


@dataclass(frozen=True)
class ProxySettings:
    """The parsed ``mixpanel.proxy.*`` settings (see docs/proxy.md)."""

    #: Where the endpoints live: the SDK's ``api_host`` is the site's origin plus this. A plain
    #: word that ad-block lists do not match (no "mixpanel", "analytics", "track", "collect").
    prefix: str = "/lantern"
    #: Accept every event and property name (still checked for shape, size and identity).
    pass_through: bool = False
    #: ``flags/`` (feature flags) and ``settings/`` (remote SDK settings): ``empty`` or
    #: ``refuse``.
    flags: str = "empty"
    #: Largest body taken; the SDK's batches of 50 events in base64 are ~100 KiB.
    max_body_bytes: int = 512 * 1024


def _prefix(key: str, value: object) -> str:
    text = as_route_path(key, value).rstrip("/")
    if not text:
        raise MixpanelConfigurationError(
            f"{key} must name a path below the site's root, such as /lantern: the proxy's"
            " routes would capture the app's own"
        )
    return text


TABLE: tuple[Setting, ...] = (
    Setting(PREFIX + "prefix", "prefix", _prefix),
    Setting(PREFIX + "pass_through", "pass_through", as_bool),
    Setting(PREFIX + "flags", "flags", one_of(FLAG_ANSWERS)),
    Setting(PREFIX + "max_body_bytes", "max_body_bytes", positive_int(10 * 1024 * 1024)),
)


def parse_proxy_settings(settings: t.Mapping[str, object]) -> ProxySettings:
    """Parse ``mixpanel.proxy.*``; unknown keys under it are logged with the closest one."""
    values = parse_table(settings, TABLE, namespaces=(PREFIX,))
    proxy = ProxySettings(**values)  # type: ignore[arg-type]  # keys come from the table
    return proxy
