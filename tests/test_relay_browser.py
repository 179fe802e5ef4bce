"""End to end: a page of a real app in headless Chromium, through the relay, to Mixpanel.

The app runs under waitress on loopback in live mode (background delivery to the loopback
Mixpanel stand-in); Chromium, driven by Selenium and Debian's chromedriver, loads a page with
``relay.js``, clicks a button (sent by ``fetch`` shortly after) and a link (sent as the page is
left), and the events must arrive at the stand-in with a first-party device id, the parsed
browser and the client address. Twice: with ``mixpanel.relay.csrf = origin`` the link's click
can only travel by ``navigator.sendBeacon`` (fetch is disabled first); with ``pyramid`` it
travels by the keepalive ``fetch`` that carries the session's CSRF token. A page whose title
and address are longer than the relay takes still has its page view relayed, cut to fit.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator

import pytest
from pyramid.config import Configurator
from pyramid.csrf import get_csrf_token
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.session import SignedCookieSessionFactory

from pyramid_mixpanel import get_runtime

from .browser import serve
from .loopback import MixpanelStandIn

PAGE = """<!doctype html>
<html><head><title>{title}</title>
<script src="{script}"{csrf} defer></script></head>
<body>
  <button id="buy" data-mixpanel-click>Buy</button>
  <a id="next" href="/next" data-mixpanel-click="Next link">Next</a>
</body></html>
"""


# Longer than the relay's 1024 characters, with a character of two UTF-16 units across the cut.
LONG_TITLE = "x" * 1023 + "\N{GRINNING FACE}" + "y" * 4000
TITLES = {"/": "Home", "/next": "Next page", "/long": LONG_TITLE}


def page(request: Request) -> Response:
    title = TITLES[request.path]
    script = request.static_url("pyramid_mixpanel:static/relay.js")
    csrf = ""
    if request.registry.settings.get("mixpanel.relay.csrf") == "pyramid":
        csrf = f' data-csrf-token="{get_csrf_token(request)}"'
    return Response(PAGE.format(title=title, script=script, csrf=csrf))


@pytest.fixture
def mixpanel_api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


@pytest.fixture(params=["origin", "pyramid"])
def site(
    mixpanel_api: MixpanelStandIn, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str, Registry]]:
    settings = {
        "mixpanel.relay.csrf": request.param,
        "mixpanel.token": "tok-browser-test",
        "mixpanel.api_host": mixpanel_api.base_url,
        "mixpanel.flush_interval": "0.05",
        "mixpanel.relay.device_cookie": "mp_device",
        "mixpanel.relay.cookie_secret": "browser-test-cookie-secret-0123456789",
        "mixpanel.relay.cookie_secure": "false",  # plain http on loopback
    }
    with Configurator(settings=settings) as config:
        # With csrf = pyramid, relay.js carries the session's token in a keepalive fetch
        # (sendBeacon cannot send headers), also as the page is left.
        config.set_session_factory(SignedCookieSessionFactory("browser-test-secret"))
        config.include("pyramid_mixpanel.relay")
        config.add_route("home", "/")
        config.add_route("next", "/next")
        config.add_route("long", "/long")
        config.add_view(page, route_name="home")
        config.add_view(page, route_name="next")
        config.add_view(page, route_name="long")
        app = config.make_wsgi_app()
    with serve(app) as url:
        yield url, request.param, app.registry


def device_id_in(registry: Registry, cookie: str) -> str | None:
    """The device id the relay signed into its cookie."""
    cookie_jar = get_runtime(registry).device_cookie
    assert cookie_jar is not None
    return cookie_jar.device_id(cookie)


def test_page_views_and_clicks_reach_mixpanel(
    browser: t.Any, site: tuple[str, str, Registry], mixpanel_api: MixpanelStandIn
) -> None:
    from selenium.webdriver.common.by import By

    site_url, csrf, registry = site

    browser.get(site_url + "/")
    browser.find_element(By.ID, "buy").click()
    mixpanel_api.wait_for_events(2, timeout=20)  # the page view and the button, by fetch
    if csrf == "origin":
        # From now on fetch fails on this page: only navigator.sendBeacon, as the page is
        # left, can deliver the link's click. (With csrf = pyramid, the keepalive fetch that
        # carries the token does, and must survive the unload.)
        browser.execute_script("window.fetch = () => Promise.reject(new Error('no fetch'));")
    browser.find_element(By.ID, "next").click()
    events = mixpanel_api.wait_for_events(4, timeout=20)

    seen = sorted(
        (e["event"], e["properties"].get("Title"), e["properties"].get("Path")) for e in events
    )
    assert seen == [
        ("Button/Link Clicked", "Buy", "/"),
        ("Button/Link Clicked", "Next link", "/"),
        ("Page Viewed", "Home", "/"),
        ("Page Viewed", "Next page", "/next"),
    ]
    device_ids = {e["properties"]["distinct_id"] for e in events}
    assert len(device_ids) == 1  # one first-party device id across pages
    (device_id,) = device_ids
    assert device_id.startswith("$device:")
    cookie = browser.get_cookie("mp_device")
    assert cookie is not None
    assert device_id == f"$device:{device_id_in(registry, cookie['value'])}"  # signed
    assert cookie["httpOnly"] is True
    for event in events:
        properties = event["properties"]
        assert properties["token"] == "tok-browser-test"
        assert properties["ip"] == "127.0.0.1"
        assert properties["$browser"] in ("HeadlessChrome", "Chrome", "Chromium")
        assert properties["$os"] == "Linux"
        assert len(properties["$insert_id"]) == 32  # set by relay.js: a resend counts once
    next_view = next(e for e in events if e["properties"].get("Path") == "/next")
    assert next_view["properties"]["$referrer"] == site_url + "/"


@pytest.mark.parametrize("site", ["origin"], indirect=True)
def test_long_titles_and_referrers_are_cut_not_lost(
    browser: t.Any, site: tuple[str, str, Registry], mixpanel_api: MixpanelStandIn
) -> None:
    from selenium.webdriver.common.by import By

    site_url = site[0]
    long_url = f"{site_url}/long?q={'a' * 3000}"
    browser.get(long_url)
    mixpanel_api.wait_for_events(1, timeout=20)  # the page view, although its title is long
    browser.find_element(By.ID, "next").click()
    events = mixpanel_api.wait_for_events(3, timeout=20)

    views = {
        e["properties"]["Path"]: e["properties"] for e in events if e["event"] == "Page Viewed"
    }
    # Cut at 1024 UTF-16 units, less the half of the emoji that the cut would leave.
    assert views["/long"]["Title"] == "x" * 1023
    assert views["/next"]["$referrer"] == long_url[:1024]
    click = next(e for e in events if e["event"] == "Button/Link Clicked")
    assert click["properties"]["Path"] == "/long"
