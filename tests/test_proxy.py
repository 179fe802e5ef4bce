"""The browser-SDK proxy at the protocol level: a real Pyramid app (WebTest), no browser.

Requests are built exactly as ``mixpanel-browser`` 2.83 builds them (``_send_request`` and
``_encode_data_for_request`` of its ``mixpanel-core.js``): JSON or base64 of JSON, in a
``data`` form field posted by XHR (``application/x-www-form-urlencoded``) or by sendBeacon
(``text/plain``), or in the query string of a GET; ``verbose``, ``ip`` and ``_`` in the query.
Every encoding must deliver, through the app's ``sync`` delivery, to the loopback Mixpanel
stand-in that enforces Mixpanel's rules; every refusal must answer as the SDK expects.
"""

from __future__ import annotations

import base64
import json
import time
import typing as t
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import pytest
import webtest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_mixpanel import (
    MixpanelTrack,
)
from pyramid_mixpanel.observability import Observed
from pyramid_mixpanel.proxy import PROXY_KEY, ProtocolError, decode_call, encode_answer
from pyramid_mixpanel.relay import RELAY_KEY, RelayState

from .loopback import MixpanelStandIn
from .test_relay import CHROME, user_from_header

TOKEN = "proxy-test-token"
ORIGIN = "http://localhost"
PREFIX = "/lantern"
LIB = {"mp_lib": "web", "$lib_version": "2.83.0"}


@pytest.fixture
def mixpanel_api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


def make_app(api: MixpanelStandIn | None, **settings: str) -> webtest.TestApp:
    base = {
        "mixpanel.token": TOKEN if api is not None else "false",
        "mixpanel.delivery": "sync",
        # The relay's test catalogue: the proxy applies the relay's rules to it.
        "mixpanel.events": "tests.test_relay.AppEvents",
        "mixpanel.event_properties": "tests.test_relay.AppEventProperties",
        "mixpanel.profile_properties": "tests.test_relay.AppProfileProperties",
        "mixpanel.relay.events": "Plan Upgraded",
        "mixpanel.relay.event_properties": "Plan",
        "mixpanel.relay.profile_properties": "Dark Mode",
    }
    if api is not None:
        base["mixpanel.api_host"] = api.base_url
    base.update(settings)
    with Configurator(settings=base) as config:
        config.add_request_method(user_from_header, "user", reify=True)
        config.include("pyramid_mixpanel.proxy")
        app = config.make_wsgi_app()
    return webtest.TestApp(
        app, extra_environ={"HTTP_HOST": "localhost:80", "REMOTE_ADDR": "203.0.113.9"}
    )


def event(name: str = "Plan Upgraded", /, **properties: t.Any) -> dict[str, t.Any]:
    """An event as the SDK builds it for an anonymous visitor (``_.info.properties`` + ids)."""
    device_id = properties.pop("device_id", "0b7e2a52-2d4e-4f7a-9a55-1a1c7c0e8b11")
    return {
        "event": name,
        "properties": {
            "$os": "Linux",
            "$browser": "Chrome",
            "$current_url": "http://localhost/pricing",
            "$browser_version": 126,
            "$screen_height": 1080,
            "$screen_width": 1920,
            **LIB,
            "$insert_id": uuid.uuid4().hex[:16],
            "time": time.time(),
            "distinct_id": f"$device:{device_id}",
            "$device_id": device_id,
            "token": TOKEN,
            **properties,
        },
    }


