"""The relay against hostile input: what any visitor can send must never do harm.

Headers, cookies and bodies come from whoever calls: none of them may add a property outside
the allow-lists, pick an identity, make the relay answer 5xx or make a refused call cost a JSON
parse or a user-agent parse. Reproductions of issue 13 first, then property-based tests.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import sys
import typing as t
from collections.abc import Callable

import orjson
import pytest
import webtest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.exceptions import ConfigurationError
from pyramid.request import Request
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory

from pyramid_mixpanel import (
    Event,
    EventProperties,
    Events,
    MixpanelConfigurationError,
    MixpanelTrack,
    ProfileProperties,
    Property,
    get_runtime,
)
from pyramid_mixpanel.catalog import Catalog
from pyramid_mixpanel.identity import DeviceCookie
from pyramid_mixpanel.relay import view as view_module
from pyramid_mixpanel.relay.client import device_properties
from pyramid_mixpanel.relay.config import TABLE, parse_relay_settings
from pyramid_mixpanel.settings import MixpanelSettings, parse_settings
from pyramid_mixpanel.track import DEVICE_PROPERTIES, SYSTEM_EVENT_KEYS

from .recorder import recording
from .test_relay import CHROME, COOKIE_SECRET, ORIGIN, signed_device_id, state_of, user_from_header

VICTIM = "01234567-89ab-4def-8123-456789abcdef"  # another visitor's device id
OWN = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"  # this visitor's
RELAY = "/mixpanel/track"


class HostileEvents(Events):
    plan_upgraded: Event = Event("Plan Upgraded")


class HostileEventProperties(EventProperties):
    plan: Property = Property("Plan")
    company_id: Property = Property("Company Id")


class HostileProfileProperties(ProfileProperties):
    dark_mode: Property = Property("Dark Mode")
    plan: Property = Property("Plan")


def server_side(request: Request) -> Response:
    """A view of the app that tracks itself: header properties are for such events."""
    request.mixpanel.distinct_id = "server"
    request.mixpanel.track(request.mixpanel.events.page_viewed)
    return Response("ok")


def build_app(
    session: bool = False, scheme: str = "http", core: dict[str, str] | None = None, **relay: str
) -> webtest.TestApp:
    """An app with the relay (anonymous visitors allowed) and a server-side tracking view."""
    settings = {
        "mixpanel.token": "false",
        "mixpanel.events": f"{__name__}.HostileEvents",
        "mixpanel.event_properties": f"{__name__}.HostileEventProperties",
        "mixpanel.profile_properties": f"{__name__}.HostileProfileProperties",
        "mixpanel.relay.device_cookie": "mp_device",
        "mixpanel.relay.cookie_secret": COOKIE_SECRET,
        "mixpanel.relay.cookie_secure": "false",
        "mixpanel.relay.profile_properties": "Dark Mode",
        **(core or {}),
    }
    settings.update({f"mixpanel.relay.{key}": value for key, value in relay.items()})
    with Configurator(settings=settings) as config:
        config.add_request_method(user_from_header, "user", reify=True)
        if session:
            config.set_session_factory(SignedCookieSessionFactory("not-a-real-secret"))
            config.add_route("token", "/token")
            config.add_view(lambda r: Response(get_csrf_token(r)), route_name="token")
        config.add_route("server", "/server")
        config.add_view(server_side, route_name="server")
        config.include("pyramid_mixpanel.relay")
        app = config.make_wsgi_app()
    host = "api.example.com" if scheme == "https" else "localhost:80"
    return webtest.TestApp(
        app,
        extra_environ={"HTTP_HOST": host, "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": scheme},
    )


def messages(tracks: list[MixpanelTrack]) -> list[dict[str, t.Any]]:
    return [m for track in tracks for m in track.mocked_messages]


def send(
    app: webtest.TestApp,
    body: bytes | object,
    status: int | str = "*",
    user: str | None = None,
    **headers: str,
) -> webtest.TestResponse:
    """POST ``body`` (bytes as they are, anything else as JSON) from the app's own page."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Origin": ORIGIN, "User-Agent": CHROME, "Content-Type": "application/json"}
    if user is not None:
        sent["X-User"] = user
    sent.update({key.replace("_", "-"): value for key, value in headers.items()})
    return app.post(RELAY, raw, headers=sent, status=status)


