"""The proxy's endpoints: decode what the SDK sent, apply the relay's rules, track it.

Nothing the browser sends is forwarded as it is. Each item is rebuilt from what the rules allow:
the event or profile property names (the relay's allow-lists, or any name in pass-through
mode), the properties the SDK adds on its own (:data:`SDK_EVENT_PROPERTIES`), values of the
shapes Mixpanel takes. The token must be the app's; identity, client IP and device come from
the server; the result goes through ``request.mixpanel`` into the app's delivery (batched,
spooled, retried) like every server-side event.

The browser's claims about identity are checked, never believed: an item that names a user
(``$user_id``, or an identified ``distinct_id``) is only taken when the server has signed in
that same user. Anonymous items take the server's device cookie (``mixpanel.device_cookie``),
or without one the SDK's own ``$device_id``.
"""

from __future__ import annotations

import typing as t

from pyramid.response import Response

from ..identity import DEVICE_ID
from ..log import Log
from ..relay.client import client_ip
from ..relay.view import RelayRefusedError, RelayState, RelayView, _hint
from .config import ProxySettings
from .protocol import Call, decode_call, encode_answer

if t.TYPE_CHECKING:
    from pyramid.request import Request

    from ..runtime import Runtime
    from ..track import MixpanelTrack

__all__ = ["ENDPOINTS", "SDK_EVENT_PROPERTIES", "ProxyView"]

#: The SDK's routes (``DEFAULT_API_ROUTES`` of mixpanel-core.js) this proxy answers.
ENDPOINTS = frozenset({"track", "engage", "groups", "flags", "settings", "record"})
#: Properties the SDK adds to events on its own (``_.info.properties``, marketing parameters,
#: ``time_event``, page views): kept when their values have a shape Mixpanel takes.
SDK_EVENT_PROPERTIES = frozenset(
    {
        "$os",
        "$browser",
        "$browser_version",
        "$device",
        "$referrer",
        "$referring_domain",
        "$initial_referrer",
        "$initial_referring_domain",
        "$current_url",
        "$screen_height",
        "$screen_width",
        "$search_engine",
        "$duration",
        "$anon_distinct_id",
        "mp_lib",
        "$lib_version",
        "mp_keyword",
        "mp_loader",
        "mp_sent_by_lib_version",
        "mp_name_tag",
        "$mp_replay_id",
        "$captured_for_heatmap",
        "$people_distinct_id",
        "current_page_title",
        "current_domain",
        "current_url_path",
        "current_url_protocol",
        "current_url_search",
        # Campaign parameters and click ids (CAMPAIGN_KEYWORDS and CLICK_IDS in utils.js).
        *(
            f"utm_{name}"
            for name in (
                "source",
                "medium",
                "campaign",
                "content",
                "term",
                "id",
                "source_platform",
                "campaign_id",
                "creative_format",
                "marketing_tactic",
            )
        ),
        "dclid",
        "fbclid",
        "gclid",
        "ko_click_id",
        "li_fat_id",
        "msclkid",
        "sccid",
        "ttclid",
        "twclid",
        "wbraid",
    }
)
#: Events the SDK sends on its own: page views (``track_pageview``).
SDK_EVENTS = frozenset({"$mp_web_page_view"})
#: identify()'s event, rebuilt by the server in the project's ID merge mode.
IDENTIFY = "$identify"
#: Identity and bookkeeping fields of an event, handled apart from its properties.
EVENT_FIELDS = frozenset(
    {"token", "distinct_id", "$device_id", "$user_id", "$had_persisted_distinct_id", "time"}
)
#: What people.set() adds to ``$set`` (``_.info.people_properties``, the referrer info).
SDK_PROFILE_PROPERTIES = frozenset(
    {"$os", "$browser", "$browser_version", "$initial_referrer", "$initial_referring_domain"}
)
PROFILE_FIELDS = frozenset(
    {"$token", "$distinct_id", "$device_id", "$user_id", "$had_persisted_distinct_id"}
)
#: Profile operations a front end may send. ``$delete`` (people.delete_user) is refused: a
#: page should not be able to erase a profile.
PROFILE_OPERATIONS = frozenset(
    {"$set", "$set_once", "$unset", "$add", "$append", "$union", "$remove"}
)
GROUP_FIELDS = frozenset({"$token", "$group_key", "$group_id"})
GROUP_OPERATIONS = frozenset({"$set", "$set_once", "$unset", "$union", "$remove"})
DEVICE_PREFIX = "$device:"
#: Names the SDK reserves for its own properties.
SDK_PREFIXES = ("$", "mp_")
#: What flags/ and settings/ answer with mixpanel.proxy.flags = empty: no flags, and no
#: remote SDK settings (the page's own stand).
EMPTY_ANSWERS: dict[str, dict[str, t.Any]] = {"flags": {"flags": {}}, "settings": {}}


