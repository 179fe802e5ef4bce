"""The Celery app of the Celery delivery tests (web side and worker side)."""

from __future__ import annotations

import os

from celery import Celery

from pyramid_mixpanel.delivery.celery import register

app = Celery("pyramid_mixpanel_tests", broker=os.environ.get("DRILL_BROKER", "memory://"))
app.conf.broker_connection_retry_on_startup = True
app.conf.task_default_queue = os.environ.get("DRILL_QUEUE", "pyramid_mixpanel_tests")

if os.environ.get("DRILL_WORKER"):
    # The worker registers the task with its own settings: no secret travels the broker.
    register(
        app,
        {
            "mixpanel.token": "celery-token",
            "mixpanel.api_host": os.environ["DRILL_API_HOST"],
            "mixpanel.read_timeout": "1",
        },
    )