HOSTILE_HEADERS = {
    "X_Mixpanel_Plan": "enterprise",
    "X_Mixpanel_Company_Id": "victim",
    "X_Mixpanel_Title": "x" * 5000,
    "X_Mixpanel_Dark_Mode": "true",
}


# -- 1. X-Mixpanel-* headers never reach relayed messages ---------------------------------------


def test_hostile_headers_do_not_reach_relayed_events(tracks: list[MixpanelTrack]) -> None:
    app = build_app()
    body = {"event": "Page Viewed", "properties": {"Path": "/pricing"}}
    send(app, body, 200, **HOSTILE_HEADERS)
    batch = {"batch": [body, {"event": "Button/Link Clicked", "properties": {"Title": "Buy"}}]}
    send(app, batch, 200, user="user-1", **HOSTILE_HEADERS)
    relayed = messages(tracks)
    assert len(relayed) == 3
    for message in relayed:
        properties = message["msg"]["properties"]
        assert "Plan" not in properties
        assert "Company Id" not in properties
        assert properties.get("Title") in (None, "Buy")
    # The same properties in the body are refused: the headers were the bypass.
    answer = send(app, {"event": "Page Viewed", "properties": {"Plan": "enterprise"}}, 400)
    assert "declared but not allowed" in answer.json["error"]
    # request.mixpanel keeps its header properties for the rest of the request ...
    assert {p.name for p in tracks[0].global_event_props} >= {"Plan", "Company Id"}
    # ... and server-side events of the app still get them (what the headers are for).
    app.get("/server", headers={"X-Mixpanel-Plan": "enterprise"}, status=200)
    assert messages(tracks)[-1]["msg"]["properties"]["Plan"] == "enterprise"


def test_hostile_headers_do_not_reach_relayed_profile_updates(
    tracks: list[MixpanelTrack],
) -> None:
    app = build_app()
    send(app, {"profile_set": {"Dark Mode": False}}, 200, user="user-1", **HOSTILE_HEADERS)
    (message,) = messages(tracks)
    assert message["endpoint"] == "people"
    assert message["msg"]["$set"] == {"Dark Mode": False}
    assert set(message["msg"]) == {"$distinct_id", "$set", "$ip"}


# -- 2. malformed bodies are 4xx, never 5xx -----------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 1536,  # Python's json recursed into RecursionError
        b'{"batch": ' + b"[" * 1100 + b"]" * 1100 + b"}",
        b'{"event": "Page Viewed", "time": 1e400}',
        b'{"event": "Page Viewed", "time": -1e400}',
        b'{"event": "Page Viewed", "time": 1' + b"0" * 400 + b"}",  # int / 1000 overflowed
        b'{"event": "Page Viewed", "time": 1' + b"0" * 5000 + b"}",
        b'{"event": "Page Viewed", "time": NaN}',
        b'{"event": "Page Viewed", "properties": {"Path": Infinity}}',
        b'{"event": "Page Viewed", "properties": {"Path": -Infinity}}',
        b'{"event": "Page Viewed", "properties": {"Path": "\\ud800"}}',  # a lone surrogate
        b'{"event": "Page Viewed"} trailing',
        b"\xef\xbb\xbf{}",
    ],
)
def test_malformed_bodies_are_refused_as_bad_json(raw: bytes, tracks: list[MixpanelTrack]) -> None:
    answer = send(build_app(), raw, 400, user="user-1")
    assert answer.json == {
        "success": False,
        "event": None,
        "status_code": 400,
        "error": "the body is not valid JSON",
    }
    assert messages(tracks) == []


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"batch": [' + b"[" * 1000 + b"]" * 1000 + b"]}", "each item must be a JSON object"),
        (b"[" * 1000 + b"]" * 1000, 'send one item {"event": …}'),
        (b'{"event": "Page Viewed", "time": 18446744073709551615}', "within the last 5 days"),
        (b'{"event": "Page Viewed", "time": 1e308}', "within the last 5 days"),
        (b'{"event": "Page Viewed", "properties": {"Path": 9007199254740992}}', "out of range"),
        (b'{"event": "Page Viewed", "properties": {"Path": [-9007199254740993]}}', "range"),
        (
            b'{"event": "Page Viewed", "properties": {"Path": ' + b"[" * 500 + b"]" * 500 + b"}}",
            "must be a string, number",
        ),
    ],
)
def test_deep_or_huge_but_valid_json_is_refused_per_item(raw: bytes, error: str) -> None:
    answer = send(build_app(), raw, 400, user="user-1")
    errors = [answer.json["error"]] + [r["error"] for r in answer.json.get("results", [])]
    assert any(error in found for found in errors), errors


