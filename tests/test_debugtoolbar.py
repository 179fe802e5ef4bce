"""The debug toolbar panel, rendered by pyramid_debugtoolbar in a real app."""

from __future__ import annotations

import html
import typing as t

import webtest
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from pyramid_mixpanel import EventProperties, Events
from pyramid_mixpanel.debugtoolbar import describe

from .loopback import MixpanelStandIn

PAGE = "<html><body><p>hello</p></body></html>"


def make_app(settings: dict[str, str]) -> tuple[webtest.TestApp, t.Any]:
    def page(request: Request) -> Response:
        if "quiet" not in request.params:
            request.mixpanel.distinct_id = "toolbar-user"
            request.mixpanel.track(Events.page_viewed, {EventProperties.path: "/page"})
        if "fail" in request.params:
            raise RuntimeError("failed")
        return Response(PAGE)

    base = {
        "debugtoolbar.extra_panels": "pyramid_mixpanel.debugtoolbar.MixpanelDebugPanel",
        "debugtoolbar.hosts": "127.0.0.1",
        **settings,
    }
    with Configurator(settings=base) as config:
        config.include("pyramid_debugtoolbar")
        config.include("pyramid_mixpanel")
        config.add_route("page", "/page")
        config.add_view(page, route_name="page")
        config.add_exception_view(
            lambda exc, request: Response(PAGE, status=500), context=RuntimeError
        )
    app = webtest.TestApp(config.make_wsgi_app(), extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    return app, config.registry


def panel_html(app: webtest.TestApp, registry: t.Any, path: str, status: int = 200) -> str:
    app.get(path, status=status)
    toolbar_id, _ = registry.pdtb_history.last(1)[0]
    text = app.get(f"/_debug_toolbar/{toolbar_id}").text
    start = text.index('id="pDebugPanel-mixpanel-content"')
    return html.unescape(text[start : start + 4000])


def test_panel_in_testing_mode() -> None:
    app, registry = make_app({"mixpanel.token": "false"})
    text = panel_html(app, registry, "/page")
    assert "testing mode: recorded, not sent" in text
    assert "toolbar-user" in text
    assert '"event": "Page Viewed"' in text
    held = panel_html(app, registry, "/page?fail=1", status=500)
    assert "held back: the request failed" in held


def test_panel_in_live_mode() -> None:
    with MixpanelStandIn() as api:
        app, registry = make_app(
            {"mixpanel.token": "toolbar-token", "mixpanel.api_host": api.base_url}
        )
        text = panel_html(app, registry, "/page")
        assert "handed to delivery" in text
        assert '"Path": "/page"' in text
        held = panel_html(app, registry, "/page?fail=1", status=500)
        assert "held back: the request failed" in held
        quiet = panel_html(app, registry, "/page?quiet=1")
        assert "not used" in quiet
        assert "Nothing was tracked." in quiet
        api.wait_for_events(1)


def test_describe_pending() -> None:
    from pyramid_mixpanel import MixpanelTrack

    track = MixpanelTrack({"mixpanel.token": "live-describe"}, distinct_id="u")
    track.track(Events.page_viewed)
    assert describe(track)["state"] == "pending"
    assert len(describe(track)["messages"]) == 1
    assert MixpanelTrack({"mixpanel.token": "false"}).history == []
