"""The relay endpoint: check, identify, limit, then track through ``request.mixpanel``.

Every answer has the same JSON shape, ``{"success", "event", "status_code", "error"}`` (a batch
answers with one such entry per item under ``results``), so a front end can handle errors
without parsing text. What the front end sends is never logged; refusals are counted in
:attr:`RelayState.stats` and logged by reason.
"""

from __future__ import annotations

import json
import re
import time
import typing as t
import uuid
from dataclasses import dataclass, field

from pyramid.csrf import check_csrf_origin, check_csrf_token
from pyramid.response import Response

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


DEVICE_ID = re.compile(r"[0-9a-f]{32}")
EVENT_KEYS = frozenset({"event", "properties", "time", "insert_id"})
PROFILE_KEYS = frozenset({"profile_set"})
MAX_LIST_ITEMS = 100
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
    new_device_id: str | None = None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


class RelayView:
    """``POST <mixpanel.relay.path>``: track what a front end sends, within the allow-lists."""

    def __init__(self, state: RelayState) -> None:
        self.state = state
        self.settings = state.settings

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
            items, batch = self._items(request)
            caller = self._caller(request)
            wait = self.state.buckets.take(self._client_key(caller), len(items))
            if wait:
                raise RelayRefusedError(429, "rate_limited", "too many events; retry later", wait)
        except RelayRefusedError as refused:
            return self._refuse(runtime, refused)

        track = request.mixpanel
        track.distinct_id = caller.distinct_id
        results = [self._one(track, item, caller) for item in items]
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
        if caller.new_device_id is not None:
            response.set_cookie(
                t.cast(str, self.settings.device_cookie),
                caller.new_device_id,
                max_age=self.settings.cookie_max_age,
                path="/",
                secure=self.settings.cookie_secure,
                httponly=True,
                samesite="Lax",
            )
        return response

    # -- the whole call -------------------------------------------------------------------

    def _check_csrf(self, request: Request) -> None:
        mode = self.settings.csrf
        if mode == "origin":
            ok = same_origin(
                request.headers.get("Origin"),
                request.headers.get("Referer"),
                request.host_url,
                self.settings.allowed_origins,
            )
        elif mode == "pyramid":
            ok = check_csrf_origin(request, raises=False) and check_csrf_token(
                request, raises=False
            )
        else:
            ok = True
        if not ok:
            raise RelayRefusedError(
                403, "csrf", "cross-site call refused (Origin / CSRF token check)"
            )

    def _items(self, request: Request) -> tuple[list[t.Any], bool]:
        if request.content_type != "application/json":
            raise RelayRefusedError(
                415, "content_type", "send JSON with Content-Type: application/json"
            )
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RelayRefusedError(413, "too_large", f"the body is larger than {limit} bytes")
        # Read at most one byte more than allowed: a chunked body has no Content-Length.
        raw = request.body_file.read(limit + 1)
        if len(raw) > limit:
            raise RelayRefusedError(413, "too_large", f"the body is larger than {limit} bytes")
        try:
            payload = json.loads(raw, parse_constant=_reject_constant)
        except ValueError:
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
        getter = self.settings.distinct_id
        distinct_id = getter(request) if getter is not None else request.mixpanel.distinct_id
        ip = client_ip(
            request.remote_addr,
            request.headers.get("X-Forwarded-For"),
            self.settings.trusted_proxies,
        )
        user_agent = request.user_agent
        device = (
            dict(device_properties(user_agent))
            if user_agent and self.settings.parse_user_agent
            else {}
        )
        if distinct_id is not None:
            return Caller(str(distinct_id), True, ip, device)
        cookie = self.settings.device_cookie
        if cookie is None:
            raise RelayRefusedError(
                401, "anonymous", "sign in first: anonymous calls are not relayed"
            )
        device_id = request.cookies.get(cookie, "")
        new_device_id = None
        if not DEVICE_ID.fullmatch(device_id):
            device_id = new_device_id = uuid.uuid4().hex
        device["$device_id"] = device_id
        return Caller(f"$device:{device_id}", False, ip, device, new_device_id)

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

    def _refuse(self, runtime: Runtime, refused: RelayRefusedError) -> Response:
        self.state.stats.add(refused.reason)
        runtime.log.warning(
            "mixpanel.relay_refused", reason=refused.reason, status=refused.status_code
        )
        response = self._json(
            _answer(False, None, refused.status_code, refused.error), refused.status_code
        )
        if refused.status_code == 429:
            response.headers["Retry-After"] = retry_after(refused.retry_after)
        elif refused.status_code == 405:
            response.headers["Allow"] = "POST"
        return response

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