def encode(payload: object, fmt: str = "base64") -> str:
    """``_encode_data_for_request`` then ``encodeURIComponent``, as the SDK does."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    if fmt == "base64":
        text = base64.b64encode(text.encode()).decode()
    return quote(text, safe="-_.!~*'()")


def send(
    app: webtest.TestApp,
    payload: object,
    *,
    endpoint: str = "track",
    status: int | str = "*",
    fmt: str = "base64",
    transport: str = "xhr",
    verbose: bool = True,
    ip: int = 1,
    user: str | None = None,
    headers: dict[str, str] | None = None,
) -> webtest.TestResponse:
    """One request of the SDK: XHR (POST form), sendBeacon (POST text) or GET."""
    query = {"ip": ip, "_": str(int(time.time() * 1000))}
    if verbose:
        query["verbose"] = 1
    sent = {"Origin": ORIGIN, "User-Agent": CHROME}
    if user:
        sent["X-User"] = user
    sent.update(headers or {})
    sent = {key: value for key, value in sent.items() if value}
    data = "data=" + encode(payload, fmt)
    url = f"{PREFIX}/{endpoint}/"
    if transport == "get":
        return app.get(f"{url}?{data}&{urlencode(query)}", headers=sent, status=status)
    content_type = {
        "xhr": "application/x-www-form-urlencoded",
        "beacon": "text/plain;charset=UTF-8",
    }[transport]
    return app.post(
        f"{url}?{urlencode(query)}",
        data.encode(),
        headers=sent,
        content_type=content_type,
        status=status,
    )


def stats(app: webtest.TestApp) -> dict[str, int]:
    state = app.app.registry[RELAY_KEY]
    assert isinstance(state, RelayState)
    return dict(state.stats.snapshot())


# -- every encoding the SDK sends ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["base64", "json"])
@pytest.mark.parametrize("transport", ["xhr", "beacon", "get"])
@pytest.mark.parametrize("batch", [True, False])
def test_every_encoding_is_delivered(
    mixpanel_api: MixpanelStandIn, fmt: str, transport: str, batch: bool
) -> None:
    app = make_app(mixpanel_api)
    item = event(Plan="pro")
    response = send(app, [item] if batch else item, fmt=fmt, transport=transport, status=200)
    assert response.json == {"status": 1, "error": None}
    [sent] = mixpanel_api.events()
    properties = sent["properties"]
    assert sent["event"] == "Plan Upgraded"
    assert properties["token"] == TOKEN
    assert properties["Plan"] == "pro"
    assert properties["distinct_id"] == f"$device:{item['properties']['$device_id']}"
    assert properties["$device_id"] == item["properties"]["$device_id"]
    assert properties["$insert_id"] == item["properties"]["$insert_id"]
    # Mixpanel takes milliseconds; the delivery sends them.
    assert properties["time"] == round(item["properties"]["time"] * 1000)
    # The server's address (REMOTE_ADDR), and its reading of the user agent.
    assert properties["ip"] == "203.0.113.9"
    assert properties["$browser"] == "Chrome"
    assert properties["$browser_version"] == "126.0"
    assert properties["$os"] == "Windows"
    # What the SDK says about itself stays: Mixpanel shows these as web events.
    assert properties["mp_lib"] == "web"
    assert properties["$current_url"] == "http://localhost/pricing"
    assert mixpanel_api.refused == []


def test_the_answer_without_verbose_is_1_or_0(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    ok = send(app, event(), verbose=False, status=200)
    assert (ok.body, ok.content_type) == (b"1", "text/plain")
    refused = send(app, event("Not Allowed"), verbose=False, status=400)
    assert refused.body == b"0"
    assert ok.headers["Cache-Control"] == "no-store"


def test_ip_0_means_no_geolocation(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    send(app, event(), ip=0, status=200)
    [sent] = mixpanel_api.events()
    # Without ip, the delivery sends ip=0: Mixpanel must not geolocate our server instead.
    assert sent["properties"]["ip"] == "0"


def test_a_batch_of_50_in_base64_fits_the_default_body_limit(
    mixpanel_api: MixpanelStandIn,
) -> None:
    # The SDK's batch_size is 50; a long page address makes each event ~1 KiB in base64.
    app = make_app(mixpanel_api, **{"mixpanel.relay.burst": "100"})
    url = "http://localhost/" + "p" * 240
    send(app, [event(**{"$current_url": url}) for _ in range(50)], status=200)
    assert len(mixpanel_api.events()) == 50


# -- refusals the SDK understands -----------------------------------------------------------


def test_a_foreign_token_is_refused_and_never_delivered(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    foreign = event(token="someone-elses-token")
    response = send(app, [event(), foreign], status=403)
    assert response.json["status"] == 0
    assert "token" in response.json["error"]
    assert "someone-elses-token" not in response.text
    assert mixpanel_api.events() == []
    assert stats(app)["foreign_token"] == 1
    missing = event()
    del missing["properties"]["token"]
    send(app, missing, status=403)
    send(app, {"$set": {"Dark Mode": True}, "$token": "x"}, endpoint="engage", status=403)


def test_disallowed_items_are_refused_and_the_rest_delivered(
    mixpanel_api: MixpanelStandIn,
) -> None:
    app = make_app(mixpanel_api)
    response = send(app, [event(), event("Hacked"), event(Secret="x")], status=200)
    # 200: the SDK drops a batch on 4xx, and one item was good; the error says what was not.
    assert response.json["status"] == 1
    assert response.json["error"].startswith("2 of 3 items were refused: event 'Hacked'")
    assert [e["event"] for e in mixpanel_api.events()] == ["Plan Upgraded"]
    assert stats(app)["invalid"] == 2
    assert stats(app)["accepted"] == 1
    all_bad = send(app, [event("Hacked")], status=400)
    assert all_bad.json["status"] == 0


def test_a_declared_but_not_allowed_event_says_so() -> None:
    app = make_app(None, **{"mixpanel.relay.events": "Page Viewed"})
    response = send(app, event("Plan Upgraded"), status=400)
    assert "declared but not allowed" in response.json["error"]


def test_sdk_properties_need_no_allow_list_but_app_properties_do(
    mixpanel_api: MixpanelStandIn,
) -> None:
    app = make_app(mixpanel_api)
    send(app, event(utm_source="news", gclid="abc", **{"$duration": 1.5}), status=200)
    [sent] = mixpanel_api.events()
    assert sent["properties"]["utm_source"] == "news"
    assert sent["properties"]["$duration"] == 1.5
    response = send(app, event(Plam="pro"), status=400)
    assert "Did you mean 'Plan'" in response.json["error"]


def test_values_are_checked(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    for bad in ({"Plan": {"nested": 1}}, {"Plan": "x" * 2000}, {"Plan": 2**60}):
        send(app, event(**bad), status=400)
    send(app, event(time=time.time() - 6 * 86400), status=400)
    send(app, event(**{"$insert_id": "not valid!"}), status=400)
    bad_device = event()
    bad_device["properties"]["$device_id"] = "not-a-uuid"
    bad_device["properties"]["distinct_id"] = "$device:not-a-uuid"
    send(app, bad_device, status=400)
    send(app, {"event": "Plan Upgraded", "properties": [], "extra": 1}, status=400)
    send(app, {"event": "Plan Upgraded", "properties": []}, status=400)
    send(app, [1, "x"], status=400)
    send(app, {"event": "", "properties": {"token": TOKEN}}, status=400)
    send(app, {"event": "Plan Upgraded", "properties": {"token": TOKEN}}, status=401)
    assert mixpanel_api.events() == []


def test_x_mixpanel_headers_do_not_reach_proxied_events(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api, **{"mixpanel.header_properties": "Plan"})
    send(app, event(), headers={"X-Mixpanel-Plan": "forged"}, status=200)
    [sent] = mixpanel_api.events()
    assert "Plan" not in sent["properties"]


# -- identity -------------------------------------------------------------------------------


def test_the_signed_in_user_is_the_server_s(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    device_id = str(uuid.uuid4())
    # Not identified in the browser yet: the server knows the user.
    send(app, event(device_id=device_id), user="42", status=200)
    # identify("42") in the browser: the $identify event, then events as "42".
    identify = event("$identify", device_id=device_id, distinct_id="42")
    identify["properties"].update({"$user_id": "42", "$anon_distinct_id": f"$device:{device_id}"})
    send(app, identify, user="42", status=200)
    send(app, event(device_id=device_id, distinct_id="42", **{"$user_id": "42"}), user="42")
    sent = mixpanel_api.events()
    assert [e["event"] for e in sent] == ["Plan Upgraded", "$identify", "Plan Upgraded"]
    for record in sent:
        assert record["properties"]["distinct_id"] == "42"
        assert record["properties"]["$user_id"] == "42"
        assert record["properties"]["$device_id"] == device_id
    anonymous = event(device_id=device_id)
    send(app, anonymous, status=200)
    assert mixpanel_api.person_of(mixpanel_api.events()[-1]) == mixpanel_api.person_of(sent[0])


def test_identity_claims_the_server_does_not_confirm_are_refused(
    mixpanel_api: MixpanelStandIn,
) -> None:
    app = make_app(mixpanel_api)
    claim = event(distinct_id="42", **{"$user_id": "42"})
    response = send(app, claim, status=403)
    assert "has not signed in" in response.json["error"]
    response = send(app, claim, user="7", status=403)
    assert "another user" in response.json["error"]
    assert mixpanel_api.events() == []
    assert stats(app)["identity"] == 2


def test_the_device_cookie_wins_over_the_sdk_s_device_id(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(
        mixpanel_api,
        **{
            "mixpanel.device_cookie": "mp_device",
            "mixpanel.cookie_secret": "proxy-test-cookie-secret-0123456789",
        },
    )
    response = send(app, event(), status=200)
    assert "mp_device=" in response.headers["Set-Cookie"]
    [sent] = mixpanel_api.events()
    assert sent["properties"]["$device_id"] != event()["properties"]["$device_id"]
    assert sent["properties"]["distinct_id"] == f"$device:{sent['properties']['$device_id']}"


def test_identify_links_in_original_id_merge() -> None:
    with MixpanelStandIn(id_merge="original") as api:
        app = make_app(api, **{"mixpanel.id_merge": "original"})
        device_id = str(uuid.uuid4())
        identify = event("$identify", device_id=device_id, distinct_id="42")
        send(app, identify, user="42", status=200)
        [sent] = api.events()
        assert sent["properties"]["$identified_id"] == "42"
        assert sent["properties"]["$anon_id"] == device_id


def test_identify_without_a_device_id_links_nothing(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    identify = {"event": "$identify", "properties": {"token": TOKEN, "distinct_id": "42"}}
    send(app, identify, user="42", status=200)
    assert mixpanel_api.events() == []


# -- profiles and groups -------------------------------------------------------------------


def people(operation: str, values: object, distinct_id: str = "42") -> dict[str, t.Any]:
    return {operation: values, "$token": TOKEN, "$distinct_id": distinct_id}


def test_profile_updates_of_the_signed_in_user(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    sdk_set = {"Dark Mode": True, "$os": "Linux", "$browser": "Chrome"}
    send(app, people("$set", sdk_set), endpoint="engage", user="42", status=200)
    send(app, people("$unset", ["Dark Mode"]), endpoint="engage", user="42", status=200)
    send(app, people("$add", {"Dark Mode": 1}), endpoint="engage", user="42", status=200)
    send(app, people("$union", {"Dark Mode": [1]}), endpoint="engage", user="42", ip=0)
    first, second, third, fourth = mixpanel_api.profiles()
    assert first["$distinct_id"] == "42"
    assert first["$set"] == {
        "Dark Mode": True,
        "$os": "Windows",
        "$browser": "Chrome",
        **{"$browser_version": "126.0"},
    }
    assert first["$ip"] == "203.0.113.9"
    assert first["$token"] == TOKEN
    assert second["$unset"] == ["Dark Mode"]
    assert third["$add"] == {"Dark Mode": 1}
    assert fourth["$union"] == {"Dark Mode": [1]}
    assert fourth["$ip"] == "0"  # ip=0: not geolocated (the delivery's "no address")


@pytest.mark.parametrize(
    ("payload", "user", "status", "error"),
    [
        (people("$set", {"Dark Mode": True}), None, 403, "need a signed-in user"),
        (people("$set", {"Dark Mode": True}, "7"), "42", 403, "another user"),
        (people("$set", {"Karma": 1}), "42", 400, "not allowed from front ends"),
        (people("$delete", ""), "42", 403, "$delete is not accepted"),
        (people("$add", {"Dark Mode": "x"}), "42", 400, "$add takes numbers"),
        (people("$union", {"Dark Mode": 1}), "42", 400, "$union takes lists"),
        (people("$unset", "Dark Mode"), "42", 400, "$unset takes a list"),
        (people("$set", {}), "42", 400, "non-empty object"),
        ({**people("$set", {"Dark Mode": 1}), "$add": {}}, "42", 400, "one operation"),
    ],
)
def test_profile_refusals(
    mixpanel_api: MixpanelStandIn, payload: object, user: str | None, status: int, error: str
) -> None:
    app = make_app(mixpanel_api)
    response = send(app, payload, endpoint="engage", user=user, status=status)
    assert error in response.json["error"]
    assert mixpanel_api.profiles() == []


def test_group_updates_need_pass_through(mixpanel_api: MixpanelStandIn) -> None:
    group = {"$set": {"Seats": 5}, "$token": TOKEN, "$group_key": "company", "$group_id": "acme"}
    closed = make_app(mixpanel_api)
    response = send(closed, group, endpoint="groups", user="42", status=403)
    assert "pass_through" in response.json["error"]
    app = make_app(mixpanel_api, **{"mixpanel.proxy.pass_through": "true"})
    send(app, group, endpoint="groups", user="42", status=200)
    send(app, group, endpoint="groups", status=403)
    send(app, {**group, "$group_key": ""}, endpoint="groups", user="42", status=400)
    send(app, {**group, "$group_id": True}, endpoint="groups", user="42", status=400)
    [update] = mixpanel_api.received["groups"]
    assert (update["$group_key"], update["$group_id"], update["$set"]) == (
        "company",
        "acme",
        {"Seats": 5},
    )


def test_pass_through_takes_any_names(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api, **{"mixpanel.proxy.pass_through": "true"})
    send(app, event("Anything", Whatever=[1, 2]), status=200)
    send(app, people("$set", {"Karma": 3}), endpoint="engage", user="42", status=200)
    [sent] = mixpanel_api.events()
    assert (sent["event"], sent["properties"]["Whatever"]) == ("Anything", [1, 2])
    assert mixpanel_api.profiles()[0]["$set"]["Karma"] == 3
    send(app, event("Anything", Nested={"a": 1}), status=400)  # shapes are still checked
    # Mixpanel's limit on properties (reference/import-events) holds in pass-through too.
    crowded = event("Anything", **{f"p{n}": n for n in range(260)})
    assert "Mixpanel takes fewer than 255" in send(app, crowded, status=400).json["error"]


def test_page_views_of_the_sdk_are_taken(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    view = event("$mp_web_page_view", current_page_title="Pricing", current_url_path="/pricing")
    send(app, view, status=200)
    [sent] = mixpanel_api.events()
    assert sent["properties"]["current_page_title"] == "Pricing"


# -- the call as a whole --------------------------------------------------------------------


def test_flags_and_settings_answer_empty_or_refuse() -> None:
    app = make_app(None)
    assert app.get(f"{PREFIX}/flags/?context=%7B%7D", status=200).json == {"flags": {}}
    assert app.get(f"{PREFIX}/settings/?sdk_config=1", status=200).json == {}
    refusing = make_app(None, **{"mixpanel.proxy.flags": "refuse"})
    response = refusing.get(f"{PREFIX}/flags/", status=403)
    assert "mixpanel.proxy.flags" in response.text
    assert stats(refusing)["flags"] == 1


def test_recordings_and_unknown_endpoints_are_refused() -> None:
    app = make_app(None)
    response = app.post(f"{PREFIX}/record/?verbose=1", b"x", status=403)
    assert "session recordings" in response.json["error"]
    app.get(f"{PREFIX}/decide", status=404)
    assert stats(app)["recording"] == 1


def test_without_a_trailing_slash_too(mixpanel_api: MixpanelStandIn) -> None:
    app = make_app(mixpanel_api)
    app.post(
        f"{PREFIX}/track?verbose=1",
        ("data=" + encode(event())).encode(),
        headers={"Origin": ORIGIN},
        content_type="application/x-www-form-urlencoded",
        status=200,
    )
    assert len(mixpanel_api.events()) == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "", "Referer": "http://localhost/page"}, 200),
        ({"Origin": "", "Referer": "https://evil.example/page"}, 403),
        ({"Origin": "null"}, 403),
    ],
)
def test_cross_site_calls_are_refused(headers: dict[str, str], status: int) -> None:
    app = make_app(None)
    send(app, event(), headers=headers, status=status)


def test_allowed_origins_get_cors_answers() -> None:
    app = make_app(None, **{"mixpanel.relay.allowed_origins": "https://www.example.com"})
    response = send(app, event(), headers={"Origin": "https://www.example.com"}, status=200)
    assert response.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


def test_csrf_off_takes_any_origin_and_pyramid_mode_checks_the_origin() -> None:
    send(make_app(None, **{"mixpanel.relay.csrf": "off"}), event(), headers={"Origin": ""})
    pyramid_mode = make_app(None, **{"mixpanel.relay.csrf": "pyramid"})
    send(pyramid_mode, event(), status=200)  # no CSRF token: sendBeacon cannot send one
    send(pyramid_mode, event(), headers={"Origin": "https://evil.example"}, status=403)


def test_rate_limit_answers_429_with_retry_after() -> None:
    app = make_app(None, **{"mixpanel.relay.rate": "1", "mixpanel.relay.burst": "50"})
    send(app, [event() for _ in range(50)], status=200)
    response = send(app, event(), status=429)
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json["status"] == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"data=" + b"e" * 600_000, "application/x-www-form-urlencoded", 413, "too_large"),
        (b"data=%5B%5D", "application/x-www-form-urlencoded", 400, "bad_payload"),
        (b"data=bm90IGpzb24=", "application/x-www-form-urlencoded", 400, "bad_payload"),
        (b"data=!!!", "application/x-www-form-urlencoded", 400, "bad_payload"),
        (b"data=%22text%22", "application/x-www-form-urlencoded", 400, "bad_payload"),
        (b"data=MQ%3D%3D", "application/x-www-form-urlencoded", 400, "bad_payload"),
        (b"nothing=1", "application/x-www-form-urlencoded", 400, "bad_payload"),
        (b"data=\xff\xfe", "text/plain", 400, "bad_payload"),
        (b"&" * 100, "text/plain", 400, "bad_payload"),
        (b'data={"event":1}', "application/json", 415, "content_type"),
    ],
)
def test_malformed_calls(body: bytes, content_type: str, status: int, reason: str) -> None:
    app = make_app(None)
    response = app.post(
        f"{PREFIX}/track/?verbose=1",
        body,
        headers={"Origin": ORIGIN},
        content_type=content_type,
        status=status,
    )
    assert response.json["status"] == 0
    assert stats(app)[reason] == 1


def test_a_batch_larger_than_max_batch_is_413_so_the_sdk_halves_it() -> None:
    app = make_app(None, **{"mixpanel.relay.max_batch": "2"})
    send(app, [event(), event(), event()], status=413)


def test_methods_other_than_get_and_post() -> None:
    app = make_app(None)
    response = app.put(f"{PREFIX}/track/", b"", headers={"Origin": ORIGIN}, status=405)
    assert response.headers["Allow"] == "GET, POST"


def test_testing_mode_records_without_a_token_to_compare() -> None:
    app = make_app(None)
    tracks: list[MixpanelTrack] = []
    from pyramid_mixpanel.lifecycle import LISTENERS

    LISTENERS.append(tracks.append)
    try:
        send(app, event(token="whatever"), status=200)
    finally:
        LISTENERS.remove(tracks.append)
    [track] = tracks
    [message] = track.mocked_messages
    assert message["msg"]["event"] == "Plan Upgraded"


# -- settings -------------------------------------------------------------------------------


def test_settings_are_parsed_once() -> None:
    app = make_app(
        None,
        **{
            "mixpanel.proxy.prefix": "/e9/",
            "mixpanel.proxy.flags": "REFUSE",
            "mixpanel.proxy.max_body_bytes": "1000",
        },
    )
    proxy = app.app.registry[PROXY_KEY]
    assert (proxy.prefix, proxy.flags, proxy.max_body_bytes) == ("/e9", "refuse", 1000)
    app.get("/e9/flags", status=403)


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("mixpanel.proxy.prefix", "/", "below the site's root"),
        ("mixpanel.proxy.prefix", "/{x}", "plain URL path"),
        ("mixpanel.proxy.flags", "forward", "must be one of empty, refuse"),
        ("mixpanel.proxy.max_body_bytes", "0", "mixpanel.proxy.max_body_bytes"),
    ],
)
def test_bad_settings_stop_the_app(key: str, value: str, error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        make_app(None, **{key: value})


def test_a_typo_under_mixpanel_proxy_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    make_app(None, **{"mixpanel.proxy.prefx": "/x"})
    assert "mixpanel.proxy.prefix" in caplog.text


# -- hostile input --------------------------------------------------------------------------


def test_decode_call_directly() -> None:
    call = decode_call("GET", "data=" + encode({"a": 1}, "json") + "&ip=0", "", None, 5)
    assert (call.items, call.batch) == ([{"a": 1}], False)
    assert (call.verbose, call.geolocate) == (False, False)
    with pytest.raises(ProtocolError):
        decode_call("GET", "", "", None, 5)
    assert encode_answer(False, True, None) == (b"1", "text/plain")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda text: ("data=" + quote(text)).encode()),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda payload: ("data=" + encode(payload, "json")).encode()),
    ),
    query=st.text(max_size=60),
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "text/plain", "x/y"]),
    endpoint=st.sampled_from(["track", "engage", "groups"]),
    user=st.sampled_from([None, "42"]),
)
def test_any_body_gets_a_documented_answer(
    hostile_app: webtest.TestApp,
    body: bytes,
    query: str,
    content_type: str,
    endpoint: str,
    user: str | None,
) -> None:
    headers = {"Origin": ORIGIN}
    if user:
        headers["X-User"] = user
    response = hostile_app.post(
        f"{PREFIX}/{endpoint}/?{quote(query, safe='=&')}",
        body,
        headers=headers,
        content_type=content_type,
        status="*",
    )
    assert response.status_int in (200, 400, 401, 403, 413, 415), response.text
    assert response.body in (b"0", b"1") or response.json["status"] in (0, 1)


@pytest.fixture(scope="module")
def hostile_app() -> webtest.TestApp:
    return make_app(
        None,
        **{"mixpanel.relay.rate": "100000", "mixpanel.relay.burst": "100000"},
    )


def test_an_old_sdk_distinct_id_equal_to_the_device_id_is_anonymous(
    mixpanel_api: MixpanelStandIn,
) -> None:
    # identify() of a visitor whose persisted distinct_id had no "$device:" prefix keeps it as
    # $device_id ($had_persisted_distinct_id): still the anonymous visitor, not a user claim.
    app = make_app(mixpanel_api)
    device_id = str(uuid.uuid4())
    old = event(device_id=device_id, distinct_id=device_id, **{"$had_persisted_distinct_id": True})
    send(app, old, status=200)
    [sent] = mixpanel_api.events()
    assert sent["properties"]["distinct_id"] == f"$device:{device_id}"
    assert "$had_persisted_distinct_id" not in sent["properties"]


def test_relay_and_proxy_share_rules_buckets_and_counters() -> None:
    settings = {
        "mixpanel.token": "false",
        "mixpanel.relay.rate": "1",
        "mixpanel.relay.burst": "2",
        "mixpanel.relay.max_batch": "2",
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel.relay")
        config.include("pyramid_mixpanel.proxy")
        app = webtest.TestApp(config.make_wsgi_app(), extra_environ={"HTTP_HOST": "localhost:80"})
    viewed = event("Page Viewed")
    send(app, [viewed, viewed], status=200)
    send(app, viewed, status=429)  # one bucket per visitor, whichever endpoint emptied it
    app.post_json(
        "/mixpanel/track", {"event": "Page Viewed"}, headers={"Origin": ORIGIN}, status=401
    )
    counters = stats(app)
    assert (counters["accepted"], counters["rate_limited"], counters["anonymous"]) == (2, 1, 1)


def test_unknown_sdk_properties_are_dropped_and_counted(
    mixpanel_api: MixpanelStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # A newer SDK may add a property of its own: the event is kept without it, and it shows.
    app = make_app(mixpanel_api)
    send(app, event(**{"$new_sdk_thing": "v", "mp_new": 1}), status=200)
    [sent] = mixpanel_api.events()
    assert "$new_sdk_thing" not in sent["properties"]
    assert "mp_new" not in sent["properties"]
    assert stats(app)["dropped_properties"] == 2
    assert "$new_sdk_thing" in caplog.text
    assert "'v'" not in caplog.text  # names, never values
    update = people("$set", {"Dark Mode": False, "$new_sdk_thing": "v"})
    send(app, update, endpoint="engage", user="42", status=200)
    assert mixpanel_api.profiles()[0]["$set"] == {
        "Dark Mode": False,
        "$os": "Windows",
        "$browser": "Chrome",
        "$browser_version": "126.0",
    }
    send(app, people("$unset", ["Dark Mode", "$gone"]), endpoint="engage", user="42")
    assert mixpanel_api.profiles()[1]["$unset"] == ["Dark Mode"]
    only_unknown = people("$set_once", {"$new_sdk_thing": "v"})
    response = send(app, only_unknown, endpoint="engage", user="42", status=400)
    assert "nothing this app takes" in response.json["error"]
    assert stats(app)["dropped_properties"] == 4  # the refused update dropped nothing
    # Exported calls are calls: properties left out are not a result of one.
    calls = dict(Observed(app.app.registry).relay_calls() or [])
    assert "dropped_properties" not in calls
    assert calls["accepted"] == 3


def test_identify_carries_the_client_in_legacy_id_merge() -> None:
    with MixpanelStandIn(id_merge="legacy") as api:
        app = make_app(api, **{"mixpanel.id_merge": "legacy"})
        device_id = str(uuid.uuid4())
        identify = event("$identify", device_id=device_id, distinct_id="42")
        send(app, identify, user="42", status=200)
        [sent] = api.events()
        assert sent["event"] == "$create_alias"
        assert sent["properties"]["alias"] == "42"
        assert sent["properties"]["ip"] == "203.0.113.9"
        assert sent["properties"]["$browser"] == "Chrome"


header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=80
)


@settings(max_examples=100, deadline=None)
@given(
    origin=header_text,
    referer=header_text,
    forwarded_for=header_text,
    user_agent=header_text,
    query=st.text(max_size=60),
    method=st.sampled_from(["GET", "POST", "OPTIONS", "DELETE"]),
)
def test_any_headers_get_a_documented_answer(
    hostile_app: webtest.TestApp,
    origin: str,
    referer: str,
    forwarded_for: str,
    user_agent: str,
    query: str,
    method: str,
) -> None:
    headers = {
        "Origin": origin,
        "Referer": referer,
        "X-Forwarded-For": forwarded_for,
        "User-Agent": user_agent,
    }
    body = ("data=" + encode(event())).encode()
    response = hostile_app.request(
        f"{PREFIX}/track/?{quote(query, safe='=&')}",
        method=method,
        headers={key: value for key, value in headers.items() if value},
        body=body if method == "POST" else b"",
        content_type="application/x-www-form-urlencoded",
        expect_errors=True,
    )
    assert response.status_int in (200, 204, 400, 401, 403, 405), response.text
