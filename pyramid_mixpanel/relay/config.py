"""Settings of the relay (``mixpanel.relay.*``), parsed and checked once at startup.

Event and property names in the allow-lists are checked against the configured catalogue here,
so a typo in ``development.ini`` stops the app from starting instead of refusing every call.
"""

from __future__ import annotations

import ipaddress
import re
import typing as t
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..catalog import Catalog, Event, Property, Section
from ..converters import (
    FALSE_WORDS,
    Setting,
    as_bool,
    as_callable,
    as_lines,
    as_positive_float,
    as_secret,
    parse_table,
    positive_int,
)
from ..exceptions import MixpanelConfigurationError

__all__ = ["RelaySettings", "origin_of", "parse_relay_settings"]

PREFIX = "mixpanel.relay."
CSRF_MODES = ("origin", "pyramid", "off")
# Letters, digits and "/._~-" only: "{x}", "*x" and the old-style ":x" are route patterns in
# Pyramid, and a pattern would capture the app's own URLs.
PLAIN_PATH = re.compile(r"/[A-Za-z0-9/._~-]*")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RelaySettings:
    """The parsed ``mixpanel.relay.*`` settings; ``docs/settings.md`` describes each key."""

    path: str = "/mixpanel/track"
    #: Events front ends may send, by Mixpanel name and by attribute name.
    events: t.Mapping[str, Event] = field(default_factory=dict)
    #: Event properties front ends may set, by Mixpanel name and by attribute name.
    event_properties: t.Mapping[str, Property] = field(default_factory=dict)
    #: Profile properties front ends may set for a signed-in user (empty: no profile updates).
    profile_properties: t.Mapping[str, Property] = field(default_factory=dict)
    distinct_id: t.Callable[[t.Any], str | None] | None = None
    trusted_proxies: tuple[Network, ...] = ()
    max_body_bytes: int = 64 * 1024
    max_batch: int = 50
    max_value_length: int = 1024
    rate: float = 5.0
    burst: int = 50
    max_clients: int = 10_000
    csrf: str = "origin"
    allowed_origins: frozenset[str] = frozenset()
    parse_user_agent: bool = True


def _allow_list(key: str, value: object, section: Section[t.Any]) -> dict[str, t.Any]:
    """Map Mixpanel names and attribute names of the listed members to the members."""
    allowed: dict[str, t.Any] = {}
    for item in as_lines(key, value):
        member = section.by_name.get(item) or section.by_attr.get(item)
        if member is None:
            raise MixpanelConfigurationError(
                f"{key}: {item!r} is not declared in {section.cls.__qualname__}"
                f" ({section.label}).{section.hint(item)}"
            )
        allowed[member.name] = member
        for attr, candidate in section.by_attr.items():
            if candidate == member:
                allowed[attr] = member
    return allowed


def _networks(key: str, value: object) -> tuple[Network, ...]:
    networks = []
    for item in as_lines(key, value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise MixpanelConfigurationError(
                f"{key}: {item!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(networks)


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, lower case, default port left out; else ``None``.

    Browsers never write the default port in ``Origin``, while a ``Host`` header may.
    """
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def _origins(key: str, value: object) -> frozenset[str]:
    origins = set()
    for item in as_lines(key, value):
        origin = origin_of(item)
        # The text origin_of() parsed (lower case): when it could, this parse cannot fail.
        if origin is None or urlsplit(item.lower()).path not in ("", "/"):
            raise MixpanelConfigurationError(
                f"{key}: {item!r} is not an origin such as https://www.example.com"
            )
        origins.add(origin)
    return frozenset(origins)


def _csrf(key: str, value: object) -> str:
    # Not a generic choice: "off" must mean the mode "off", not "setting not given".
    text = str(value).strip().lower()
    text = "off" if text in FALSE_WORDS else text
    if text not in CSRF_MODES:
        raise MixpanelConfigurationError(
            f"{key} must be one of {', '.join(CSRF_MODES)}, got {value!r}"
        )
    return text


def as_route_path(key: str, value: object) -> str:
    text = as_secret(key, value)
    if not text or not PLAIN_PATH.fullmatch(text):
        raise MixpanelConfigurationError(
            f"{key} must be a plain URL path starting with '/': letters, digits and / . _ ~ -"
            " (no {placeholders}, * or :name, which would capture the app's routes)"
        )
    return text


TABLE: tuple[Setting, ...] = tuple(
    Setting(PREFIX + name, name, convert)
    for name, convert in (
        ("path", as_route_path),
        ("distinct_id", as_callable),
        ("trusted_proxies", _networks),
        ("max_body_bytes", positive_int(10 * 1024 * 1024)),
        ("max_batch", positive_int(2000)),
        ("max_value_length", positive_int(64 * 1024)),
        ("rate", as_positive_float),
        ("burst", positive_int(100_000)),
        ("max_clients", positive_int(10_000_000)),
        ("csrf", _csrf),
        ("allowed_origins", _origins),
        ("parse_user_agent", as_bool),
    )
)
LISTS = ("events", "event_properties", "profile_properties")
#: The device cookie's settings before it moved to the core (``mixpanel.device_cookie`` …),
#: still read there as aliases.
CORE_ALIASES = ("device_cookie", "cookie_secret", "cookie_secure", "cookie_max_age")
DEFAULT_EVENTS = ("Page Viewed", "Button/Link Clicked")
DEFAULT_EVENT_PROPERTIES = ("Title", "Path", "$referrer")


def parse_relay_settings(settings: t.Mapping[str, object], catalog: Catalog) -> RelaySettings:
    """Parse ``mixpanel.relay.*`` from ``settings``, checking names against ``catalog``."""
    values = parse_table(
        settings,
        TABLE,
        namespaces=(PREFIX,),
        also_known=[PREFIX + name for name in (*LISTS, *CORE_ALIASES)],
    )

    defaults: dict[str, object] = {
        "events": DEFAULT_EVENTS,
        # The defaults that the configured class still declares (a subclass may drop one).
        "event_properties": [
            name for name in DEFAULT_EVENT_PROPERTIES if name in catalog.event_properties.by_name
        ],
        "profile_properties": (),
    }
    sections: dict[str, Section[t.Any]] = {
        "events": catalog.events,
        "event_properties": catalog.event_properties,
        "profile_properties": catalog.profile_properties,
    }
    for name in LISTS:
        raw = settings.get(PREFIX + name, defaults[name])
        values[name] = _allow_list(PREFIX + name, raw, sections[name])

    relay = RelaySettings(**values)  # type: ignore[arg-type]  # keys come from the tables
    if relay.burst < relay.max_batch:
        raise MixpanelConfigurationError(
            f"{PREFIX}burst ({relay.burst}) must be at least {PREFIX}max_batch"
            f" ({relay.max_batch}): a full batch could never pass the rate limit"
        )
    return relay
