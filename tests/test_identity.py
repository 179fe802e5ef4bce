"""One person from first anonymous visit to signed-in user: cookie, identify, reset, merge."""

from __future__ import annotations

import dataclasses
import logging
import typing as t
import uuid

import pytest
import requests
import webtest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from pyramid.request import Request
from pyramid.response import Response

from pyramid_mixpanel import (
    Events,
    MixpanelConfigurationError,
    MixpanelTrack,
    ProfileProperties,
    get_runtime,
)
from pyramid_mixpanel.identity import DEVICE_ID, DeviceCookie, anonymous_id, new_device_id
from pyramid_mixpanel.runtime import Runtime
from pyramid_mixpanel.settings import parse_settings

from .browser import serve
from .identity_model import UUID_V4, IdentityModel
from .loopback import MixpanelStandIn, wait_until

SECRET = "identity-tests-cookie-secret-0123456789"  # a test value
TOKEN = "tok-identity-0123456789"
USER_COOKIE = "session_user"  # stands in for the app's session


@dataclasses.dataclass
class User:
    distinct_id: str


def get_user(request: Request) -> User | None:
    distinct_id = request.cookies.get(USER_COOKIE)
    return User(distinct_id) if distinct_id else None


def page(request: Request) -> Response:
    """Any page: a page view, by whoever the visitor is."""
    request.mixpanel.track(Events.page_viewed)
    return Response("ok")


def signup(request: Request) -> Response:
    """Create the account: identify, then the sign-up event and the profile."""
    user_id = f"user-{request.params['name']}"
    request.mixpanel.identify(user_id)
    request.mixpanel.track(Events.user_signed_up)
    request.mixpanel.profile_set({ProfileProperties.dollar_name: request.params["name"]})
    response = HTTPFound(location="/page")
    response.set_cookie(USER_COOKIE, user_id)
    return response


def logout(request: Request) -> Response:
    request.mixpanel.track(Events.user_disabled)  # any event the user does before leaving
    request.mixpanel.reset()
    response = HTTPFound(location="/page")
    response.delete_cookie(USER_COOKIE)
    return response


def anonymous_call(request: Request) -> Response:
    """A view that never learns who the visitor is, e.g. a public sign-up form's page."""
    return Response(request.mixpanel.distinct_id or "none")


def build(**settings: str) -> t.Any:
    base = {
        "mixpanel.token": "false",
        "mixpanel.device_cookie": "mp_device",
        "mixpanel.cookie_secret": SECRET,
        **settings,
    }
    base = {key: value for key, value in base.items() if value != "unset"}
    with Configurator(settings=base) as config:
        config.include("pyramid_mixpanel")
        config.include("pyramid_mixpanel.relay")
        config.add_request_method(get_user, "user", reify=True)
        for name, view in (
            ("page", page),
            ("signup", signup),
            ("logout", logout),
            ("who", anonymous_call),
        ):
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name)
    return config.make_wsgi_app()


def make_app(**settings: str) -> webtest.TestApp:
    return webtest.TestApp(build(**settings), extra_environ={"HTTP_HOST": "localhost:80"})


def sent(tracks: list[MixpanelTrack]) -> list[dict[str, t.Any]]:
    return [m["msg"] for track in tracks for m in track.mocked_messages]


def device_in(app: webtest.TestApp, value: str) -> str | None:
    cookie = get_runtime(app.app.registry).device_cookie
    assert cookie is not None
    return cookie.device_id(value)


# -- the device cookie ------------------------------------------------------------------------


def test_anonymous_visitors_get_a_signed_device_id_and_their_own_distinct_id(
    tracks: list[MixpanelTrack],
) -> None:
    app = make_app()
    first = app.get("/page")
    cookie = first.headers["Set-Cookie"]
    for attribute in ("mp_device=", "Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=31536000"):
        assert attribute in cookie
    assert "secure" not in cookie.lower()  # plain http; see the HTTPS test
    device_id = device_in(app, app.cookies["mp_device"])
    assert device_id is not None and UUID_V4.fullmatch(device_id)
    second = app.get("/page")
    assert "Set-Cookie" not in second.headers  # the same visitor, the same id
    for message in sent(tracks):
        assert message["properties"]["distinct_id"] == f"$device:{device_id}"
        assert message["properties"]["$device_id"] == device_id
        assert "$user_id" not in message["properties"]


