"""The app of the outage drills, served by a real WSGI server in its own process.

Settings come from ``DRILL_*`` environment variables so the test can point it at its loopback
Mixpanel and spool file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import typing as t
from collections import Counter
from dataclasses import dataclass

from pyramid.config import Configurator
from pyramid.request import Request

if t.TYPE_CHECKING:
    from .loopback import MixpanelStandIn

from pyramid_mixpanel import (
    EventProperties,
    Events,
    GroupKeys,
    GroupProperties,
    ProfileProperties,
    Property,
)


@dataclass(frozen=True)
class DrillGroupKeys(GroupKeys):
    """The drill's group key."""

    company_id: Property = Property("Company Id", "The customer account.")


def track(request: Request) -> dict[str, int]:
    """One message of every kind, each carrying the drill's request number ``n``.

    An event, an event from six days ago (older than /track's window), a profile update and a
    group update.
    """
    n = request.params["n"]
    mixpanel = request.mixpanel
    mixpanel.distinct_id = "drill"
    mixpanel.track(Events.page_viewed, {EventProperties.path: n})
    six_days_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=6)
    mixpanel.track(Events.user_charged, {EventProperties.path: n}, time=six_days_ago)
    mixpanel.profile_set({ProfileProperties.dollar_name: f"drill {n}"})
    mixpanel.group_set(DrillGroupKeys.company_id, f"c{n}", {GroupProperties.dollar_name: n})
    return {"pid": os.getpid()}


def paths(api: MixpanelStandIn, event: str = "Page Viewed") -> Counter[str]:
    return Counter(e["properties"]["Path"] for e in api.events() if e["event"] == event)


def every_kind_arrived(api: MixpanelStandIn, answered: int) -> bool:
    """Each answered request's event, old event, profile and group update arrived.

    Other events may have arrived too (the drills check equality themselves).
    """
    numbers = {str(n) for n in range(answered)}
    with api.lock:
        profiles = {p["$set"]["$name"].removeprefix("drill ") for p in api.received["people"]}
        groups = {g["$group_id"].removeprefix("c") for g in api.received["groups"]}
    return (
        numbers <= set(paths(api))
        and numbers <= set(paths(api, "User Charged"))
        and numbers <= profiles
        and numbers <= groups
    )


#: The settings the drill app adds to its Mixpanel settings.
CATALOG = {"mixpanel.group_keys": f"{__name__}.DrillGroupKeys"}


def app(*args: object, **kwargs: object) -> t.Any:
    """WSGI app factory (``waitress-serve --call``, ``gunicorn 'tests.drill_app:app()'``)."""
    settings = {
        "mixpanel.token": "drill-token",
        "mixpanel.api_host": os.environ["DRILL_API_HOST"],
        "mixpanel.read_timeout": "0.5",
        "mixpanel.connect_timeout": "0.5",
        "mixpanel.flush_interval": "0.05",
        "mixpanel.shutdown_timeout": "1",
        **CATALOG,
    }
    if os.environ.get("DRILL_SPOOL"):
        settings["mixpanel.spool_path"] = os.environ["DRILL_SPOOL"]
    if os.environ.get("DRILL_REPAIR"):
        settings["mixpanel.spool_repair"] = "true"
    if os.environ.get("DRILL_SHUTDOWN"):
        settings["mixpanel.shutdown_timeout"] = os.environ["DRILL_SHUTDOWN"]
    # The drills read what the engines log (shutdown lines, sender errors) on stderr.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("track", "/track")
        config.add_view(track, route_name="track", renderer="json")
    return config.make_wsgi_app()
