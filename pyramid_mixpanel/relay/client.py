"""Who is calling: client IP behind trusted proxies, device from the user agent, origin check."""

from __future__ import annotations

import functools
import ipaddress
import typing as t

from .._extras import require
from .config import Network, origin_of

__all__ = ["client_ip", "device_properties", "same_origin"]


# Longer strings are not user agents a browser sends; parsing them only costs time.
MAX_USER_AGENT = 512
# ua-parser's family for what it does not recognise; Mixpanel is better off without it.
UNKNOWN = "Other"


def client_ip(
    remote_addr: str | None, forwarded_for: str | None, trusted: t.Sequence[Network]
) -> str | None:
    """The address of the client, for Mixpanel's geolocation.

    ``X-Forwarded-For`` is only believed as far as it was written by ``trusted`` proxies: the
    hops are read from the right (the nearest first) and the first one that is not a trusted
    proxy is the client. Without trusted proxies the header is ignored, since any client can
    send one. ``None`` when no valid address is known (Mixpanel then does not geolocate).
    """
    hops = [hop.strip() for hop in forwarded_for.split(",")] if forwarded_for else []
    hops.append(remote_addr or "")
    found: str | None = None
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return found
        found = str(address)
        if not any(address in network for network in trusted):
            return found
    return found


@functools.lru_cache(maxsize=4096)
def device_properties(user_agent: str) -> dict[str, str]:
    """Mixpanel's ``$browser``, ``$browser_version``, ``$os`` and ``$device`` for a user agent.

    Uses the maintained ``ua-parser`` rules; unknown parts are left out rather than sent as
    "Other". Cached: a site sees few distinct user agents.
    """
    ua_parser = require("ua_parser", "relay", "pyramid_mixpanel.relay.client.device_properties")
    result = ua_parser.parse(user_agent[:MAX_USER_AGENT])
    found: dict[str, str] = {}
    agent, system, device = result.user_agent, result.os, result.device
    if agent is not None and agent.family != UNKNOWN:
        found["$browser"] = agent.family
        if agent.major:
            found["$browser_version"] = ".".join(p for p in (agent.major, agent.minor) if p)
    if system is not None and system.family != UNKNOWN:
        found["$os"] = system.family
    if device is not None and device.family != UNKNOWN:
        found["$device"] = device.family
    return found


def same_origin(
    origin: str | None, referer: str | None, own: str, allowed: t.Collection[str]
) -> bool:
    """True when the call comes from the app's own pages (or an allowed origin).

    Browsers send ``Origin`` with every POST; ``Referer`` is the fallback for old ones. A call
    with neither, or with ``Origin: null`` (sandboxed frames, file pages), is refused.
    """
    source = None
    if origin:
        source = origin_of(origin)
    elif referer:
        source = origin_of(referer)
    return source is not None and (source == origin_of(own) or source in allowed)
