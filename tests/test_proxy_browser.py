"""End to end: Mixpanel's own browser SDK, in headless Chromium, through the proxy, to Mixpanel.

The SDK is the real ``mixpanel-browser`` from the npm registry, pinned in
``tests/browser_sdk/package-lock.json`` and installed by ``make test`` (``npm ci``) into
``tests/browser_sdk/node_modules`` (not committed). The app runs under waitress on loopback in
live mode (background delivery to the loopback Mixpanel stand-in); pages of the app load the
SDK with ``api_host`` pointing at the app's proxy prefix. A visitor tracks anonymously, signs
in (``identify``, ``people.set``, a super property from ``register``), tracks again and leaves
the page with an event still queued: the SDK's unload flush must bring it by ``sendBeacon``.
Every event must reach the stand-in with the project token, the client's address, the browser
as the server read it and one merged identity; a disallowed event and a foreign token are
refused.

To move the SDK forward: change the version in ``tests/browser_sdk/package.json``, run
``npm install --package-lock-only`` in that folder, then ``make test``.
"""

from __future__ import annotations

import json
import os
import pathlib
import typing as t
from collections.abc import Iterator

import pytest
from pyramid.config import Configurator
from pyramid.events import NewRequest
from pyramid.request import Request
from pyramid.response import Response

from pyramid_mixpanel import Event, EventProperties, Events, ProfileProperties, Property
from pyramid_mixpanel.relay import RELAY_KEY

from .browser import serve
from .loopback import MixpanelStandIn, wait_until

TOKEN = "proxy-browser-token"
SDK = pathlib.Path(__file__).parent / "browser_sdk" / "node_modules" / "mixpanel-browser"
LOCK = pathlib.Path(__file__).parent / "browser_sdk" / "package-lock.json"


class User:
    def __init__(self, distinct_id: str) -> None:
        self.distinct_id = distinct_id


class AppEvents(Events):
    plan_upgraded: Event = Event("Plan Upgraded")


class AppEventProperties(EventProperties):
    plan: Property = Property("Plan")
    theme: Property = Property("Theme")


class AppProfileProperties(ProfileProperties):
    dark_mode: Property = Property("Dark Mode")


# Each page initialises the SDK as the docs say, then runs its own script.
PAGE = """<!doctype html>
<html><head><title>{title}</title>
<script src="/sdk/dist/mixpanel.umd.js"></script>
<script>
mixpanel.init({token}, {{
  api_host: location.origin + "/lantern",
  batch_flush_interval_ms: {flush_ms},
  debug: true
}});
{script}
</script></head>
<body><p id="ready">{title}</p></body></html>
"""
SCRIPTS = {
    # Anonymous: a super property, an allowed event, a disallowed one.
    "/": """
mixpanel.register({"Theme": "dark"});
mixpanel.track("Plan Upgraded", {"Plan": "free"});
mixpanel.track("Hacked", {"Plan": "x"});
""",
    # Signed in (the server's session says so): the browser identifies as the same user.
    "/account": """
mixpanel.identify("42");
mixpanel.people.set({"Dark Mode": true});
mixpanel.track("Plan Upgraded", {"Plan": "pro"});
""",
    # An event left in the queue (flushes only every 60 s): the unload flush sends it.
    "/leave": """
mixpanel.track("Plan Upgraded", {"Plan": "team"});
""",
    # Another project's token: refused, never delivered.
    "/foreign": """
mixpanel.init("someone-elses-token", {
  api_host: location.origin + "/lantern", batch_requests: false
}, "other");
mixpanel.other.track("Plan Upgraded", {"Plan": "stolen"});
""",
}
FLUSH_MS = {"/leave": 60_000}


def page(request: Request) -> Response:
    if request.path == "/bye":
        return Response("<!doctype html><title>bye</title><p id='ready'>bye</p>")
    body = PAGE.format(
        title=request.path,
        token=json.dumps(TOKEN),
        flush_ms=FLUSH_MS.get(request.path, 100),
        script=SCRIPTS[request.path],
    )
    return Response(body)


def signed_in(request: Request) -> User | None:
    # The test's stand-in for a login session: the server alone decides who is signed in.
    uid = request.cookies.get("test_session_user")
    return User(uid) if uid else None


@pytest.fixture
def sdk() -> pathlib.Path:
    if not (SDK / "dist" / "mixpanel.umd.js").is_file():
        reason = "mixpanel-browser is not installed (make test runs npm ci in tests/browser_sdk)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    pinned = json.loads(LOCK.read_text())["packages"]["node_modules/mixpanel-browser"]["version"]
    installed = json.loads((SDK / "package.json").read_text())["version"]
    assert installed == pinned, f"run npm ci in tests/browser_sdk ({installed} != {pinned})"
    return SDK


CALLS: list[tuple[str, str]] = []


