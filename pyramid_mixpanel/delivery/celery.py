"""``mixpanel.delivery = celery``: hand batches to your Celery workers.

For apps that outgrow one process group. The web process groups a request's released messages
into batches (Mixpanel's limits) and sends each as a ``pyramid_mixpanel.deliver`` task to the
Celery app named by ``mixpanel.celery_app``; it never talks to Mixpanel itself. Workers post
the batch with the same transport as the background engine and retry with the same policy
(capped exponential backoff with full jitter, ``Retry-After`` honoured). Tasks are
``acks_late``, so a worker that dies mid-post leaves the task to another worker, and a resend is
harmless: ``$insert_id`` was fixed when the message was built and Mixpanel deduplicates on it.

Workers register the task with their own settings (secrets never travel through the broker)::

    # myapp/celery.py
    from celery import Celery
    from pyramid_mixpanel.delivery.celery import register

    app = Celery("myapp", broker="redis://localhost:6379/0")
    register(app, settings)  # the app's settings mapping, e.g. from pyramid.paster.get_appsettings
"""

from __future__ import annotations

import typing as t

from ..consumer import batches
from ..customerio import CustomerIOReplicator
from ..log import Log
from ..settings import MixpanelSettings, parse_settings
from .policy import RetryPolicy
from .transport import HttpTransport, Router

TASK_NAME = "pyramid_mixpanel.deliver"
# With the 60 s cap this keeps a batch alive through about an hour of outage.
MAX_RETRIES = 60


def register(celery_app: t.Any, settings: t.Mapping[str, object] | MixpanelSettings) -> t.Any:
    """Register the ``pyramid_mixpanel.deliver`` task on ``celery_app``; return the task."""
    parsed = settings if isinstance(settings, MixpanelSettings) else parse_settings(settings)
    log = Log(parsed.secrets, parsed.structlog)
    customerio = CustomerIOReplicator(parsed, log) if parsed.customerio_enabled else None
    router = Router(HttpTransport(parsed), customerio)
    policy = RetryPolicy()

    @celery_app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=MAX_RETRIES)  # type: ignore[untyped-decorator]  # Celery is untyped
    def deliver(task: t.Any, endpoint: str, bodies: list[str]) -> int:
        outcome = router.post(endpoint, bodies)
        if outcome.sent:
            return len(bodies)
        if outcome.kind == "retry":
            delay = policy.delay(task.request.retries + 1, outcome.retry_after)
            log.warning(
                "mixpanel.delivery_retry",
                endpoint=endpoint,
                messages=len(bodies),
                retry_in=round(delay, 2),
                error=outcome.error,
            )
            raise task.retry(countdown=delay)
        refused = len(outcome.failed) or len(bodies)
        log.error(
            "mixpanel.delivery_refused",
            endpoint=endpoint,
            messages=refused,
            error=outcome.error,
        )
        return len(bodies) - refused

    return deliver


class CeleryHandOver:
    """The web side: send released messages as tasks, never raising into the request."""

    def __init__(self, celery_app: t.Any, settings: MixpanelSettings, log: Log) -> None:
        self.celery_app = celery_app
        self.settings = settings
        self.log = log

    def submit(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Send one task per batch; return how many messages could not be handed over."""
        by_endpoint: dict[str, list[str]] = {}
        for endpoint, body in messages:
            by_endpoint.setdefault(endpoint, []).append(body)
        lost = 0
        for endpoint, bodies in by_endpoint.items():
            size = 1 if endpoint == "customerio" else self.settings.batch_max_records
            for batch in batches(bodies, size):
                try:
                    self.celery_app.send_task(TASK_NAME, args=(endpoint, batch))
                except Exception as exc:  # the broker is down: the request must not see it
                    lost += len(batch)
                    self.log.error(
                        "mixpanel.celery_send_failed",
                        endpoint=endpoint,
                        messages=len(batch),
                        error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    )
        return lost