def test_the_largest_safe_integer_passes(tracks: list[MixpanelTrack]) -> None:
    raw = b'{"event": "Page Viewed", "properties": {"Path": [9007199254740991, -9007199254740991]}}'
    send(build_app(), raw, 200, user="user-1")
    assert messages(tracks)[0]["msg"]["properties"]["Path"] == [2**53 - 1, -(2**53 - 1)]


def test_a_malformed_origin_with_pyramid_csrf_is_refused_not_an_error() -> None:
    app = build_app(session=True, scheme="https", csrf="pyramid")
    for origin in ("https://[", "https://]x"):
        send(app, {"event": "Page Viewed"}, 403, user="user-1", Origin=origin)


# -- 3. refused calls cost no JSON parse and no user-agent parse --------------------------------


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count JSON parses and user-agent parses (of the relay module) while the test runs."""
    counts = {"json": 0, "user_agent": 0}

    def counting(name: str, real: Callable[..., t.Any]) -> Callable[..., t.Any]:
        def call(*args: t.Any) -> t.Any:
            counts[name] += 1
            return real(*args)

        return call

    monkeypatch.setattr(orjson, "loads", counting("json", orjson.loads))
    # The name the view calls (imported from relay.client), not the cached function itself.
    monkeypatch.setattr(view_module, "device_properties", counting("user_agent", device_properties))
    return counts


def test_refused_calls_parse_neither_json_nor_user_agent(parses: dict[str, int]) -> None:
    app = build_app(max_body_bytes="2000", rate="0.001", burst="50", max_batch="50")
    closed = build_app(device_cookie="")  # anonymous visitors are not relayed
    body = {"event": "Page Viewed"}
    app.get(RELAY, status=405)
    send(app, body, 403, Origin="https://evil.example")
    app.post(RELAY, b"{}", headers={"Origin": ORIGIN, "Content-Type": "text/plain"}, status=415)
    send(app, {"event": "Page Viewed", "properties": {"Path": "x" * 3000}}, 413)
    send(closed, body, 401)
    assert parses == {"json": 0, "user_agent": 0}

    send(app, {"batch": [body] * 50}, 200)  # the control: an accepted call parses both
    assert parses == {"json": 1, "user_agent": 1}
    for _ in range(3):
        answer = send(app, body, 429)  # the bucket is empty: refused before parsing
    assert answer.headers["Retry-After"]
    assert parses == {"json": 1, "user_agent": 1}
    assert state_of(app).stats["rate_limited"] == 3


def test_a_parsed_call_always_costs_a_token(parses: dict[str, int]) -> None:
    # A client cannot make the relay parse bodies faster than its rate: a parsed call that is
    # refused afterwards (bad JSON, a batch larger than the tokens left) still took one.
    app = build_app(rate="0.001", burst="3", max_batch="3")
    send(app, b"{not json", 400)
    send(app, {"batch": [{"event": "Page Viewed"}] * 3}, 429)  # 2 tokens left, 3 items
    send(app, {"event": "Page Viewed"}, 200)  # the last token
    send(app, b"{not json", 429)
    assert parses["json"] == 3


# -- 4. csrf = pyramid trusts mixpanel.relay.allowed_origins ------------------------------------


def test_pyramid_csrf_accepts_the_allowed_origins() -> None:
    app = build_app(
        session=True,
        scheme="https",
        csrf="pyramid",
        allowed_origins="https://www.example.com\nhttps://shop.example.com:8443",
        core={"pyramid.csrf_trusted_origins": "partner.example"},
    )
    token = app.get("/token").text
    body = {"event": "Page Viewed"}
    for origin in (
        "https://www.example.com",
        "https://shop.example.com:8443",
        "https://api.example.com",  # the app's own
        "https://partner.example",  # pyramid.csrf_trusted_origins still counts
    ):
        send(app, body, 200, user="u", Origin=origin, X_CSRF_Token=token)
    for origin in ("https://evil.example", "http://www.example.com", "https://shop.example.com"):
        send(app, body, 403, user="u", Origin=origin, X_CSRF_Token=token)
    send(app, body, 403, user="u", Origin="https://www.example.com")  # the token is still needed


# -- 5. a path that is a route pattern is refused ----------------------------------------------


def parse(**relay: object) -> t.Any:
    catalog = Catalog(HostileEvents, HostileEventProperties, HostileProfileProperties)
    return parse_relay_settings({f"mixpanel.relay.{k}": v for k, v in relay.items()}, catalog)


@pytest.mark.parametrize(
    "path",
    ["/{x}", "/{x:.*}", "/a}", "/{", "/*rest", "/a/*", "/:name", "mixpanel/track", "", "/a b",
     "/%7Bx%7D", "/a?b", "/é", " /x\n/y"],
)  # fmt: skip
def test_route_patterns_and_relative_paths_are_refused(path: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match="^mixpanel.relay.path must be a plain"):
        parse(path=path)
    with pytest.raises(ConfigurationError, match="mixpanel.relay.path must be a plain"):
        build_app(path=path)


def test_plain_paths_pass() -> None:
    for path in ("/", "/_e/collect", "/api/v1.2/track~x-y/"):
        assert parse(path=path).path == path


# -- 6. trusting every address is warned about -------------------------------------------------


@pytest.mark.parametrize("networks", ["0.0.0.0/0", "10.0.0.0/8\n::/0", "1.2.3.4/0"])
def test_trusting_every_proxy_is_warned_about(
    networks: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pyramid_mixpanel")
    build_app(trusted_proxies=networks)
    assert "mixpanel.relay_trusts_every_proxy" in caplog.text
    assert "mixpanel.relay.trusted_proxies" in caplog.text


def test_trusting_some_proxies_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pyramid_mixpanel")
    build_app(trusted_proxies="10.0.0.0/8\n::1")
    assert "relay_trusts_every_proxy" not in caplog.text


# -- 7. the device cookie is signed ------------------------------------------------------------


def signed(device_id: str, secret: str = COOKIE_SECRET) -> str:
    """A device cookie value as a relay with ``secret`` signs it."""
    return DeviceCookie("mp_device", secret).value(device_id)


def relayed_identities(tracks: list[MixpanelTrack]) -> list[str]:
    return [m["msg"]["properties"]["distinct_id"] for m in messages(tracks)]


def test_a_forged_or_unsigned_device_cookie_is_ignored(tracks: list[MixpanelTrack]) -> None:
    app = build_app()
    other_secret = "another-app-secret-0123456789abcdef"
    own = signed(OWN)
    for value in (
        VICTIM,  # a plain id, as the cookie held before it was signed
        signed(VICTIM, other_secret),
        own[:-1] + ("A" if own[-1] != "A" else "B"),  # one character changed
        own[:43],  # cut
        "",
        "é" * 10,
        own + "." + own,
        signed("not a device id, though signed by the app"),
    ):
        app.reset()
        answer = send(app, {"event": "Page Viewed"}, 200, Cookie=f"mp_device={value}")
        issued = signed_device_id(app, app.cookies["mp_device"])
        assert issued is not None
        assert "mp_device=" in answer.headers["Set-Cookie"]
        assert relayed_identities(tracks)[-1] == f"$device:{issued}"
    assert f"$device:{VICTIM}" not in relayed_identities(tracks)

    app.reset()
    answer = send(app, {"event": "Page Viewed"}, 200, Cookie=f"mp_device={own}")
    assert "Set-Cookie" not in answer.headers
    assert relayed_identities(tracks)[-1] == f"$device:{OWN}"


def test_the_device_cookie_needs_a_long_enough_secret() -> None:
    def core(**relay: str) -> MixpanelSettings:
        return parse_settings({f"mixpanel.relay.{key}": value for key, value in relay.items()})

    with pytest.raises(MixpanelConfigurationError, match="mixpanel.cookie_secret must be set"):
        core(device_cookie="mp_device")
    with pytest.raises(MixpanelConfigurationError, match="mixpanel.cookie_secret must be set"):
        core(device_cookie="mp_device", cookie_secret="off")
    with pytest.raises(MixpanelConfigurationError, match="at least 16 characters") as raised:
        core(device_cookie="mp_device", cookie_secret="short-secret-15")
    assert "mixpanel.relay.cookie_secret" in str(raised.value)  # the key that was used
    assert "short-secret-15" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="mixpanel.cookie_secret must be set"):
        build_app(cookie_secret="")
    assert core(cookie_secret="x" * 16).cookie_secret == "x" * 16  # also without the cookie


def test_the_cookie_secret_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "do-not-show-this-secret-anywhere-42"
    app = build_app(cookie_secret=secret, trusted_proxies="0.0.0.0/0", unknown_key="x")
    send(app, {"event": "Page Viewed"}, 200)
    send(app, {"event": "Nope"}, 400, Cookie="mp_device=forged")
    send(app, b"{", 400)
    send(app, {"event": "Page Viewed"}, 403, Origin="https://evil.example")
    state = state_of(app)
    runtime = get_runtime(app.app.registry)
    shown = [caplog.text, repr(state), repr(state.settings), str(state.settings)]
    shown += [repr(runtime.settings), repr(runtime.device_cookie)]
    shown += [repr(view_module.RelayView(state)), app.cookies["mp_device"]]
    for text in shown:
        assert secret not in text
    assert "cookie_secret" not in repr(state.settings)
    assert "cookie_secret" not in repr(runtime.settings)


# -- 9. property-based: anything a client sends -------------------------------------------------

EVENT_NAMES = ["Page Viewed", "page_viewed", "Button/Link Clicked", "Plan Upgraded", "Nope", ""]
KEYS = [
    "event",
    "properties",
    "time",
    "insert_id",
    "batch",
    "profile_set",
    "Title",
    "title",
    "Path",
    "$referrer",
    "dollar_referrer",
    "Plan",
    "Company Id",
    "Dark Mode",
    "dark_mode",
    "distinct_id",
    "$distinct_id",
    "$device_id",
    "token",
    "ip",
    "$ip",
    "time",
    "$set",
    "$browser",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(EVENT_NAMES)
    | st.just("x" * 1100)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=25,
)
properties = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)
# Half the items are nearly right (allowed events, mostly allowed properties), so that many
# examples are relayed and the checks on relayed messages have something to check.
plausible_values = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
plausible_items = st.one_of(
    st.fixed_dictionaries(
        {"event": st.sampled_from(EVENT_NAMES[:4])},
        optional={
            "properties": st.dictionaries(
                st.sampled_from(["Title", "title", "Path", "$referrer", "dollar_referrer"]),
                plausible_values | st.lists(plausible_values, max_size=3),
                max_size=3,
            ),
            "insert_id": st.from_regex(r"[A-Za-z0-9-]{1,36}", fullmatch=True),
        },
    ),
    st.fixed_dictionaries(
        {"profile_set": st.dictionaries(st.just("Dark Mode"), plausible_values, min_size=1)}
    ),
)
hostile_items = st.one_of(
    st.fixed_dictionaries(
        {"event": st.sampled_from(EVENT_NAMES)},
        optional={
            "properties": properties | json_values,
            "time": json_values,
            "insert_id": st.text(max_size=40) | json_values,
        },
    ),
    st.fixed_dictionaries({"profile_set": properties | json_values}),
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
    json_values,
)
items = plausible_items | hostile_items
bodies = st.one_of(items, st.fixed_dictionaries({"batch": st.lists(items, max_size=6)}))
HEADER_NAMES = [
    "Plan",
    "Company-Id",
    "Title",
    "Path",
    "Referrer",
    "Dollar-Referrer",
    "Dark-Mode",
    "Distinct-Id",
    "Device-Id",
    "Token",
    "Ip",
]
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30) | st.just(
    "x" * 5000
)
mixpanel_headers = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True),
    header_values,
    min_size=1,
    max_size=4,
).map(lambda found: {f"X-Mixpanel-{name}": value for name, value in found.items()})
OWN_ISSUED = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"  # a device id this app issued (signed by it)
cookies = st.one_of(
    st.none(),
    st.just(f"mp_device={signed(OWN_ISSUED)}"),
    st.just(f"mp_device={VICTIM}"),
    st.just(f"mp_device={signed(VICTIM, 'another-app-secret-0123456789abcdef')}"),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60).map(
        lambda text: f"mp_device={text}"
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
)
other_headers = st.fixed_dictionaries(
    {},
    optional={
        "User-Agent": header_values,
        "X-Forwarded-For": st.sampled_from(["203.0.113.9", "garbage", "::1, 10.0.0.1"])
        | header_values,
        "Origin": st.sampled_from([ORIGIN, ORIGIN, ORIGIN, "null", "https://evil.", "http://["]),
        "Referer": header_values,
    },
)


@pytest.fixture(scope="module")
def open_app() -> webtest.TestApp:
    """One app for every example: a rate limit too high to be hit by them."""
    return build_app(
        events="Page Viewed\nButton/Link Clicked\nplan_upgraded",
        rate="1000000",
        burst="100000",
        max_value_length="1024",
        trusted_proxies="127.0.0.1",
    )


ALLOWED_EVENT_KEYS = (
    {"Title", "Path", "$referrer", "$user_id"} | SYSTEM_EVENT_KEYS | DEVICE_PROPERTIES
)
ALLOWED_PEOPLE_KEYS = {"$distinct_id", "$set", "$ip"}


def device_id_used(
    app: webtest.TestApp, answer: webtest.TestResponse, cookie: str | None
) -> str | None:
    """The device id the relay signed: the one it issued now, else the one the call sent."""
    for header in answer.headers.getall("Set-Cookie"):
        name, _, rest = header.partition("=")
        if name == "mp_device":
            return signed_device_id(app, rest.split(";", 1)[0])
    sent = Request.blank("/", headers={"Cookie": cookie}).cookies.get("mp_device", "")
    return signed_device_id(app, sent)


EVENT_NAMES_OF = {
    "Title": "Title",
    "title": "Title",
    "Path": "Path",
    "$referrer": "$referrer",
    "dollar_referrer": "$referrer",
}


def sent_in(raw: bytes) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """What the body's items set, by Mixpanel name: event properties, profile updates."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return [], []
    batch = isinstance(payload, dict) and set(payload) == {"batch"}
    found = payload["batch"] if batch else [payload]
    events: list[dict[str, object]] = []
    profiles: list[dict[str, object]] = []
    for item in found if isinstance(found, list) else []:
        if isinstance(item, dict):
            for key, into in (("properties", events), ("profile_set", profiles)):
                values = item.get(key, {})
                if isinstance(values, dict):
                    into.append({EVENT_NAMES_OF.get(str(k), str(k)): v for k, v in values.items()})
    return events, profiles


