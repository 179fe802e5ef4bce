"""The relay endpoint against a real Pyramid app (WebTest), in testing mode.

What the front end may send, what it gets back, and what reaches ``request.mixpanel``: every
refusal has the documented JSON shape and status, and is counted and logged without payload.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
import typing as t
from dataclasses import dataclass

import mixpanel
import pytest
import webtest
from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.exceptions import ConfigurationError
from pyramid.request import Request
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
from pyramid_mixpanel.relay import RELAY_KEY, RelayState
from pyramid_mixpanel.relay.client import client_ip, device_properties, same_origin
from pyramid_mixpanel.relay.config import parse_relay_settings
from pyramid_mixpanel.relay.ratelimit import TokenBuckets, retry_after

ORIGIN = "http://localhost"
COOKIE_SECRET = "relay-tests-cookie-secret-0123456789"  # a test value
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/126.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Version/17.2 Mobile/15E148 Safari/604.1"
)


@dataclass(frozen=True)
class User:
    distinct_id: str


class AppEvents(Events):
    plan_upgraded: Event = Event("Plan Upgraded")


class AppEventProperties(EventProperties):
    plan: Property = Property("Plan")


class AppProfileProperties(ProfileProperties):
    dark_mode: Property = Property("Dark Mode")


def user_from_header(request: Request) -> User | None:
    name = request.headers.get("X-User")
    return User(name) if name else None


def getter_from_header(request: Request) -> str | None:
    return t.cast("str | None", request.headers.get("X-Account"))


SENT: list[dict[str, t.Any]] = []


class RecordingConsumer(mixpanel.Consumer):  # type: ignore[misc]  # untyped base
    """A ``mixpanel.consumer`` for live mode: keeps whole messages, system properties too."""

    def send(self, endpoint: str, json_message: str, *args: object) -> None:
        SENT.append({"endpoint": endpoint, **json.loads(json_message)})


def home(request: Request) -> dict[str, str]:
    return {"csrf": get_csrf_token(request)}


def make_app(
    session: bool = False, core: dict[str, str] | None = None, **settings: t.Any
) -> webtest.TestApp:
    base = {
        "mixpanel.token": "false",
        "mixpanel.events": f"{__name__}.AppEvents",
        "mixpanel.event_properties": f"{__name__}.AppEventProperties",
        "mixpanel.profile_properties": f"{__name__}.AppProfileProperties",
    }
    if "device_cookie" in settings:
        settings.setdefault("cookie_secret", COOKIE_SECRET)  # required with a device cookie
    base.update({f"mixpanel.relay.{key}": value for key, value in settings.items()})
    base.update(core or {})
    with Configurator(settings=base) as config:
        config.add_request_method(user_from_header, "user", reify=True)
        if session:
            config.set_session_factory(SignedCookieSessionFactory("not-a-real-secret"))
            config.add_route("home", "/")
            config.add_view(home, route_name="home", renderer="json")
        config.include("pyramid_mixpanel.relay")
        app = config.make_wsgi_app()
    return webtest.TestApp(
        app, extra_environ={"HTTP_HOST": "localhost:80", "REMOTE_ADDR": "127.0.0.1"}
    )


def messages(tracks: list[MixpanelTrack]) -> list[dict[str, t.Any]]:
    return [m for track in tracks for m in track.mocked_messages]


def post(
    app: webtest.TestApp,
    body: object,
    status: int | str = "*",
    user: str | None = "user-1",
    headers: dict[str, str] | None = None,
    path: str = "/mixpanel/track",
) -> webtest.TestResponse:
    sent = {"Origin": ORIGIN, "User-Agent": CHROME}
    if user:
        sent["X-User"] = user
    sent.update(headers or {})
    sent = {key: value for key, value in sent.items() if value}
    return app.post_json(path, body, headers=sent, status=status)


def state_of(app: webtest.TestApp) -> RelayState:
    return t.cast(RelayState, app.app.registry[RELAY_KEY])


def signed_device_id(app: webtest.TestApp, cookie: str) -> str | None:
    """The device id in a device cookie's value, if the app's relay signed it."""
    cookie_jar = get_runtime(app.app.registry).device_cookie
    assert cookie_jar is not None
    return cookie_jar.device_id(cookie)


# -- accepted calls --------------------------------------------------------------------------


def test_one_event_is_tracked_for_the_server_side_user(tracks: list[MixpanelTrack]) -> None:
    app = make_app()
    answer = post(app, {"event": "Page Viewed", "properties": {"Path": "/pricing"}}, 200)
    assert answer.json == {
        "success": True,
        "event": "Page Viewed",
        "status_code": 200,
        "error": None,
    }
    assert answer.headers["Cache-Control"] == "no-store"
    (message,) = messages(tracks)
    assert message["endpoint"] == "events"
    assert message["msg"]["event"] == "Page Viewed"
    properties = message["msg"]["properties"]
    assert properties["distinct_id"] == "user-1"
    assert properties["Path"] == "/pricing"
    assert properties["ip"] == "127.0.0.1"
    assert properties["$browser"] == "Chrome"
    assert properties["$browser_version"] == "126.0"
    assert properties["$os"] == "Windows"
    assert "$device" not in properties  # a desktop: ua-parser knows no device
    assert tracks[0].outcome is True  # released with the request


def test_identity_in_the_body_is_refused_not_believed(tracks: list[MixpanelTrack]) -> None:
    app = make_app()
    body = {"event": "Page Viewed", "properties": {"distinct_id": "someone-else"}}
    answer = post(app, body, 400)
    assert "'distinct_id' is not declared for front ends" in answer.json["error"]
    assert messages(tracks) == []


def test_attribute_names_and_a_mobile_device(tracks: list[MixpanelTrack]) -> None:
    app = make_app()
    body = {"event": "button_link_clicked", "properties": {"title": "Buy", "path": "/"}}
    post(app, body, 200, headers={"User-Agent": IPHONE})
    properties = tracks[0].mocked_messages[0]["msg"]["properties"]
    assert tracks[0].mocked_messages[0]["msg"]["event"] == "Button/Link Clicked"
    assert properties["Title"] == "Buy"
    assert properties["$device"] == "iPhone"
    assert properties["$os"] == "iOS"


def test_no_user_agent_no_device_and_parsing_can_be_turned_off(
    tracks: list[MixpanelTrack],
) -> None:
    post(make_app(), {"event": "Page Viewed"}, 200, headers={"User-Agent": ""})
    post(make_app(parse_user_agent="false"), {"event": "Page Viewed"}, 200)
    for message in messages(tracks):
        assert "$browser" not in message["msg"]["properties"]


def test_a_batch_answers_per_item(tracks: list[MixpanelTrack]) -> None:
    app = make_app(events="Page Viewed\nButton/Link Clicked\nplan_upgraded")
    batch = [
        {"event": "Page Viewed", "properties": {"Path": "/a"}},
        {"event": "Plan Upgraded", "properties": {}},
        {"event": "Page Veiwed"},
        {"event": "User Signed Up"},
        "not an object",
        {"profile_set": {"Dark Mode": True}},
    ]
    answer = post(app, {"batch": batch}, 207)
    assert answer.json["success"] is False
    assert answer.json["status_code"] == 207
    assert answer.json["error"] == "4 of 6 items were refused"
    results = answer.json["results"]
    assert [r["status_code"] for r in results] == [200, 200, 400, 400, 400, 403]
    assert [r["event"] for r in results] == [
        "Page Viewed",
        "Plan Upgraded",
        "Page Veiwed",
        "User Signed Up",
        None,
        "$set",
    ]
    assert "Did you mean 'Page Viewed'?" in results[2]["error"]
    assert (
        "declared but not allowed from front ends (mixpanel.relay.events)" in (results[3]["error"])
    )
    assert results[4]["error"] == "each item must be a JSON object"
    assert "profile updates are not relayed" in results[5]["error"]
    assert [m["msg"]["event"] for m in messages(tracks)] == ["Page Viewed", "Plan Upgraded"]
    assert state_of(app).stats["accepted"] == 2
    assert state_of(app).stats["invalid"] == 4


def test_all_good_and_all_bad_batches() -> None:
    app = make_app()
    good = post(app, {"batch": [{"event": "Page Viewed"}] * 3}, 200).json
    assert good["success"] is True
    assert good["error"] is None
    assert [r["success"] for r in good["results"]] == [True] * 3
    bad = post(app, {"batch": [{"event": "Nope"}] * 2}, 400).json
    assert bad["status_code"] == 400
    assert bad["error"] == "2 of 2 items were refused"


def test_time_and_insert_id() -> None:
    SENT.clear()
    live = {"mixpanel.token": "tok", "mixpanel.consumer": f"{__name__}.RecordingConsumer"}
    app = make_app(core=live)
    an_hour_ago = time.time() - 3600
    post(app, {"event": "Page Viewed", "time": an_hour_ago, "insert_id": "abc-123"}, 200)
    post(app, {"event": "Page Viewed", "time": int(an_hour_ago * 1000)}, 200)
    first, second = SENT
    assert first["properties"]["time"] == pytest.approx(an_hour_ago)
    assert first["properties"]["$insert_id"] == "abc-123"
    assert second["properties"]["time"] == pytest.approx(an_hour_ago, abs=0.01)
    assert second["properties"]["$insert_id"] != "abc-123"
    for when, error in (
        (time.time() - 6 * 86400, "within the last 5 days"),
        (time.time() + 3600, "within the last 5 days"),
        ("yesterday", "epoch seconds or milliseconds"),
        (True, "epoch seconds or milliseconds"),
    ):
        answer = post(app, {"event": "Page Viewed", "time": when}, 400)
        assert error in answer.json["error"]
    for insert_id in ("x" * 37, "a b", 12):
        answer = post(app, {"event": "Page Viewed", "insert_id": insert_id}, 400)
        assert "insert_id must be" in answer.json["error"]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"event": "Page Viewed", "distinct": 1}, "unknown keys ['distinct']"),
        ({"event": 12}, "event must be a string"),
        ({"event": "Page Viewed", "properties": []}, "properties must be a JSON object"),
        ({"event": "Page Viewed", "properties": {"Path": {"a": 1}}}, "must be a string, number"),
        ({"event": "Page Viewed", "properties": {"Path": "x" * 1025}}, "longer than 1024"),
        ({"event": "Page Viewed", "properties": {"Path": [1] * 101}}, "more than 100 values"),
        ({"event": "Page Viewed", "properties": {"Path": [[1]]}}, "must be a string, number"),
        ({"event": "Page Viewed", "properties": {"Plan": "pro"}}, "declared but not allowed"),
        ({"event": "Page Viewed", "properties": {"pth": "/"}}, "Did you mean 'Path'?"),
    ],
)
def test_bad_items(item: dict[str, t.Any], error: str) -> None:
    answer = post(make_app(), item, 400)
    assert answer.json["success"] is False
    assert answer.json["status_code"] == 400
    assert error in answer.json["error"]


def test_values_that_pass(tracks: list[MixpanelTrack]) -> None:
    app = make_app(event_properties="Path\nTitle\nPlan", max_value_length="5")
    props = {"Path": ["/a", 1, 2.5, True, None], "Title": None, "Plan": "12345"}
    post(app, {"event": "Page Viewed", "properties": props}, 200)
    assert messages(tracks)[0]["msg"]["properties"]["Path"] == ["/a", 1, 2.5, True, None]


def test_tracking_errors_become_item_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("'Path' is inf, which Mixpanel cannot store")

    monkeypatch.setattr(MixpanelTrack, "track", broken)
    answer = post(make_app(), {"event": "Page Viewed"}, 400)
    assert answer.json["error"] == "'Path' is inf, which Mixpanel cannot store"


# -- profiles ---------------------------------------------------------------------------------


def test_profile_set_only_for_allowed_properties_and_signed_in_users(
    tracks: list[MixpanelTrack],
) -> None:
    app = make_app(profile_properties="dark_mode", device_cookie="mp_device")
    answer = post(app, {"profile_set": {"Dark Mode": True}}, 200)
    assert answer.json == {"success": True, "event": "$set", "status_code": 200, "error": None}
    (message,) = messages(tracks)
    assert message["endpoint"] == "people"
    assert message["msg"]["$set"] == {"Dark Mode": True}
    assert message["msg"]["$distinct_id"] == "user-1"
    assert message["msg"]["$ip"] == "127.0.0.1"

    answer = post(app, {"profile_set": {"$email": "a@example.com"}}, 400)
    assert (
        "not allowed from front ends (mixpanel.relay.profile_properties)" in (answer.json["error"])
    )
    answer = post(app, {"profile_set": {"Dark Mod": True}}, 400)
    assert "Did you mean 'Dark Mode'?" in answer.json["error"]
    answer = post(app, {"profile_set": {"Dark Mode": True}}, 403, user=None)
    assert answer.json["error"] == "profile updates need a signed-in user"
    empty: tuple[object, ...] = ({}, [], "x")
    for bad in empty:
        answer = post(app, {"profile_set": bad}, 400)
        assert answer.json["error"] == "profile_set must be a non-empty JSON object"
    answer = post(app, {"profile_set": {"Dark Mode": True}, "event": "x"}, 400)
    assert "takes no other keys" in answer.json["error"]


def test_profile_set_without_a_known_ip(tracks: list[MixpanelTrack]) -> None:
    app = make_app(profile_properties="Dark Mode")
    post(app, {"profile_set": {"Dark Mode": False}}, 200, headers={"X-Forwarded-For": ""})
    app.post_json(
        "/mixpanel/track",
        {"profile_set": {"Dark Mode": False}},
        headers={"Origin": ORIGIN, "X-User": "u"},
        extra_environ={"REMOTE_ADDR": "not an address"},
        status=200,
    )
    assert "$ip" not in messages(tracks)[1]["msg"]


# -- identity ---------------------------------------------------------------------------------


def test_anonymous_calls_need_a_device_cookie_setting() -> None:
    answer = post(make_app(), {"event": "Page Viewed"}, 401, user=None)
    assert answer.json["error"] == "sign in first: anonymous calls are not relayed"
    assert answer.json["event"] is None


def test_anonymous_visitors_get_a_stable_first_party_device_id(
    tracks: list[MixpanelTrack],
) -> None:
    # Secure exactly on HTTPS by default (WebTest, like a browser, keeps a secure cookie off
    # plain http), or always with cookie_secure = true.
    plain = post(make_app(device_cookie="mp_device"), {"event": "Page Viewed"}, user=None)
    assert "; secure;" not in plain.headers["Set-Cookie"].lower()
    https = make_app(device_cookie="mp_device").post_json(
        "/mixpanel/track",
        {"event": "Page Viewed"},
        headers={"Origin": "https://localhost", "User-Agent": CHROME},
        extra_environ={"wsgi.url_scheme": "https", "HTTP_HOST": "localhost"},
    )
    assert "; secure;" in https.headers["Set-Cookie"]
    always = post(make_app(device_cookie="d", cookie_secure="true"), {"event": "Page Viewed"})
    assert "; secure;" in always.headers["Set-Cookie"]
    app = make_app(device_cookie="mp_device", cookie_max_age="600")
    first = post(app, {"event": "Page Viewed"}, 200, user=None)
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith("mp_device=")
    for attribute in ("Max-Age=600", "Path=/", "HttpOnly", "SameSite=Lax"):
        assert attribute in cookie
    device_id = signed_device_id(app, app.cookies["mp_device"])
    assert device_id is not None  # the cookie holds the id, signed
    second = post(app, {"event": "Page Viewed"}, 200, user=None)
    assert "Set-Cookie" not in second.headers
    for message in messages(tracks)[-2:]:
        assert message["msg"]["properties"]["distinct_id"] == f"$device:{device_id}"
        assert message["msg"]["properties"]["$device_id"] == device_id

    app.set_cookie("mp_device", "forged-value")
    third = post(app, {"event": "Page Viewed"}, 200, user=None)
    assert signed_device_id(app, app.cookies["mp_device"]) not in (None, device_id)
    assert "mp_device=" in third.headers["Set-Cookie"]


def test_a_configured_identity_getter(tracks: list[MixpanelTrack]) -> None:
    app = make_app(distinct_id=f"{__name__}.getter_from_header")
    post(app, {"event": "Page Viewed"}, 200, headers={"X-Account": "acct-7"})
    assert messages(tracks)[0]["msg"]["properties"]["distinct_id"] == "acct-7"
    post(app, {"event": "Page Viewed"}, 401)  # the getter decides, request.user does not


# -- whole-call refusals ----------------------------------------------------------------------


def test_cross_site_calls_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(allowed_origins="https://www.example.com")
    for headers in (
        {"Origin": ""},
        {"Origin": "https://evil.example"},
        {"Origin": "null", "Referer": "http://localhost/page"},
        {"Origin": "", "Referer": "https://evil.example/page"},
    ):
        answer = post(app, {"event": "Page Viewed"}, 403, headers=headers)
        assert answer.json == {
            "success": False,
            "event": None,
            "status_code": 403,
            "error": "cross-site call refused (Origin / CSRF token check)",
        }
    assert state_of(app).stats["csrf"] == 4
    post(app, {"event": "Page Viewed"}, 200, headers={"Origin": "https://www.example.com"})
    post(app, {"event": "Page Viewed"}, 200, headers={"Origin": "", "Referer": ORIGIN + "/x"})
    post(make_app(csrf="off"), {"event": "Page Viewed"}, 200, headers={"Origin": ""})


def test_pyramid_csrf_tokens() -> None:
    app = make_app(session=True, csrf="pyramid")
    post(app, {"event": "Page Viewed"}, 403)
    token = app.get("/").json["csrf"]
    post(app, {"event": "Page Viewed"}, 200, headers={"X-CSRF-Token": token})


def test_only_json_posts_within_the_limits() -> None:
    app = make_app(max_body_bytes="200", max_batch="2")
    answer = app.get("/mixpanel/track", status=405)
    assert answer.headers["Allow"] == "POST"
    assert answer.json["error"] == "use POST, not GET"
    answer = app.post(
        "/mixpanel/track",
        "event=Page+Viewed",
        headers={"Origin": ORIGIN, "X-User": "u"},
        status=415,
    )
    assert answer.json["error"] == "send JSON with Content-Type: application/json"
    body = {"event": "Page Viewed", "properties": {"Path": "x" * 300}}
    answer = post(app, body, 413)
    assert answer.json["error"] == "the body is larger than 200 bytes"
    answer = post(app, {"batch": [{"event": "Page Viewed"}] * 3}, 413)
    assert answer.json["error"] == "a batch holds at most 2 items"
    bad: object
    for bad, error in (
        ([1], 'send one item {"event": …} or {"batch": [...]}'),
        ({"batch": []}, "batch must be a non-empty list of items"),
        ({"batch": {"event": "Page Viewed"}}, "batch must be a non-empty list of items"),
    ):
        assert post(app, bad, 400).json["error"] == error
    for raw in (b"{", b'{"event": "Page Viewed", "time": NaN}', b"\xff"):
        answer = app.post(
            "/mixpanel/track",
            raw,
            headers={"Origin": ORIGIN, "X-User": "u", "Content-Type": "application/json"},
            status=400,
        )
        assert answer.json["error"] == "the body is not valid JSON"
    stats = state_of(app).stats
    assert stats["method"] == stats["content_type"] == 1
    assert stats["too_large"] == 2
    assert stats["bad_json"] == 3


def test_a_chunked_body_without_length_is_cut_at_the_limit() -> None:
    app = make_app(max_body_bytes="100")
    request = Request.blank(
        "/mixpanel/track",
        method="POST",
        headers={
            "Origin": ORIGIN,
            "X-User": "u",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
            "Host": "localhost:80",
        },
    )
    request.environ["wsgi.input"] = io.BytesIO(b'{"event": "Page Viewed", "x": "' + b"y" * 500)
    request.environ.pop("CONTENT_LENGTH", None)
    request.environ["wsgi.input_terminated"] = True  # what gunicorn says of a chunked body
    answer = request.get_response(app.app)
    assert answer.status_code == 413
    assert answer.json["error"] == "the body is larger than 100 bytes"


def test_rate_limit_answers_429_with_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(rate="0.5", burst="3", max_batch="3", device_cookie="mp_device")
    post(app, {"batch": [{"event": "Page Viewed"}] * 3}, 200)
    caplog.set_level(logging.WARNING, "pyramid_mixpanel")
    answer = post(app, {"event": "Page Viewed", "properties": {"Path": "/secret-path"}}, 429)
    assert answer.json["status_code"] == 429
    assert answer.json["error"] == "too many events; retry later"
    assert answer.headers["Retry-After"] == "2"
    # Another user has their own bucket; anonymous visitors are limited per address.
    post(app, {"event": "Page Viewed"}, 200, user="user-2")
    post(app, {"batch": [{"event": "Page Viewed"}] * 3}, 200, user=None)
    post(app, {"event": "Page Viewed"}, 429, user=None)
    assert state_of(app).stats["rate_limited"] == 2
    assert "mixpanel.relay_refused" in caplog.text
    assert "rate_limited" in caplog.text
    assert "secret-path" not in caplog.text  # refusals are logged without payload


def test_invalid_items_are_logged_without_payload(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pyramid_mixpanel")
    post(make_app(), {"event": "Page Viewed", "properties": {"Secret": "s3cr3t"}}, 400)
    assert "reason='invalid'" in caplog.text or "reason=invalid" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_trusted_proxies_decide_which_forwarded_address_is_believed(
    tracks: list[MixpanelTrack],
) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.9, 10.0.0.5"}
    post(make_app(), {"event": "Page Viewed"}, 200, headers=forwarded)
    post(make_app(trusted_proxies="127.0.0.1\n10.0.0.0/8"), {"event": "Page Viewed"}, 200,
         headers=forwarded)  # fmt: skip
    ips = [m["msg"]["properties"]["ip"] for m in messages(tracks)]
    assert ips == ["127.0.0.1", "203.0.113.9"]


def test_a_custom_path_and_the_static_helper() -> None:
    app = make_app(path="/api/analytics")
    post(app, {"event": "Page Viewed"}, 200, path="/api/analytics")
    app.post_json("/mixpanel/track", {}, status=404)
    script = app.get("/pyramid_mixpanel-static/relay.js")
    assert "navigator.sendBeacon" in script.text
    assert "data-mixpanel-click" in script.text


# -- settings ---------------------------------------------------------------------------------


def parse(**settings: object) -> t.Any:
    catalog = Catalog(AppEvents, AppEventProperties, AppProfileProperties)
    values = {f"mixpanel.relay.{key}": value for key, value in settings.items()}
    return parse_relay_settings(values, catalog)


def test_settings_defaults() -> None:
    relay = parse()
    assert relay.path == "/mixpanel/track"
    assert set(relay.events) == {
        "Page Viewed",
        "page_viewed",
        "Button/Link Clicked",
        "button_link_clicked",
    }
    assert {p.name for p in relay.event_properties.values()} == {"Title", "Path", "$referrer"}
    assert "dollar_referrer" in relay.event_properties
    assert relay.profile_properties == {}
    assert relay.csrf == "origin"
    assert relay.trusted_proxies == ()


def test_settings_from_python_values() -> None:
    relay = parse(events=["plan_upgraded"], trusted_proxies=("10.0.0.0/8",), csrf="OFF")
    assert set(relay.events) == {"Plan Upgraded", "plan_upgraded"}
    assert str(relay.trusted_proxies[0]) == "10.0.0.0/8"
    assert relay.csrf == "off"


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"events": "Page Veiwed"}, "Did you mean AppEvents.page_viewed ('Page Viewed')?"),
        ({"event_properties": "Path, Titel"}, "'Titel' is not declared in AppEventProperties"),
        ({"profile_properties": 3}, "expected a list"),
        ({"trusted_proxies": "10.0.0.300"}, "not an IP address or network"),
        ({"allowed_origins": "www.example.com"}, "not an origin"),
        ({"allowed_origins": "https://x.example/path"}, "not an origin"),
        ({"allowed_origins": "https://x.example:99999"}, "not an origin"),
        ({"path": "mixpanel/track"}, "must be a plain URL path starting with '/'"),
        ({"path": "false"}, "must be a plain URL path starting with '/'"),
        ({"distinct_id": "json.__doc__"}, "must name a callable"),
        ({"burst": "10", "max_batch": "50"}, "a full batch could never pass"),
        ({"csrf": "maybe"}, "must be one of origin, pyramid, off"),
        ({"rate": "0"}, "must be a finite number greater than 0"),
    ],
)
def test_bad_settings_fail_at_startup(settings: dict[str, object], error: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match="mixpanel.relay.") as raised:
        parse(**settings)
    assert error in str(raised.value)


def test_unknown_relay_settings_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pyramid_mixpanel")
    make_app(trusted_proxie="10.0.0.1")
    assert "Unknown setting mixpanel.relay.trusted_proxie is ignored." in caplog.text
    assert "Did you mean 'mixpanel.relay.trusted_proxies'?" in caplog.text
    # ... and the core settings parser leaves them to the relay: one warning, not two.
    assert caplog.text.count("trusted_proxie ") == 1


def test_empty_optional_settings_mean_not_set() -> None:
    relay = parse(device_cookie="", allowed_origins="")
    assert relay.allowed_origins == frozenset()


# -- helpers ----------------------------------------------------------------------------------


def test_client_ip_walks_forwarded_hops_from_the_right() -> None:
    import ipaddress

    proxies = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert client_ip("10.0.0.2", "198.51.100.1, 203.0.113.5, 10.0.0.9", proxies) == "203.0.113.5"
    assert client_ip("203.0.113.7", "198.51.100.1", proxies) == "203.0.113.7"
    assert client_ip("10.0.0.2", None, proxies) == "10.0.0.2"
    assert client_ip("10.0.0.2", "10.0.0.3", proxies) == "10.0.0.3"  # all trusted: leftmost
    assert client_ip("10.0.0.2", "garbage, 10.0.0.4", proxies) == "10.0.0.4"
    assert client_ip("::1", "2001:db8::1", proxies) == "2001:db8::1"
    assert client_ip(None, None, proxies) is None
    assert client_ip("10.0.0.2", "198.51.100.1", ()) == "10.0.0.2"


def test_device_properties_leave_unknown_parts_out() -> None:
    assert device_properties("curl/8.5.0") == {"$browser": "curl", "$browser_version": "8.5"}
    assert device_properties("something nobody knows") == {}
    assert device_properties("Wget") == {"$browser": "Wget"}  # no version known
    assert device_properties(IPHONE)["$browser"] == "Mobile Safari"
    assert device_properties("Mozilla/5.0 (X11; Linux x86_64) Firefox/130")["$os"] == "Linux"


def test_same_origin() -> None:
    own = "http://localhost:6543"
    assert same_origin("http://LOCALHOST:6543", None, own, ())
    assert not same_origin("http://localhost:6544", None, own, ())
    assert same_origin(None, "http://localhost:6543/page?x=1", own, ())
    assert not same_origin(None, "javascript:alert(1)", own, ())
    assert not same_origin(None, None, own, ())
    assert same_origin("https://app.example", None, own, {"https://app.example"})


def test_token_buckets_refill_and_forget_the_oldest_client() -> None:
    now = [100.0]
    buckets = TokenBuckets(rate=2.0, burst=4, max_clients=2, clock=lambda: now[0])
    assert buckets.take("a", 4) == 0
    assert buckets.take("a", 1) == pytest.approx(0.5)
    now[0] += 1.0  # two tokens back
    assert buckets.take("a", 2) == 0
    assert buckets.take("a", 1) == pytest.approx(0.5)
    now[0] += 60.0  # refills up to the burst only
    assert buckets.take("a", 4) == 0
    assert buckets.take("a", 1) > 0
    buckets.take("b")
    buckets.take("c")  # "a" is forgotten: the least recently seen
    assert len(buckets) == 2
    assert buckets.take("a", 4) == 0


def test_retry_after_is_whole_seconds() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(1.2) == "2"
    assert retry_after(30.0) == "30"


def test_cors_for_allowed_origins_of_the_site() -> None:
    app = make_app(allowed_origins="https://www.example.com")
    preflight = app.options(
        "/mixpanel/track",
        headers={"Origin": "https://www.example.com", "Access-Control-Request-Method": "POST"},
        status=204,
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
    assert preflight.headers["Access-Control-Allow-Headers"] == "Content-Type, X-CSRF-Token"
    assert preflight.headers["Vary"] == "Origin"
    answer = post(app, {"event": "Page Viewed"}, 200, headers={"Origin": "https://www.example.com"})
    assert answer.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    refused = post(app, {"event": "Nope"}, 400, headers={"Origin": "https://www.example.com"})
    assert refused.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    # Same origin: no CORS headers; other origins: no preflight, no headers.
    assert "Access-Control-Allow-Origin" not in post(app, {"event": "Page Viewed"}, 200).headers
    other = app.options("/mixpanel/track", headers={"Origin": "https://evil.example"}, status=405)
    assert "Access-Control-Allow-Origin" not in other.headers


def test_settings_added_after_the_include_count(tracks: list[MixpanelTrack]) -> None:
    with Configurator(settings={"mixpanel.token": "false"}) as config:
        config.add_request_method(user_from_header, "user", reify=True)
        config.include("pyramid_mixpanel.relay")
        # Another include (or main()) adds settings after the relay was included.
        config.add_settings({"mixpanel.relay.path": "/_e/collect"})
    app = webtest.TestApp(config.make_wsgi_app(), extra_environ={"HTTP_HOST": "localhost:80"})
    post(app, {"event": "Page Viewed"}, status=200, path="/_e/collect")
    post(app, {"event": "Page Viewed"}, status=404)  # the default path is not registered
    assert state_of(app).settings.path == "/_e/collect"


def test_a_path_pattern_that_would_capture_app_routes_is_refused() -> None:
    # Parsed in a configuration action: Pyramid wraps the error, whose text names the key.
    with pytest.raises(ConfigurationError, match="mixpanel.relay.path must be a plain URL"):
        make_app(path="/{anything}")


def test_the_relay_without_ua_parser_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ua_parser", None)  # as if not installed
    device_properties.cache_clear()
    with pytest.raises(ConfigurationError, match=r"pip install 'pyramid_mixpanel\[relay\]'"):
        make_app()
    with pytest.raises(MixpanelConfigurationError, match="needs the ua_parser package"):
        device_properties(CHROME + " (uncached)")
    # Without user-agent parsing the relay needs no ua-parser.
    post(make_app(parse_user_agent="false"), {"event": "Page Viewed"}, status=200)
    device_properties.cache_clear()