def test_the_cookie_is_secure_on_https_or_when_asked() -> None:
    https = make_app().get("/page", extra_environ={"wsgi.url_scheme": "https"})
    assert "; secure;" in https.headers["Set-Cookie"]
    always = make_app(**{"mixpanel.device_cookie_secure": "true"}).get("/page")
    assert "; secure;" in always.headers["Set-Cookie"]
    never = make_app(**{"mixpanel.device_cookie_secure": "false"})
    answer = never.get("/page", extra_environ={"wsgi.url_scheme": "https"})
    assert "secure" not in answer.headers["Set-Cookie"].lower()


def test_a_forged_cookie_gets_a_fresh_id_never_the_one_it_names(
    tracks: list[MixpanelTrack],
) -> None:
    app = make_app()
    victim = new_device_id()
    other_app = DeviceCookie("mp_device", "another-app-cookie-secret-0123456789")
    for value in (victim, other_app.value(victim), DeviceCookie("x", SECRET).value(victim)[:-2]):
        app.reset()
        app.set_cookie("mp_device", value)
        answer = app.get("/page")
        issued = device_in(app, app.cookies["mp_device"])
        assert issued not in (None, victim)
        assert "mp_device=" in answer.headers["Set-Cookie"]
    assert victim not in str(sent(tracks))


def test_signed_in_events_carry_both_ids(tracks: list[MixpanelTrack]) -> None:
    app = make_app()
    app.get("/page")
    device_id = device_in(app, app.cookies["mp_device"])
    app.set_cookie(USER_COOKIE, "user-7")
    app.get("/page")
    properties = sent(tracks)[-1]["properties"]
    assert properties["distinct_id"] == "user-7"
    assert properties["$user_id"] == "user-7"
    assert properties["$device_id"] == device_id


def test_without_the_cookie_setting_nothing_changes(tracks: list[MixpanelTrack]) -> None:
    app = make_app(**{"mixpanel.device_cookie": "unset", "mixpanel.cookie_secret": "unset"})
    assert app.get("/who").text == "none"
    with pytest.raises(AttributeError, match="distinct_id must be set"):
        app.get("/page")
    app.set_cookie(USER_COOKIE, "user-7")
    answer = app.get("/page")
    assert "Set-Cookie" not in answer.headers
    assert sent(tracks)[-1]["properties"].keys() == {"distinct_id"}  # as the original sent


# -- identify and reset -----------------------------------------------------------------------


def journey(app: webtest.TestApp) -> str:
    """Anonymous page view, sign-up, later page view; the device id used throughout."""
    app.get("/page")
    device_id = device_in(app, app.cookies["mp_device"])
    assert device_id is not None
    app.post("/signup", {"name": "ada"}, status=302)
    app.get("/page")
    return device_id


def test_identify_in_simplified_mode_sends_an_event_with_both_ids(
    tracks: list[MixpanelTrack],
) -> None:
    device_id = journey(make_app())
    identify, signed_up, _profile, later = sent(tracks)[1:]
    assert identify["event"] == "$identify"
    assert identify["properties"] == {
        "distinct_id": "user-ada",
        "$device_id": device_id,
        "$user_id": "user-ada",
    }
    assert signed_up["properties"]["$user_id"] == "user-ada"
    assert later["properties"]["$device_id"] == device_id


def test_identify_in_original_mode_sends_identify_with_the_anonymous_id(
    tracks: list[MixpanelTrack],
) -> None:
    device_id = journey(make_app(**{"mixpanel.id_merge": "original"}))
    anonymous, identify, signed_up = sent(tracks)[:3]
    assert anonymous["properties"]["distinct_id"] == device_id  # no $device: prefix here
    assert identify == {
        "event": "$identify",
        "properties": {
            "distinct_id": "user-ada",
            "$identified_id": "user-ada",
            "$anon_id": device_id,
            "$device_id": device_id,
        },
    }
    assert "$user_id" not in signed_up["properties"]