def check_answer(
    app: webtest.TestApp,
    answer: webtest.TestResponse,
    tracks: list[MixpanelTrack],
    raw: bytes,
    user: str | None,
    cookie: str | None,
) -> None:
    """No 5xx, the documented JSON shape, and nothing relayed but what the body may set."""
    assert answer.status_int < 500, answer.body[:300]
    assert answer.content_type == "application/json"
    assert {"success", "status_code", "error"} <= set(answer.json)
    device_id = device_id_used(app, answer, cookie or "")
    identity = user if user is not None else f"$device:{device_id}"
    events, profiles = sent_in(raw)
    for message in messages(tracks):
        assert message["endpoint"] in ("events", "people")
        if message["endpoint"] == "events":
            props = message["msg"]["properties"]
            assert message["msg"]["event"] in (
                "Page Viewed",
                "Button/Link Clicked",
                "Plan Upgraded",
            )
            assert set(props) <= ALLOWED_EVENT_KEYS, set(props) - ALLOWED_EVENT_KEYS
            assert props["distinct_id"] == identity
            # The device cookie's id (signed by the app), and the signed-in user's id with it.
            assert props["$device_id"] == device_id
            assert props.get("$user_id") == user
            assert all(len(v) <= 1024 for v in props.values() if isinstance(v, str))
            # Title, Path and $referrer: from the body's item, never from a header.
            assert {k: v for k, v in props.items() if k in EVENT_NAMES_OF} in events
        else:
            assert user is not None  # anonymous visitors never update a profile
            assert set(message["msg"]) <= ALLOWED_PEOPLE_KEYS
            assert set(message["msg"]["$set"]) <= {"Dark Mode"}
            assert message["msg"]["$set"] in profiles
            assert message["msg"]["$distinct_id"] == user
    assert VICTIM not in json.dumps(messages(tracks))


