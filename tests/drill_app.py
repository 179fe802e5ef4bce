"""The app of the outage drills, served by a real WSGI server in its own process.

Settings come from ``DRILL_*`` environment variables so the test can point it at its loopback
Mixpanel and spool file.
"""

from __future__ import annotations

import os
import typing as t

from pyramid.config import Configurator
from pyramid.request import Request

from pyramid_mixpanel import EventProperties, Events


def track(request: Request) -> dict[str, int]:
    """Track one event whose Path carries the drill's request number."""
    request.mixpanel.distinct_id = "drill"
    request.mixpanel.track(Events.page_viewed, {EventProperties.path: request.params["n"]})
    return {"pid": os.getpid()}


def app(*args: object, **kwargs: object) -> t.Any:
    """WSGI app factory (``waitress-serve --call``, ``gunicorn 'tests.drill_app:app()'``)."""
    settings = {
        "mixpanel.token": "drill-token",
        "mixpanel.api_host": os.environ["DRILL_API_HOST"],
        "mixpanel.read_timeout": "0.5",
        "mixpanel.connect_timeout": "0.5",
        "mixpanel.flush_interval": "0.05",
        "mixpanel.shutdown_timeout": "1",
    }
    if os.environ.get("DRILL_SPOOL"):
        settings["mixpanel.spool_path"] = os.environ["DRILL_SPOOL"]
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("track", "/track")
        config.add_view(track, route_name="track", renderer="json")
    return config.make_wsgi_app()