def test_identify_in_legacy_mode_creates_an_alias(tracks: list[MixpanelTrack]) -> None:
    device_id = journey(make_app(**{"mixpanel.id_merge": "legacy"}))
    alias = sent(tracks)[1]
    assert alias == {
        "event": "$create_alias",
        "properties": {"distinct_id": device_id, "alias": "user-ada"},
    }


def test_identify_sends_nothing_without_a_device_or_for_the_same_user() -> None:
    mp = MixpanelTrack({"mixpanel.token": "false"})
    mp.identify("u1")
    assert mp.distinct_id == mp.user_id == "u1"
    assert mp.mocked_messages == []
    with_device = MixpanelTrack({"mixpanel.token": "false"}, device_id=new_device_id())
    with_device.identify("u1")
    with_device.identify("u1")
    assert [m["msg"]["event"] for m in with_device.mocked_messages] == ["$identify"]
    with pytest.raises(TypeError, match="non-empty string"):
        mp.identify("")
    with pytest.raises(TypeError, match="non-empty string"):
        mp.identify(42)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ValueError, match="placeholder"):
        mp.identify("undefined")


def test_reset_forgets_the_user_and_issues_a_new_device_id(tracks: list[MixpanelTrack]) -> None:
    app = make_app()
    journey(app)
    before = device_in(app, app.cookies["mp_device"])
    answer = app.post("/logout", status=302)
    after = device_in(app, app.cookies["mp_device"])
    assert "mp_device=" in answer.headers["Set-Cookie"]
    assert after not in (None, before)
    app.get("/page")
    logged_out, later = sent(tracks)[-2:]
    assert logged_out["properties"]["distinct_id"] == "user-ada"  # tracked before reset()
    assert later["properties"]["distinct_id"] == f"$device:{after}"


def test_reset_without_a_device_cookie_only_forgets_the_user() -> None:
    mp = MixpanelTrack({"mixpanel.token": "false"}, distinct_id="u1")
    mp.reset()
    assert mp.distinct_id is None and mp.device_id is None and mp.issued_device_id is None


def test_anonymous_visitors_are_not_customerio_customers() -> None:
    settings = {
        "mixpanel.token": "false",
        "customerio.tracking.site_id": "s",
        "customerio.tracking.api_key": "k",
        "customerio.tracking.region": "us",
    }
    mp = MixpanelTrack(settings, device_id=new_device_id())
    mp.track(Events.page_viewed)
    mp.profile_set({ProfileProperties.dollar_name: "Anon"})
    assert mp.customerio_messages == []
    mp.identify("u1")
    mp.track(Events.page_viewed)
    assert [call.customer_id for call in mp.customerio_messages] == ["u1"]


# -- settings ---------------------------------------------------------------------------------


def test_the_relay_keys_still_work_and_must_agree_with_the_new_ones() -> None:
    old = parse_settings(
        {"mixpanel.relay.device_cookie": "d", "mixpanel.relay.cookie_secret": SECRET}
    )
    assert (old.device_cookie, old.cookie_secret) == ("d", SECRET)
    same = {"mixpanel.device_cookie": "d", "mixpanel.relay.device_cookie": "d"}
    assert parse_settings({**same, "mixpanel.cookie_secret": SECRET}).device_cookie == "d"
    with pytest.raises(MixpanelConfigurationError, match="its old name") as raised:
        parse_settings(
            {
                "mixpanel.cookie_secret": SECRET,
                "mixpanel.relay.cookie_secret": "another-secret-0123456789",
            }
        )
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"mixpanel.device_cookie": "d"}, "mixpanel.cookie_secret must be set"),
        ({"mixpanel.device_cookie": "my cookie"}, "must be a cookie name"),
        ({"mixpanel.cookie_secret": "short"}, "at least 16 characters"),
        ({"mixpanel.id_merge": "simple"}, "must be one of simplified, original, legacy"),
        ({"mixpanel.device_cookie_secure": "sometimes"}, "must be a boolean"),
        ({"mixpanel.device_cookie_max_age": "0"}, "mixpanel.device_cookie_max_age"),
    ],
)
def test_bad_identity_settings_fail_at_startup(values: dict[str, str], error: str) -> None:
    with pytest.raises(MixpanelConfigurationError, match=error):
        parse_settings(values)