def call_and_check(
    app: webtest.TestApp,
    raw: bytes,
    user: str | None,
    cookie: str | None,
    headers: dict[str, str],
) -> None:
    """One call as the example says, then :func:`check_answer`."""
    app.reset()  # no cookie left over from another example
    sent = {"Origin": ORIGIN, "User-Agent": CHROME, "Content-Type": "application/json"}
    sent.update(headers)
    if user is not None:
        sent["X-User"] = user
    if cookie is not None:
        sent["Cookie"] = cookie
    with recording() as tracks:
        answer = app.post(RELAY, raw, headers=sent, status="*")
    check_answer(app, answer, tracks, raw, user, cookie)


@settings(deadline=None)
@given(
    body=bodies,
    user=st.sampled_from([None, "user-1"]),
    cookie=cookies,
    headers=st.tuples(mixpanel_headers, other_headers).map(lambda pair: {**pair[1], **pair[0]}),
)
def test_any_json_body_headers_and_cookies(
    open_app: webtest.TestApp,
    body: object,
    user: str | None,
    cookie: str | None,
    headers: dict[str, str],
) -> None:
    raw = json.dumps(body).encode()
    call_and_check(open_app, raw, user, cookie, headers)


@settings(deadline=None)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        bodies.map(lambda body: json.dumps(body).encode()).flatmap(
            lambda encoded: st.integers(0, len(encoded)).map(lambda cut: encoded[:cut])
        ),
        st.tuples(bodies, st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"["])).map(
            lambda pair: json.dumps(pair[0]).encode().replace(b"null", pair[1], 1)
        ),
    ),
    user=st.sampled_from([None, "user-1"]),
    cookie=cookies,
    headers=mixpanel_headers,
)
def test_any_bytes(
    open_app: webtest.TestApp,
    raw: bytes,
    user: str | None,
    cookie: str | None,
    headers: dict[str, str],
) -> None:
    call_and_check(open_app, raw, user, cookie, headers)