def record_proxy_calls(event: NewRequest) -> None:
    """How each call reached the proxy (XHR's form or sendBeacon's text), for the asserts."""
    request = event.request
    if request.path.startswith("/lantern/"):
        CALLS.append((request.path, request.content_type))


@pytest.fixture
def site(sdk: pathlib.Path) -> Iterator[tuple[str, MixpanelStandIn, t.Any]]:
    CALLS.clear()
    with MixpanelStandIn(tokens=[TOKEN]) as api:
        settings = {
            "mixpanel.token": TOKEN,
            "mixpanel.api_host": api.base_url,
            "mixpanel.flush_interval": "0.05",
            "mixpanel.events": f"{__name__}.AppEvents",
            "mixpanel.event_properties": f"{__name__}.AppEventProperties",
            "mixpanel.profile_properties": f"{__name__}.AppProfileProperties",
            "mixpanel.relay.events": "Plan Upgraded",
            "mixpanel.relay.event_properties": "Plan\nTheme",
            "mixpanel.relay.profile_properties": "Dark Mode",
        }
        with Configurator(settings=settings) as config:
            config.add_request_method(signed_in, "user", reify=True)
            config.add_subscriber(record_proxy_calls, NewRequest)
            config.include("pyramid_mixpanel.proxy")
            config.add_static_view("sdk", str(sdk))
            for path in (*SCRIPTS, "/bye"):
                config.add_route(path, path)
                config.add_view(page, route_name=path)
            app = config.make_wsgi_app()
        with serve(app) as base_url:
            yield base_url, api, app.registry


def visit(browser: t.Any, url: str) -> None:
    browser.get(url)
    wait_until(lambda: browser.find_elements("id", "ready"), 20, lambda: browser.page_source)


def test_the_official_sdk_through_the_proxy(
    browser: t.Any, site: tuple[str, MixpanelStandIn, t.Any]
) -> None:
    base_url, api, registry = site
    stats = registry[RELAY_KEY].stats

    visit(browser, f"{base_url}/")
    [anonymous] = api.wait_for_events(1, 20)
    wait_until(lambda: stats.snapshot().get("invalid", 0) >= 1, 20, stats.snapshot)

    browser.add_cookie({"name": "test_session_user", "value": "42"})
    visit(browser, f"{base_url}/account")
    api.wait_for_events(3, 20)
    # identify() sends the referrer info ($set_once), then people.set() its $set.
    once, profile = api.wait_for_profiles(2, 20)

    assert ("/lantern/track/", "text/plain") not in CALLS
    visit(browser, f"{base_url}/leave")
    visit(browser, f"{base_url}/bye")  # the SDK's visibilitychange flush, by sendBeacon
    events = api.wait_for_events(4, 20)
    assert ("/lantern/track/", "text/plain") in CALLS
    assert ("/lantern/engage/", "application/x-www-form-urlencoded") in CALLS

    visit(browser, f"{base_url}/foreign")
    wait_until(lambda: stats.snapshot().get("foreign_token", 0) >= 1, 20, stats.snapshot)

    by_plan = {e["properties"].get("Plan"): e for e in events if e["event"] == "Plan Upgraded"}
    assert set(by_plan) == {"free", "pro", "team"}
    assert [e["event"] for e in events].count("$identify") == 1
    assert "Hacked" not in {e["event"] for e in api.events()}
    assert "stolen" not in by_plan
    for record in events:
        properties = record["properties"]
        assert properties["token"] == TOKEN
        assert properties["ip"] == "127.0.0.1"  # the client's address, as the server saw it
        assert properties["$browser"].endswith("Chrome")  # ua-parser: HeadlessChrome
        assert properties["$os"] == "Linux"
        assert properties["mp_lib"] == "web"
        assert properties["$current_url"].startswith(base_url)
    assert anonymous["properties"]["distinct_id"].startswith("$device:")
    assert anonymous["properties"]["Theme"] == "dark"  # register() of the SDK
    for plan in ("pro", "team"):
        assert by_plan[plan]["properties"]["distinct_id"] == "42"
        assert by_plan[plan]["properties"]["$user_id"] == "42"
    # One person: the anonymous visit merged into user 42 (Simplified ID Merge).
    assert api.person_of(anonymous) == api.person_of(by_plan["team"]) == api.person_of(profile)
    assert profile["$distinct_id"] == "42"
    assert profile["$set"]["Dark Mode"] is True
    assert profile["$ip"] == "127.0.0.1"
    assert profile["$set"]["$browser"] == "HeadlessChrome"  # the server's reading
    referrer = {"$initial_referrer": "$direct", "$initial_referring_domain": "$direct"}
    assert once["$set_once"] == referrer
    assert api.refused == []
    for seen in api.requests:
        assert "someone-elses-token" not in json.dumps(seen.__dict__, default=str)
