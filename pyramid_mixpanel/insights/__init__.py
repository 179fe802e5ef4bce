"""Per-account Mixpanel metrics inside your app: JSON endpoints and one HTML page per account.

``config.include("pyramid_mixpanel.insights")`` serves what ``pmixpanel sync`` stored (see
:mod:`pyramid_mixpanel.metrics`), behind a permission (``mixpanel.insights.permission``):

* ``GET /api/mixpanel/events/{account}``: daily totals, users, sessions, score, top events;
* ``GET /api/mixpanel/funnels/{account}``: funnel conversion over the range (each user once),
  against the previous period, and per day;
* ``GET /api/mixpanel/accounts`` and ``GET /mixpanel/accounts``: every account, sortable;
* ``GET /api/mixpanel/metrics.csv``: daily metrics of every account as CSV;
* ``GET /api/mixpanel/ask?q=...``: the chat commands;
* ``GET /api/mixpanel/users/{account}``: the account's profiles, counted;
* ``POST /api/mixpanel/sync``: start an incremental sync in the background;
* ``GET /mixpanel/accounts/{account}``: the page, with an event-volume chart, top events and
  funnel steps.

The routes are added when the configuration is committed (after the app's own routes), and no
database is opened before a view is first called: run ``pmixpanel migrate development.ini`` (or
a first ``pmixpanel sync``) to create the tables; until then the views answer 503 saying so.

Dates are chosen with ``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (default: the last
``mixpanel.insights.days`` days up to yesterday, in the timezone of the synced days: UTC, or
``mixpanel.project_timezone``): days from 1970-01-01 on, at most 366 of them, else 400 with
``{"error": ...}`` (an HTML page for the account page).
"""

from __future__ import annotations

import typing as t

from pyramid.interfaces import PHASE1_CONFIG

from ..exceptions import MixpanelConfigurationError

if t.TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["INSIGHTS_KEY", "includeme"]

#: Registry key of the :class:`~pyramid_mixpanel.insights.views.InsightsState`.
INSIGHTS_KEY = "pyramid_mixpanel.insights"


def includeme(config: Configurator) -> None:
    """Register the endpoints and the page when the configuration is committed.

    ``mixpanel.insights.*`` and ``mixpanel.metrics.*`` are parsed and checked then, once (a
    later ``config.add_settings`` still counts); nothing opens the database here.
    """
    config.include("pyramid_mixpanel")
    try:
        from .views import register
    except ImportError as exc:  # SQLAlchemy / Alembic: the metrics extra
        raise MixpanelConfigurationError(
            f"pyramid_mixpanel.insights needs the metrics extra ({exc}):"
            " pip install 'pyramid_mixpanel[metrics]'"
        ) from None
    # After the core's action (same phase, registered later), which builds the runtime.
    config.action(INSIGHTS_KEY, lambda: register(config), order=PHASE1_CONFIG)
