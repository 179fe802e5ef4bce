"""The relay endpoint: check, identify, limit, then track through ``request.mixpanel``.

Every answer has the same JSON shape, ``{"success", "event", "status_code", "error"}`` (a batch
answers with one such entry per item under ``results``), so a front end can handle errors
without parsing text. What the front end sends is never logged; refusals are counted in
:attr:`RelayState.stats` and logged by reason.

Checks run cheapest first: method, Origin/CSRF, content type and size, identity, then one token
of the rate limit, all before the body is parsed or the user agent is; a refused call costs
neither.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t
from dataclasses import dataclass, field

import orjson
from pyramid.csrf import check_csrf_origin, check_csrf_token
from pyramid.response import Response
from pyramid.settings import aslist

from ..catalog import Name, closest_match
from ..counters import Counters
from ..exceptions import MixpanelError
from ..runtime import get_runtime
from ..track import IMPORT_AGE, INSERT_ID
from .client import client_ip, device_properties, same_origin
from .config import RelaySettings, origin_of
from .ratelimit import TokenBuckets, retry_after

if t.TYPE_CHECKING:
    from pyramid.request import Request

    from ..runtime import Runtime
    from ..track import MixpanelTrack

__all__ = ["Caller", "RelayRefusedError", "RelayState", "RelayView"]


EVENT_KEYS = frozenset({"event", "properties", "time", "insert_id"})
PROFILE_KEYS = frozenset({"profile_set"})
MAX_LIST_ITEMS = 100
# JavaScript's Number.MAX_SAFE_INTEGER: a larger integer did not leave a browser intact, and
# Mixpanel stores numbers as doubles.
MAX_SAFE_INTEGER = 2**53 - 1
#: What a CORS preflight from an allowed origin is told (10 minutes, POST with JSON and token).
PREFLIGHT = {
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Content-Type, X-CSRF-Token",
    "Access-Control-Max-Age": "600",
}
# A clock a few seconds ahead of ours is normal; an event "from the future" is not.
MAX_CLOCK_SKEW = 60.0


class RelayRefusedError(MixpanelError):
    """One item, or the whole call, is refused with ``status_code`` and a message."""

    def __init__(self, status_code: int, reason: str, error: str, retry_after: float = 0.0) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.reason = reason
        self.error = error
        self.retry_after = retry_after


@dataclass
class RelayState:
    """What the relay keeps between calls: its settings, rate-limit buckets and counters."""

    settings: RelaySettings
    buckets: TokenBuckets
    #: ``accepted`` items and refusals by reason (``csrf``, ``rate_limited``, ``invalid`` …).
    stats: Counters = field(default_factory=Counters)


@dataclass(frozen=True)
class Caller:
    """Who sent the call, as established by the server."""

    distinct_id: str
    identified: bool
    ip: str | None
    device: dict[str, str]


class RelayView:
    """``POST <mixpanel.relay.path>``: track what a front end sends, within the allow-lists."""

    #: The log event of a refused call, and the methods a 405 answer names.
    refused_event = "mixpanel.relay_refused"
    allowed_methods = "POST"

    def __init__(self, state: RelayState) -> None:
        self.state = state
        self.settings = state.settings
        # Pyramid's origin check takes trusted hosts as host[:port]: the allowed origins' own.
        self._trusted_hosts = [
            origin.split("://", 1)[1] for origin in sorted(self.settings.allowed_origins)
        ]

    def __call__(self, request: Request) -> Response:
        """Answer one call (and CORS preflights from ``mixpanel.relay.allowed_origins``)."""
        runtime = get_runtime(request.registry)
        origin = request.headers.get("Origin")
        cross = origin is not None and origin_of(origin) in self.settings.allowed_origins
        if request.method == "OPTIONS" and cross:
            response = Response(status=204)
            response.headers.update(PREFLIGHT)
        else:
            response = self._answer_call(request, runtime)
        if cross:
            # Another origin of the site, allowed by the settings: let its pages read the
            # answer and send the visitor's cookies (identity, device id).
            response.headers["Access-Control-Allow-Origin"] = t.cast(str, origin)
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.vary = (*(response.vary or ()), "Origin")
        return response

    def _answer_call(self, request: Request, runtime: Runtime) -> Response:
        try:
            if request.method != "POST":
                raise RelayRefusedError(405, "method", f"use POST, not {request.method}")
            self._check_csrf(request)
            raw = self._body(request)
            caller = self._caller(request)
            key = self._client_key(caller)
            # One token before the body is parsed: a client out of tokens costs no parsing, and
            # every parsed call costs at least a token (also when it is refused afterwards).
            self._take(key, 1)
            items, batch = self._items(raw)
            if len(items) > 1:
                self._take(key, len(items) - 1)
        except RelayRefusedError as refused:
            return self._refuse(runtime, refused)

        caller = dataclasses.replace(caller, device={**self._device(request), **caller.device})
        track = request.mixpanel
        if caller.identified:
            # Anonymous callers stay request.mixpanel's anonymous visitor (the device cookie).
            track.distinct_id = caller.distinct_id
        # X-Mixpanel-* headers set request.mixpanel's global properties, and any client can
        # send them: relayed messages carry only what the allow-lists let the body set and
        # what the server establishes. (Restored after: other code of this request may track.)
        header_props, track.global_event_props = track.global_event_props, {}
        try:
            results = [self._one(track, item, caller) for item in items]
        finally:
            track.global_event_props = header_props
        refused_items = [result for result in results if not result["success"]]
        self.state.stats.add("accepted", len(results) - len(refused_items))
        if refused_items:
            self.state.stats.add("invalid", len(refused_items))
            runtime.log.warning(
                "mixpanel.relay_refused", reason="invalid", status=400, items=len(refused_items)
            )
        if batch:
            status = 200
            if refused_items:
                status = 400 if len(refused_items) == len(results) else 207
            body: dict[str, t.Any] = {
                "success": not refused_items,
                "status_code": status,
                "error": (
                    f"{len(refused_items)} of {len(results)} items were refused"
                    if refused_items
                    else None
                ),
                "results": results,
            }
        else:
            body = results[0]
            status = body["status_code"]
        response = self._json(body, status)
        return response

    # -- the whole call -------------------------------------------------------------------

    def _check_csrf(self, request: Request) -> None:
        mode = self.settings.csrf
        if mode == "origin":
            ok = self._same_origin(request)
        elif mode == "pyramid":
            ok = self._pyramid_origin(request) and check_csrf_token(request, raises=False)
        else:
            ok = True
        if not ok:
            raise RelayRefusedError(
                403, "csrf", "cross-site call refused (Origin / CSRF token check)"
            )

    def _same_origin(self, request: Request) -> bool:
        """The call's Origin (or Referer) is the app's own or an allowed one."""
        return same_origin(
            request.headers.get("Origin"),
            request.headers.get("Referer"),
            request.host_url,
            self.settings.allowed_origins,
        )

    def _pyramid_origin(self, request: Request) -> bool:
        # Passing trusted origins replaces pyramid.csrf_trusted_origins: both count. (A new
        # list each time: Pyramid appends the request's own host to it.)
        trusted = aslist(request.registry.settings.get("pyramid.csrf_trusted_origins", []))
        trusted.extend(self._trusted_hosts)
        try:
            return bool(check_csrf_origin(request, trusted_origins=trusted, raises=False))
        except ValueError:  # Pyramid's urlparse of a malformed Origin, e.g. "https://["
            return False

    def _body(self, request: Request) -> bytes:
        if request.content_type != "application/json":
            raise RelayRefusedError(
                415, "content_type", "send JSON with Content-Type: application/json"
            )
        return self._read(request, self.settings.max_body_bytes)

    @staticmethod
    def _read(request: Request, limit: int) -> bytes:
        """The body, refused with 413 when longer than ``limit`` bytes."""
        if request.content_length is not None and request.content_length > limit:
            raise RelayRefusedError(413, "too_large", f"the body is larger than {limit} bytes")
        # Read at most one byte more than allowed: a chunked body has no Content-Length.
        raw = request.body_file.read(limit + 1)
        if len(raw) > limit:
            raise RelayRefusedError(413, "too_large", f"the body is larger than {limit} bytes")
        return t.cast(bytes, raw)

    def _items(self, raw: bytes) -> tuple[list[t.Any], bool]:
        try:
            # orjson refuses what Python's json lets through and the relay must not: nesting
            # deeper than 1024 (json recurses until RecursionError), NaN and Infinity, numbers
            # that overflow a double (1e400), lone surrogates and invalid UTF-8.
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RelayRefusedError(400, "bad_json", "the body is not valid JSON") from None
        if isinstance(payload, dict) and set(payload) == {"batch"}:
            items = payload["batch"]
            if not isinstance(items, list) or not items:
                raise RelayRefusedError(400, "bad_batch", "batch must be a non-empty list of items")
            if len(items) > self.settings.max_batch:
                raise RelayRefusedError(
                    413, "too_large", f"a batch holds at most {self.settings.max_batch} items"
                )
            return items, True
        if not isinstance(payload, dict):
            raise RelayRefusedError(
                400, "bad_item", 'send one item {"event": …} or {"batch": [...]}'
            )
        return [payload], False

    def _caller(self, request: Request) -> Caller:
        """Who calls; the user agent is parsed later, once the call passed every check."""
        track = request.mixpanel
        distinct_id = self._user(request)
        ip = client_ip(
            request.remote_addr,
            request.headers.get("X-Forwarded-For"),
            self.settings.trusted_proxies,
        )
        if distinct_id is not None:
            return Caller(distinct_id, True, ip, {})
        if track.device_id is None:
            raise RelayRefusedError(
                401, "anonymous", "sign in first: anonymous calls are not relayed"
            )
        # The device cookie's visitor: request.mixpanel adds $device_id to every event and
        # sets the cookie on the response when it drew a new id.
        return Caller(t.cast(str, track.distinct_id), False, ip, {})

    def _user(self, request: Request) -> str | None:
        """The signed-in user, as the server knows it (``mixpanel.relay.distinct_id``)."""
        getter = self.settings.distinct_id
        user = getter(request) if getter is not None else request.mixpanel.user_id
        return None if user is None else str(user)

    def _device(self, request: Request) -> dict[str, str]:
        user_agent = request.user_agent
        if not (user_agent and self.settings.parse_user_agent):
            return {}
        return dict(device_properties(user_agent))

    def _take(self, key: str, cost: int) -> None:
        wait = self.state.buckets.take(key, cost)
        if wait:
            raise RelayRefusedError(429, "rate_limited", "too many events; retry later", wait)

    @staticmethod
    def _client_key(caller: Caller) -> str:
        # Anonymous visitors are limited per address: dropping the cookie must not reset it.
        if caller.identified:
            return f"user:{caller.distinct_id}"
        return f"ip:{caller.ip}"

    # -- one item -------------------------------------------------------------------------

    def _one(self, track: MixpanelTrack, item: object, caller: Caller) -> dict[str, t.Any]:
        name = item.get("event") if isinstance(item, dict) else None
        label = name if isinstance(name, str) else None
        try:
            if not isinstance(item, dict):
                raise RelayRefusedError(400, "invalid", "each item must be a JSON object")
            if "profile_set" in item:
                label = "$set"
                self._profile_set(track, item, caller)
            else:
                self._track(track, item, caller)
        except RelayRefusedError as refused:
            return _answer(False, label, refused.status_code, refused.error)
        except (TypeError, ValueError) as exc:
            return _answer(False, label, 400, str(exc))
        return _answer(True, label, 200, None)

    def _track(self, track: MixpanelTrack, item: dict[str, t.Any], caller: Caller) -> None:
        extra = set(item) - EVENT_KEYS
        if extra:
            raise RelayRefusedError(
                400, "invalid", f"unknown keys {sorted(extra)}; use {sorted(EVENT_KEYS)}"
            )
        name = item.get("event")
        if not isinstance(name, str):
            raise RelayRefusedError(400, "invalid", "event must be a string")
        event = self.settings.events.get(name)
        if event is None:
            raise RelayRefusedError(400, "invalid", self._not_allowed("event", name, track))
        properties = item.get("properties", {})
        if not isinstance(properties, dict):
            raise RelayRefusedError(400, "invalid", "properties must be a JSON object")
        props = {}
        for key, value in properties.items():
            prop = self.settings.event_properties.get(key)
            if prop is None:
                raise RelayRefusedError(400, "invalid", self._not_allowed("property", key, track))
            props[prop] = self._value(key, value)
        track.track(
            event,
            props,
            ip=caller.ip,
            device=caller.device,
            time=self._time(item.get("time")),
            insert_id=self._insert_id(item.get("insert_id")),
        )

    def _profile_set(self, track: MixpanelTrack, item: dict[str, t.Any], caller: Caller) -> None:
        extra = set(item) - PROFILE_KEYS
        if extra:
            raise RelayRefusedError(
                400, "invalid", f"a profile_set item takes no other keys: {sorted(extra)}"
            )
        if not self.settings.profile_properties:
            raise RelayRefusedError(
                403, "invalid", "profile updates are not relayed (none allowed)"
            )
        if not caller.identified:
            raise RelayRefusedError(403, "invalid", "profile updates need a signed-in user")
        values = item["profile_set"]
        if not isinstance(values, dict) or not values:
            raise RelayRefusedError(400, "invalid", "profile_set must be a non-empty JSON object")
        props = {}
        for key, value in values.items():
            prop = self.settings.profile_properties.get(key)
            if prop is None:
                hint = _hint(key, self.settings.profile_properties)
                raise RelayRefusedError(
                    400,
                    "invalid",
                    f"profile property {key!r} is not allowed from front ends"
                    f" (mixpanel.relay.profile_properties).{hint}",
                )
            props[prop] = self._value(key, value)
        meta = {}
        if caller.ip is not None:
            meta[track.profile_meta_properties.dollar_ip] = caller.ip
        track.profile_set(props, meta=meta)

    def _not_allowed(self, kind: str, name: str, track: MixpanelTrack) -> str:
        catalog = track._catalog
        section = catalog.events if kind == "event" else catalog.event_properties
        setting = "mixpanel.relay.events" if kind == "event" else "mixpanel.relay.event_properties"
        allowed = self.settings.events if kind == "event" else self.settings.event_properties
        if name in section.by_name or name in section.by_attr:
            return f"{kind} {name!r} is declared but not allowed from front ends ({setting})"
        return f"{kind} {name!r} is not declared for front ends.{_hint(name, allowed)}"

    def _value(self, key: str, value: object) -> object:
        if isinstance(value, list):
            if len(value) > MAX_LIST_ITEMS:
                raise RelayRefusedError(
                    400, "invalid", f"{key!r} holds more than {MAX_LIST_ITEMS} values"
                )
            return [self._scalar(key, item) for item in value]
        return self._scalar(key, value)

    def _scalar(self, key: str, value: object) -> object:
        if isinstance(value, str) and len(value) > self.settings.max_value_length:
            raise RelayRefusedError(
                400,
                "invalid",
                f"{key!r} is longer than {self.settings.max_value_length} characters",
            )
        if type(value) is int and abs(value) > MAX_SAFE_INTEGER:
            raise RelayRefusedError(400, "invalid", f"{key!r} is a number out of range")
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        raise RelayRefusedError(
            400, "invalid", f"{key!r} must be a string, number, boolean or null"
        )

    @staticmethod
    def _time(value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RelayRefusedError(400, "invalid", "time must be epoch seconds or milliseconds")
        seconds = value / 1000 if value > 1e11 else float(value)
        now = time.time()
        if not now - IMPORT_AGE <= seconds <= now + MAX_CLOCK_SKEW:
            raise RelayRefusedError(400, "invalid", "time must be within the last 5 days")
        return seconds

    @staticmethod
    def _insert_id(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not INSERT_ID.fullmatch(value):
            raise RelayRefusedError(
                400, "invalid", "insert_id must be 1 to 36 letters, digits or '-'"
            )
        return value

    # -- answers --------------------------------------------------------------------------

    def _refuse(
        self, runtime: Runtime, refused: RelayRefusedError, verbose: bool = False
    ) -> Response:
        """Count, log (the reason, never the call's content) and answer a refused call."""
        self.state.stats.add(refused.reason)
        runtime.log.warning(self.refused_event, reason=refused.reason, status=refused.status_code)
        response = self._refusal(refused, verbose)
        if refused.status_code == 429:
            # The client (relay.js, the SDK's batcher) waits this long, then sends again.
            response.headers["Retry-After"] = retry_after(refused.retry_after)
        elif refused.status_code == 405:
            response.headers["Allow"] = self.allowed_methods
        return response

    def _refusal(self, refused: RelayRefusedError, verbose: bool) -> Response:
        """The body of a refusal: the relay's JSON answer."""
        return self._json(
            _answer(False, None, refused.status_code, refused.error), refused.status_code
        )

    @staticmethod
    def _json(body: dict[str, t.Any], status: int) -> Response:
        response = Response(json_body=body, status=status, charset="utf-8")
        response.cache_control = "no-store"
        return response


def _hint(wanted: str, allowed: t.Mapping[str, Name]) -> str:
    """Suggest the allowed name nearest to ``wanted``, matching Mixpanel and attribute names."""
    match = closest_match(wanted, allowed)
    return f" Did you mean {allowed[match].name!r}?" if match is not None else ""


def _answer(success: bool, event: str | None, status: int, error: str | None) -> dict[str, t.Any]:
    return {"success": success, "event": event, "status_code": status, "error": error}