class ProxyView(RelayView):
    """``<prefix>/<endpoint>/``: one endpoint of the SDK's API, under the relay's rules."""

    refused_event = "mixpanel.proxy_refused"
    allowed_methods = "GET, POST"

    def __init__(
        self, state: RelayState, proxy: ProxySettings, token: str | None, log: Log
    ) -> None:
        super().__init__(state)
        self.proxy = proxy
        #: The app's project token (``None`` in testing mode: no token to compare with).
        self._token = token
        self._log = log

    def _answer_call(self, request: Request, runtime: Runtime) -> Response:
        endpoint = request.matchdict["endpoint"]
        # flags/ and settings/ are read with fetch() as JSON, whatever the query says.
        verbose = request.GET.get("verbose") == "1" or endpoint in EMPTY_ANSWERS
        try:
            if endpoint not in ENDPOINTS:
                raise RelayRefusedError(404, "endpoint", f"no endpoint {endpoint!r} here")
            if endpoint in EMPTY_ANSWERS:
                return self._flags(endpoint)
            if endpoint == "record":
                raise RelayRefusedError(
                    403,
                    "recording",
                    "session recordings are not proxied: send them to Mixpanel directly"
                    " (api_hosts: {record: ...})",
                )
            if request.method not in ("POST", "GET"):
                raise RelayRefusedError(405, "method", f"use POST or GET, not {request.method}")
            self._check_origin(request)
            body = None
            if request.method == "POST":
                body = self._read(request, self.proxy.max_body_bytes)
            user = self._user(request)
            ip = client_ip(
                request.remote_addr,
                request.headers.get("X-Forwarded-For"),
                self.settings.trusted_proxies,
            )
            # One token before the payload is decoded, the rest once the items are counted.
            key = f"user:{user}" if user is not None else f"ip:{ip}"
            self._take(key, 1)
            call = decode_call(
                request.method,
                request.query_string,
                request.content_type,
                body,
                self.settings.max_batch,
            )
            if len(call.items) > 1:
                self._take(key, len(call.items) - 1)
            self._check_token(call, endpoint)
        except RelayRefusedError as refused:  # a ProtocolError too
            return self._refuse(runtime, refused, verbose)
        return self._deliver(request, runtime, endpoint, call, user, ip)

    # -- the whole call -------------------------------------------------------------------

    def _flags(self, endpoint: str) -> Response:
        if self.proxy.flags == "refuse":
            raise RelayRefusedError(
                403, "flags", f"{endpoint}/ is not served here (mixpanel.proxy.flags = refuse)"
            )
        return self._json(EMPTY_ANSWERS[endpoint], 200)

    def _check_origin(self, request: Request) -> None:
        # The SDK cannot send Pyramid's CSRF token with sendBeacon (no headers), so the
        # proxy checks the Origin (or Referer) whenever mixpanel.relay.csrf is not off.
        if self.settings.csrf != "off" and not self._same_origin(request):
            raise RelayRefusedError(403, "csrf", "cross-site call refused (Origin / Referer check)")

    def _check_token(self, call: Call, endpoint: str) -> None:
        field = "token" if endpoint == "track" else "$token"
        for item in call.items:
            source = item.get("properties") if isinstance(item, dict) and field == "token" else item
            if not isinstance(source, dict):
                continue  # not an object: refused on its own, as invalid
            token = source.get(field)
            if not isinstance(token, str) or (self._token is not None and token != self._token):
                # Never forwarded, never logged: it may be another project's.
                raise RelayRefusedError(
                    403, "foreign_token", "the payload's token is not this project's"
                )

    # -- the items ------------------------------------------------------------------------

    def _deliver(
        self,
        request: Request,
        runtime: Runtime,
        endpoint: str,
        call: Call,
        user: str | None,
        ip: str | None,
    ) -> Response:
        track = request.mixpanel
        device = self._device(request)
        geo_ip = ip if call.geolocate else None
        server_device_id = track.device_id
        handle = {"track": self._event, "engage": self._profile, "groups": self._group}[endpoint]
        # X-Mixpanel-* headers set request.mixpanel's global properties, and any client can
        # send them: proxied messages carry only what the rules let through (restored after).
        header_props, track.global_event_props = track.global_event_props, {}
        refusals: list[RelayRefusedError] = []
        try:
            for item in call.items:
                try:
                    if not isinstance(item, dict):
                        raise RelayRefusedError(400, "invalid", "each item must be a JSON object")
                    handle(track, item, user, server_device_id, geo_ip, device)
                except RelayRefusedError as refused:
                    refusals.append(refused)
                except (TypeError, ValueError) as exc:
                    refusals.append(RelayRefusedError(400, "invalid", str(exc)))
        finally:
            track.global_event_props = header_props
            track.distinct_id = user
            track.device_id = server_device_id
        accepted = len(call.items) - len(refusals)
        self.state.stats.add("accepted", accepted)
        for refusal in refusals:
            self.state.stats.add(refusal.reason)
            runtime.log.warning(
                "mixpanel.proxy_refused",
                endpoint=endpoint,
                reason=refusal.reason,
                status=refusal.status_code,
            )
        if not refusals:
            return self._sdk_answer(call.verbose, True, None, 200)
        error = f"{len(refusals)} of {len(call.items)} items were refused: {refusals[0].error}"
        if accepted:
            # The SDK drops a batch on any answer but 5xx, 429 and 413: say 200, with why.
            return self._sdk_answer(call.verbose, True, error, 200)
        return self._sdk_answer(call.verbose, False, error, refusals[0].status_code)

    def _identity(
        self,
        track: MixpanelTrack,
        user: str | None,
        claimed: t.Iterable[object],
        sdk_device_id: object,
        server_device_id: str | None,
    ) -> None:
        """Set ``track``'s identity for one item from the server's, after checking the claims."""
        for name in claimed:
            if name is None or (isinstance(name, str) and name.startswith(DEVICE_PREFIX)):
                continue
            if name == sdk_device_id:  # the SDK's anonymous id, without the prefix
                continue
            if user is None:
                raise RelayRefusedError(
                    403,
                    "identity",
                    "the browser names a user the server has not signed in"
                    " (call mixpanel.reset() when the user signs out)",
                )
            if name != user:
                raise RelayRefusedError(
                    403, "identity", "the browser names another user than the signed-in one"
                )
        device_id = server_device_id
        if device_id is None and isinstance(sdk_device_id, str):
            if not DEVICE_ID.fullmatch(sdk_device_id):
                raise RelayRefusedError(400, "invalid", "$device_id must be a UUID")
            device_id = sdk_device_id
        if user is None and device_id is None:
            raise RelayRefusedError(
                401, "anonymous", "no device id: anonymous calls need the SDK's $device_id"
            )
        track.distinct_id = user
        track.device_id = device_id

    def _event(
        self,
        track: MixpanelTrack,
        item: dict[str, t.Any],
        user: str | None,
        server_device_id: str | None,
        ip: str | None,
        device: dict[str, str],
    ) -> None:
        if set(item) - {"event", "properties"}:
            raise RelayRefusedError(400, "invalid", "an event has only event and properties")
        name, properties = item.get("event"), item.get("properties")
        if not isinstance(name, str) or not name:
            raise RelayRefusedError(400, "invalid", "event must be a non-empty string")
        if not isinstance(properties, dict):
            raise RelayRefusedError(400, "invalid", "properties must be a JSON object")
        self._identity(
            track,
            user,
            (properties.get("$user_id"), properties.get("distinct_id")),
            properties.get("$device_id"),
            server_device_id,
        )
        if not (self.proxy.pass_through or name in SDK_EVENTS or name == IDENTIFY):
            event = self.settings.events.get(name)
            if event is None:
                raise RelayRefusedError(400, "invalid", self._not_allowed("event", name, track))
            name = event.name
        values: dict[str, t.Any] = {}
        dropped: list[str] = []
        for key, value in properties.items():
            if key in EVENT_FIELDS or key == "$insert_id":
                continue
            if key in SDK_EVENT_PROPERTIES or self.proxy.pass_through:
                values[key] = self._value(key, value)
                continue
            prop = self.settings.event_properties.get(key)
            if prop is not None:
                values[prop.name] = self._value(key, value)
            elif key.startswith(SDK_PREFIXES):
                # A property of the SDK's own that this list does not know yet (a newer SDK):
                # left out and counted, rather than losing the event.
                dropped.append(key)
            else:
                raise RelayRefusedError(400, "invalid", self._not_allowed("property", key, track))
        if name == IDENTIFY:
            # The SDK's identify(): the server links the device to the signed-in user in the
            # project's ID merge mode (_identity made sure it is that user).
            if user is not None and track.device_id is not None:
                located = {**values, **device, **({} if ip is None else {"ip": ip})}
                track._link_device(user, located)
                track._after_message()
            self._dropped(dropped)
            return
        track._emit_event(
            name,
            track._need_distinct_id("track"),
            values,
            time=self._time(properties.get("time")),
            ip=ip,
            device=device,
            insert_id=self._insert_id(properties.get("$insert_id")),
        )
        track._after_message()
        self._dropped(dropped)

    def _dropped(self, names: list[str]) -> None:
        if names:
            self.state.stats.add("dropped_properties", len(names))
            # Names only (they are the SDK's own), never values.
            self._log.warning("mixpanel.proxy_dropped_properties", names=sorted(names))

    def _profile(
        self,
        track: MixpanelTrack,
        item: dict[str, t.Any],
        user: str | None,
        server_device_id: str | None,
        ip: str | None,
        device: dict[str, str],
    ) -> None:
        operation = self._operation(item, PROFILE_FIELDS, PROFILE_OPERATIONS, "$delete")
        if user is None:
            raise RelayRefusedError(403, "identity", "profile updates need a signed-in user")
        self._identity(
            track,
            user,
            (item.get("$distinct_id"), item.get("$user_id")),
            item.get("$device_id"),
            server_device_id,
        )
        dropped: list[str] = []
        values = self._operand(operation, item[operation], self._profile_name, dropped)
        if operation == "$set" and isinstance(values, dict):
            # The server's reading of the user agent wins over the page's.
            values.update({k: v for k, v in device.items() if k in SDK_PROFILE_PROPERTIES})
        message: dict[str, t.Any] = {"$distinct_id": user, operation: values}
        if ip is not None:
            message["$ip"] = ip
        track._update("people", message, None)
        track._after_message()
        self._dropped(dropped)

    def _group(
        self,
        track: MixpanelTrack,
        item: dict[str, t.Any],
        user: str | None,
        server_device_id: str | None,
        ip: str | None,
        device: dict[str, str],
    ) -> None:
        operation = self._operation(item, GROUP_FIELDS, GROUP_OPERATIONS, "$delete")
        if not self.proxy.pass_through:
            raise RelayRefusedError(
                403, "invalid", "group updates are relayed only with mixpanel.proxy.pass_through"
            )
        if user is None:
            raise RelayRefusedError(403, "identity", "group updates need a signed-in user")
        key, group_id = item.get("$group_key"), item.get("$group_id")
        if not isinstance(key, str) or not key:
            raise RelayRefusedError(400, "invalid", "$group_key must be a non-empty string")
        if isinstance(group_id, bool) or not isinstance(group_id, (str, int)):
            raise RelayRefusedError(400, "invalid", "$group_id must be a string or a number")
        values = self._operand(operation, item[operation], self._any_name, [])
        message = {"$group_key": key, "$group_id": group_id, operation: values}
        track._update("groups", message, None)
        track._after_message()

    # -- parts of an item -----------------------------------------------------------------

    @staticmethod
    def _operation(
        item: dict[str, t.Any], fields: frozenset[str], operations: frozenset[str], refused: str
    ) -> str:
        found = [key for key in item if key not in fields]
        if refused in found:
            raise RelayRefusedError(403, "invalid", f"{refused} is not accepted from front ends")
        if len(found) != 1 or found[0] not in operations:
            raise RelayRefusedError(
                400,
                "invalid",
                f"an update has one operation of {', '.join(sorted(operations))};"
                f" got {sorted(found)}",
            )
        return found[0]

    def _operand(
        self,
        operation: str,
        operand: object,
        name_of: t.Callable[[str], str | None],
        dropped: list[str],
    ) -> dict[str, t.Any] | list[str]:
        """Check an update's values.

        Names of the SDK's own that this app does not take are left out, into ``dropped``.
        """
        if operation == "$unset":
            if not isinstance(operand, list) or not all(isinstance(n, str) for n in operand):
                raise RelayRefusedError(400, "invalid", "$unset takes a list of names")
            names = [name_of(name) for name in operand]
            dropped.extend(name for name, kept in zip(operand, names, strict=True) if kept is None)
            return [name for name in names if name is not None]
        if not isinstance(operand, dict) or not operand:
            raise RelayRefusedError(400, "invalid", f"{operation} takes a non-empty object")
        values: dict[str, t.Any] = {}
        for key, value in operand.items():
            name = name_of(key)
            if name is None:
                dropped.append(key)
                continue
            checked = self._value(key, value)
            if operation == "$add" and (
                isinstance(checked, bool) or not isinstance(checked, (int, float))
            ):
                raise RelayRefusedError(400, "invalid", f"$add takes numbers; {key!r} is not")
            if operation == "$union" and not isinstance(checked, list):
                raise RelayRefusedError(400, "invalid", f"$union takes lists; {key!r} is not")
            values[name] = checked
        if not values:
            raise RelayRefusedError(400, "invalid", f"{operation} has nothing this app takes")
        return values

    def _profile_name(self, key: str) -> str | None:
        if key in SDK_PROFILE_PROPERTIES or self.proxy.pass_through:
            return key
        prop = self.settings.profile_properties.get(key)
        if prop is None and key.startswith(SDK_PREFIXES):
            return None
        if prop is None:
            hint = _hint(key, self.settings.profile_properties)
            raise RelayRefusedError(
                400,
                "invalid",
                f"profile property {key!r} is not allowed from front ends"
                f" (mixpanel.relay.profile_properties).{hint}",
            )
        return prop.name

    @staticmethod
    def _any_name(key: str) -> str | None:
        return key

    # -- answers --------------------------------------------------------------------------

    def _refusal(self, refused: RelayRefusedError, verbose: bool) -> Response:
        """The body of a refusal, as the SDK reads it (JSON with ``verbose``, else ``0``)."""
        return self._sdk_answer(verbose, False, refused.error, refused.status_code)

    @staticmethod
    def _sdk_answer(verbose: bool, success: bool, error: str | None, status: int) -> Response:
        body, content_type = encode_answer(verbose, success, error)
        response = Response(body=body, status=status, content_type=content_type)
        response.cache_control = "no-store"
        return response