def test_the_startup_line_names_the_cookie_and_the_mode(caplog: pytest.LogCaptureFixture) -> None:
    settings = {
        "mixpanel.token": "false",
        "mixpanel.device_cookie": "mp_device",
        "mixpanel.cookie_secret": SECRET,
        "mixpanel.id_merge": "original",
        "mixpanel.device_cookie_secure": "auto",
    }
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        runtime = Runtime(parse_settings(settings))
        runtime.log_configured()
    assert "device_cookie=mp_device, id_merge=original" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in repr(runtime.settings) + repr(runtime.device_cookie)
    assert runtime.device_cookie is not None and runtime.device_cookie.secure is None


COOKIE = DeviceCookie("mp_device", SECRET)


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=120) | st.builds(COOKIE.value, st.uuids().map(str)))
def test_only_a_cookie_this_app_signed_yields_a_device_id(value: str) -> None:
    found = COOKIE.device_id(value)
    if found is not None:
        assert DEVICE_ID.fullmatch(found)
        assert COOKIE.value(found) == value  # exactly what the app issued


@settings(max_examples=100, deadline=None)
@example(  # found by CI: the secret's text was also the (quoted) value of another setting
    {
        "mixpanel.cookie_secret": "0000000000000000",
        "mixpanel.device_cookie_secure": "0000000000000000",
    }
)
@given(
    values=st.dictionaries(
        st.sampled_from(
            [
                "mixpanel.device_cookie",
                "mixpanel.cookie_secret",
                "mixpanel.device_cookie_secure",
                "mixpanel.device_cookie_max_age",
                "mixpanel.id_merge",
                "mixpanel.relay.device_cookie",
                "mixpanel.relay.cookie_secret",
            ]
        ),
        st.text(max_size=40) | st.sampled_from(["auto", "true", "0", "600", "original", "d"]),
        max_size=5,
    )
)
def test_identity_settings_are_parsed_or_refused_by_name(values: dict[str, str]) -> None:
    try:
        parsed = parse_settings(values)
    except MixpanelConfigurationError as error:
        assert "mixpanel." in str(error)
        for key, value in values.items():
            # A secret never shows, unless another setting holds the same text (an error may
            # quote that setting's own value).
            others = {v.strip() for k, v in values.items() if k != key and "secret" not in k}
            secret = value.strip()
            if "secret" in key and len(secret) > 3 and not any(secret in o for o in others):
                assert secret not in str(error)
    else:
        assert parsed.device_cookie is None or parsed.cookie_secret is not None
        assert parsed.id_merge in ("simplified", "original", "legacy")


def test_anonymous_ids_per_mode() -> None:
    assert anonymous_id("d1", "simplified") == "$device:d1"
    assert anonymous_id("d1", "original") == anonymous_id("d1", "legacy") == "d1"


# -- the stand-in's merge rules ----------------------------------------------------------------


def event(name: str, **properties: str) -> dict[str, t.Any]:
    return {"event": name, "properties": properties}


def test_the_stand_in_merges_as_simplified_id_merge_documents() -> None:
    model = IdentityModel("simplified")
    first = event("Page Viewed", **{"$device_id": "d1"})
    merge = event("Signed Up", distinct_id="u1", **{"$device_id": "d1", "$user_id": "u1"})
    other = event("Page Viewed", **{"$device_id": "d2"})
    for record in (first, merge, other):
        model.observe(record)
    assert model.distinct_id(first) == "$device:d1"
    assert model.person("$device:d1") == model.person("u1") == "u1"  # retroactive
    assert model.person(t.cast(str, model.distinct_id(other))) == "$device:d2"