# -- 10. property-based: settings from any text ------------------------------------------------


def harmless(value: object) -> bool:
    """False when resolving ``value`` as a dotted name would import a module not yet imported.

    (``mixpanel.relay.distinct_id`` imports what it names; ``this`` or ``antigravity`` would
    print or open a browser.)
    """
    if not isinstance(value, str):
        return True
    top = re.split(r"[.:]", value.strip(), maxsplit=1)[0]
    if not top or top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return True


SETTING_VALUES = st.one_of(
    st.text(max_size=40),
    st.text(st.sampled_from("/{}*:.,\n 0123456789abcdef-"), max_size=20),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "0", "-1", "off", "on", " ", "x" * 300]),
    st.sampled_from(["0.0.0.0/0", "::/0", "10.0.0.300", "https://[", "http://[::1]:99999"]),
    st.sampled_from(["Page Viewed", "plan", "Dark Mode", "tests.test_relay.getter_from_header"]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=10), max_size=3),
).filter(harmless)
RELAY_KEYS = [row.key for row in TABLE] + [
    "mixpanel.relay.events",
    "mixpanel.relay.event_properties",
    "mixpanel.relay.profile_properties",
]


@settings(deadline=None)
@given(values=st.dictionaries(st.sampled_from(RELAY_KEYS), SETTING_VALUES, max_size=6))
def test_relay_settings_are_parsed_or_refused_by_name(values: dict[str, object]) -> None:
    catalog = Catalog(HostileEvents, HostileEventProperties, HostileProfileProperties)
    try:
        relay = parse_relay_settings(values, catalog)
    except MixpanelConfigurationError as error:
        assert "mixpanel.relay." in str(error)
    else:
        assert relay.rate > 0 and math.isfinite(relay.rate)
        assert relay.path.startswith("/")


@pytest.mark.parametrize("rate", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf"), "0"])
def test_a_rate_that_is_not_a_finite_positive_number_is_refused(rate: object) -> None:
    with pytest.raises(MixpanelConfigurationError, match="mixpanel.relay.rate must be"):
        parse(rate=rate)
