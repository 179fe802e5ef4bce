"""``mixpanel.delivery = celery``: hand batches to your Celery workers.

For apps that outgrow one process group. The web process groups a request's released messages
into batches (the lane's limits) and sends each as a ``pyramid_mixpanel.deliver`` task to the
Celery app named by ``mixpanel.celery_app``; it never talks to Mixpanel itself. Workers post
the batch with the same transport as every other mode and retry with the same policy
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

from ..customerio import CustomerIOTransport
from ..log import Log
from ..settings import MixpanelSettings, parse_settings
from .base import Delivery, Message, Transport, batches
from .policy import RetryPolicy
from .transport import MixpanelTransport

__all__ = ["MAX_RETRIES", "TASK_NAME", "CeleryDelivery", "register"]

TASK_NAME = "pyramid_mixpanel.deliver"
# With the 60 s cap this keeps a batch alive through about an hour of outage.
MAX_RETRIES = 60


def register(celery_app: t.Any, settings: t.Mapping[str, object] | MixpanelSettings) -> t.Any:
    """Register the ``pyramid_mixpanel.deliver`` task on ``celery_app``; return the task.

    The task takes ``(endpoint, bodies)`` and the keyword ``lane`` (``mixpanel``, or
    ``customerio`` when ``customerio.tracking.*`` is configured).
    """
    parsed = settings if isinstance(settings, MixpanelSettings) else parse_settings(settings)
    log = Log(parsed.secrets, parsed.structlog)
    transports: dict[str, Transport] = {"mixpanel": MixpanelTransport.from_settings(parsed)}
    if parsed.customerio_enabled:
        transports["customerio"] = CustomerIOTransport.from_settings(parsed)
    policy = RetryPolicy()

    @celery_app.task(name=TASK_NAME, bind=True, acks_late=True, max_retries=MAX_RETRIES)  # type: ignore[untyped-decorator]  # Celery is untyped
    def deliver(task: t.Any, endpoint: str, bodies: list[str], lane: str = "mixpanel") -> int:
        transport = transports.get(lane)
        if transport is None or endpoint not in transport.endpoints:
            log.error(
                "mixpanel.celery_unknown_lane",
                lane=lane,
                endpoint=endpoint,
                messages=len(bodies),
                detail="this worker's settings do not configure that destination",
            )
            return 0
        outcome = transport.post(endpoint, bodies)
        arrived, retry, dead = outcome.partition(len(bodies))
        if dead:
            log.error(
                f"{lane}.delivery_refused",
                endpoint=endpoint,
                messages=len(dead),
                error=outcome.error,
                reasons=sorted(set(outcome.reasons.values()))[:5],
            )
        if retry:
            delay = policy.delay(task.request.retries + 1, outcome.retry_after)
            log.warning(
                f"{lane}.delivery_retry",
                endpoint=endpoint,
                messages=len(retry),
                retry_in=round(delay, 2),
                error=outcome.error,
            )
            # Only what has not arrived and was not refused goes round again.
            again = [bodies[i] for i in retry]
            raise task.retry(args=(endpoint, again), kwargs={"lane": lane}, countdown=delay)
        return len(arrived)

    return deliver


class CeleryDelivery(Delivery):
    """The web side: send released messages as tasks, never raising into the request."""

    def __init__(self, transport: Transport, settings: MixpanelSettings, log: Log) -> None:
        super().__init__()
        self.celery_app: t.Any = settings.celery_app
        self.lane = transport.name
        self.endpoints = transport.endpoints
        self.max_records = transport.max_records
        self.max_bytes = transport.max_bytes
        self.log = log

    def submit(self, messages: t.Sequence[Message]) -> int:
        """Send one task per batch; return how many messages could not be handed over."""
        by_endpoint: dict[str, list[str]] = {}
        for endpoint, body in messages:
            by_endpoint.setdefault(endpoint, []).append(body)
        lost = 0
        for endpoint, bodies in by_endpoint.items():
            for batch in batches(bodies, self.max_records, self.max_bytes):
                try:
                    self.celery_app.send_task(
                        TASK_NAME, args=(endpoint, batch), kwargs={"lane": self.lane}
                    )
                except Exception as exc:  # the broker is down: the request must not see it
                    lost += len(batch)
                    self.log.error(
                        "mixpanel.celery_send_failed",
                        lane=self.lane,
                        endpoint=endpoint,
                        messages=len(batch),
                        error=f"{type(exc).__name__}: {str(exc)[:200]}",
                    )
                else:
                    self.stats.add("handed_over", len(batch))
        if lost:
            self.stats.add("failed", lost)
        return lost
