"""The daily metrics sync on Celery beat.

For apps that already run Celery (``mixpanel.delivery = celery``, or their own tasks)::

    # myapp/celery.py
    from celery import Celery
    from pyramid.paster import get_appsettings
    from pyramid_mixpanel.metrics.celery import schedule

    app = Celery("myapp", broker="redis://localhost:6379/0")
    schedule(app, get_appsettings("production.ini"))  # daily at 01:15, beat's timezone

Run ``celery -A myapp.celery beat`` (one beat process) and a worker. Without Celery, the same
in cron (``--no-progress``: no bar in the mail cron sends)::

    15 1 * * * cd /srv/myapp && .venv/bin/pmixpanel sync production.ini --no-progress

``schedule`` also runs an hourly check that calls the alert hook when the data is stale (a
sync that stopped running alerts nothing itself). Either way, stale data shows:
``pmixpanel metrics freshness`` (exit 1 when stale, for a monitor), ``GET /api/mixpanel/sync``
(``freshness``), and the alert hook (``mixpanel.metrics.max_age_hours``).
"""

from __future__ import annotations

import typing as t

from .sync import sync

__all__ = ["FRESHNESS_TASK", "TASK_NAME", "schedule"]

TASK_NAME = "pyramid_mixpanel.metrics_sync"
#: The hourly check that alerts when the data is older than ``mixpanel.metrics.max_age_hours``
#: (a sync that stopped running alerts nothing itself).
FRESHNESS_TASK = "pyramid_mixpanel.metrics_freshness"


def schedule(
    celery_app: t.Any, settings: t.Mapping[str, object], *, hour: int = 1, minute: int = 15
) -> t.Any:
    """Register the sync task on ``celery_app`` and run it daily at ``hour:minute``; return it.

    The time is in beat's timezone (``celery_app.conf.timezone``, UTC by default): choose one
    after midnight where the synced days end (UTC, or ``mixpanel.project_timezone``). The task
    returns the sync's summary and whether the data is stale afterwards. A second task checks
    the data's age every hour, at ``minute``, and calls the alert hook when it is stale.
    """
    from celery.schedules import crontab

    from ..settings import parse_query_settings
    from .config import parse_metrics_settings
    from .freshness import alert_if_stale, freshness
    from .store import MetricsStore

    @celery_app.task(name=FRESHNESS_TASK, ignore_result=True)  # type: ignore[untyped-decorator]  # Celery is untyped
    def metrics_freshness() -> dict[str, t.Any]:
        config = parse_metrics_settings(settings)
        timezone = parse_query_settings(settings).project_timezone
        with MetricsStore(config.database_url) as store:
            state = freshness(store, config.max_age_hours, timezone)
        alert_if_stale(state, config)
        return state.as_dict()

    @celery_app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]  # Celery is untyped
    def metrics_sync() -> dict[str, t.Any]:
        report = sync(settings, progress=False)
        stale = report.freshness is not None and report.freshness.stale
        return {"summary": report.summary(), "ok": report.ok, "stale": stale}

    beat = dict(celery_app.conf.beat_schedule or {})
    beat[TASK_NAME] = {"task": TASK_NAME, "schedule": crontab(hour=hour, minute=minute)}
    beat[FRESHNESS_TASK] = {"task": FRESHNESS_TASK, "schedule": crontab(minute=minute)}
    celery_app.conf.beat_schedule = beat
    return metrics_sync
