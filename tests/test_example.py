"""The example app that ``make demo`` runs, loaded from its .ini as pserve does."""

from __future__ import annotations

import pathlib
import threading
import typing as t
import urllib.request
from collections.abc import Iterator

import pytest
import waitress
import webtest
from pyramid.paster import get_app

from .browser import stop

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def wsgi_app(monkeypatch: pytest.MonkeyPatch) -> t.Any:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import pyramid_mixpanel_demo

    pyramid_mixpanel_demo.RECENT.clear()
    return get_app(str(EXAMPLES / "development.ini"))


@pytest.fixture
def app(wsgi_app: t.Any) -> webtest.TestApp:
    return webtest.TestApp(wsgi_app)


def test_home_tracks_a_page_view_for_an_anonymous_device(app: webtest.TestApp) -> None:
    res = app.get("/", status=200)
    assert "What would have been sent to Mixpanel" in res.text
    assert "&quot;Page Viewed&quot;" in res.text
    assert "mp_device=" in res.headers["Set-Cookie"]
    assert "you are anonymous (device " in res.text
    res = app.get("/sent")
    assert "released" in res.text


def test_signup_then_upgrade(app: webtest.TestApp) -> None:
    app.get("/signup", status=200)
    res = app.post("/signup", {"email": "a@example.com", "name": "Ann", "company": "ACME"})
    assert res.status_int == 302
    res = res.follow()
    assert "User Signed Up" in res.text
    assert "a@example.com" in res.text
    assert "you are user-" in res.text
    app.post("/upgrade", status=302)
    res = app.get("/sent")
    assert "Plan Upgraded" in res.text
    assert "&quot;$add&quot;" in res.text
    assert "held back" not in res.text


def test_one_visitors_journey_merges_in_the_panel(app: webtest.TestApp) -> None:
    app.get("/")
    res = app.post("/signup", {"email": "a@example.com", "name": "Ann"}).follow()
    device_id = res.text.split("&quot;$device_id&quot;: &quot;", 1)[1].split("&quot;", 1)[0]
    user_id = res.text.split("you are ", 1)[1].split("<", 1)[0].strip()
    # The anonymous page view, the $identify with both ids, the sign-up with both ids.
    assert f"&quot;distinct_id&quot;: &quot;$device:{device_id}&quot;" in res.text
    assert "&quot;$identify&quot;" in res.text
    assert res.text.count(f"&quot;$user_id&quot;: &quot;{user_id}&quot;") >= 2
    res = app.post("/logout", status=302).follow()
    assert "you are anonymous (device " in res.text
    assert device_id not in res.text.split("you are", 1)[1].split("</nav>", 1)[0]


def test_upgrade_needs_a_user(app: webtest.TestApp) -> None:
    assert app.post("/upgrade", status=302).location.endswith("/signup")


def test_a_failing_request_is_held_back(app: webtest.TestApp) -> None:
    res = app.get("/boom", status=500)
    assert "Something broke" in res.text
    res = app.get("/sent")
    assert "held back (request failed)" in res.text
    assert "&quot;Boom&quot;" in res.text


@pytest.fixture
def served(wsgi_app: t.Any) -> Iterator[str]:
    server = waitress.create_server(wsgi_app, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop(server)
        thread.join(5)


def test_it_serves_under_waitress(served: str) -> None:
    with urllib.request.urlopen(served + "/", timeout=5) as response:  # loopback only
        assert response.status == 200
        assert "pyramid_mixpanel demo" in response.read().decode()


def test_front_end_clicks_go_through_the_relay(app: webtest.TestApp) -> None:
    home = app.get("/")
    assert "pyramid_mixpanel-static/relay.js" in home.text
    assert app.get("/pyramid_mixpanel-static/relay.js").status_int == 200
    body = {"event": "Button/Link Clicked", "properties": {"Title": "Front-end button"}}
    answer = app.post_json("/mixpanel/track", body, headers={"Origin": "http://localhost"})
    assert answer.json["success"] is True
    # The device cookie the home page set: the relay's events are the same visitor's.
    assert "mp_device" in app.cookies and "Set-Cookie" not in answer.headers
    assert "Front-end button" in app.get("/sent").text
