"""The app both observability exports are tested on: one page that tracks.

Its runtimes go to the ``runtimes`` fixture (conftest), which closes them at the end of a test.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

import webtest
from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request

from pyramid_mixpanel import EventProperties, Events, get_runtime
from pyramid_mixpanel.runtime import Runtime

TOKEN = "tok-0123456789abcdef"
ORIGIN = "http://localhost"
#: Short timeouts: tests point some apps at a closed port.
BASE_SETTINGS: dict[str, object] = {
    "mixpanel.token": TOKEN,
    "mixpanel.connect_timeout": "0.5",
    "mixpanel.read_timeout": "0.5",
    "mixpanel.flush_interval": "0.05",
}


@dataclass(frozen=True)
class User:
    distinct_id: str


def page(request: Request) -> dict[str, str]:
    request.mixpanel.distinct_id = "user-1"
    request.mixpanel.track(Events.page_viewed, {EventProperties.path: request.path})
    return {"ok": "yes"}


def observed_app(
    runtimes: list[Runtime],
    settings: t.Mapping[str, object],
    configure: t.Callable[[Configurator], None],
) -> tuple[webtest.TestApp, Registry]:
    """``BASE_SETTINGS`` updated with ``settings`` (``None`` drops a key), ``configure``'s
    includes, and ``/page``; its runtime is added to ``runtimes``."""
    merged = {**BASE_SETTINGS, **settings}
    with Configurator(settings={k: v for k, v in merged.items() if v is not None}) as config:
        configure(config)
        config.add_route("page", "/page")
        config.add_view(page, route_name="page", renderer="json")
        wsgi = config.make_wsgi_app()
    runtimes.append(get_runtime(config.registry))
    return webtest.TestApp(wsgi, extra_environ={"HTTP_HOST": "localhost:80"}), config.registry