def test_the_stand_in_merges_as_original_id_merge_documents() -> None:
    model = IdentityModel("original")
    anon = str(uuid.uuid4())
    model.observe(event("$identify", **{"$identified_id": "u1", "$anon_id": "not-a-uuid"}))
    model.observe(event("$identify", **{"$identified_id": "u1", "$anon_id": anon}))
    model.observe(event("$identify", **{"$identified_id": "u2", "$anon_id": anon}))
    model.observe(event("$identify", **{"$identified_id": "u2"}))
    assert [reason for _, reason in model.ignored] == [
        "$anon_id is not a UUID v4",
        "$anon_id is already merged to another user",
        "$identified_id and $anon_id are required",
    ]
    assert model.person(anon) == "u1"
    assert model.person("not-a-uuid") == "not-a-uuid"


def test_the_stand_in_merges_as_legacy_aliases_document() -> None:
    model = IdentityModel("legacy")
    model.observe(event("$create_alias", distinct_id="anon-1", alias="u1"))
    model.observe(event("$create_alias", distinct_id="anon-2", alias="u1"))
    model.observe(event("$create_alias", alias="u3"))
    assert [reason for _, reason in model.ignored] == [
        "the alias already points to another id",
        "alias and distinct_id are required",
    ]
    assert model.person("u1") == model.person("anon-1") == "anon-1"


# -- end to end: a real server, a cookie jar, the stand-in ---------------------------------------


@pytest.mark.parametrize("id_merge", ["simplified", "original", "legacy"])
def test_one_visitor_from_anonymous_page_view_to_signed_in_user_is_one_person(
    id_merge: str,
) -> None:
    with MixpanelStandIn(id_merge=id_merge) as mixpanel_api:
        app = build(
            **{
                "mixpanel.token": TOKEN,
                "mixpanel.api_host": mixpanel_api.base_url,
                "mixpanel.flush_interval": "0.05",
                "mixpanel.id_merge": id_merge,
            }
        )
        try:
            # Cookie jars, as browsers keep them (closed before the server: keep-alive
            # connections would hold it open).
            with serve(app) as url, requests.Session() as browser, requests.Session() as forger:
                relayed = browser.post(
                    f"{url}/mixpanel/track",
                    json={"event": "Page Viewed", "properties": {"Path": "/pricing"}},
                    headers={"Origin": url},
                    timeout=10,
                )
                assert relayed.status_code == 200, relayed.text
                assert browser.get(f"{url}/page", timeout=10).status_code == 200
                signed_up = browser.post(f"{url}/signup", data={"name": "ada"}, timeout=10)
                assert signed_up.status_code == 200  # followed to /page
                browser.get(f"{url}/page", timeout=10)

                # Another visitor forges the first one's device id: never merged into ada.
                cookie = get_runtime(app.registry).device_cookie
                assert cookie is not None
                device_id = cookie.device_id(browser.cookies["mp_device"])
                forger.cookies.set("mp_device", str(device_id), domain="127.0.0.1")
                forger.get(f"{url}/page", timeout=10)
                forger_device = forger.cookies["mp_device"]
                assert forger_device != browser.cookies["mp_device"]

                # relay view + 2 page views + $identify/$create_alias + sign-up + forger's view
                events = mixpanel_api.wait_for_events(7)
                mixpanel_api.wait_for_profiles(1)
        finally:
            get_runtime(app.registry).close()
        people = {mixpanel_api.person_of(record) for record in events[:-1]}
        ada = "user-ada" if id_merge != "legacy" else f"{device_id}"
        assert people == {ada}, [r["properties"].get("distinct_id") for r in events]
        assert mixpanel_api.person_of(events[-1]) != ada
        assert mixpanel_api.person_of(mixpanel_api.profiles()[0]) == ada
        assert mixpanel_api.identity.ignored == []
        assert wait_until(lambda: True, 1, lambda: mixpanel_api.dropped) == []
