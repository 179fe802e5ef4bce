"""``mixpanel.delivery = celery``: hand batches to your Celery workers.

For apps that outgrow one process group. The web process queues a request's released messages
(in memory, or in the spool) and a sender thread publishes them in batches (the lane's limits)
as ``pyramid_mixpanel.deliver`` tasks to the Celery app named by ``mixpanel.celery_app``, so a
broker that is down or hung never slows a request; it never talks to Mixpanel itself. Workers post
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

import threading
import typing as t

from ..customerio import CustomerIOTransport
from ..log import Log
from ..settings import MixpanelSettings, parse_settings
from .base import Outcome, Transport
from .engine import BackgroundEngine
from .policy import RetryPolicy
from .transport import MixpanelTransport

__all__ = ["MAX_RETRIES", "TASK_NAME", "CeleryDelivery", "CeleryPublisher", "register"]

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


class CeleryPublisher:
    """The lane's hand-over to Celery, posed as a transport so the engine can drive it.

    Same name, endpoints and batch limits as the lane's transport. A "post" sends one task; it
    is given ``timeout`` seconds (in a thread of its own), so a broker that accepts connections
    and never answers costs the sender that long, and never a request anything. While one
    publish is still stuck, the next ones are not started: the engine backs off instead.
    """

    def __init__(self, lane: Transport, celery_app: t.Any, timeout: float) -> None:
        self.name = lane.name
        self.endpoints = lane.endpoints
        self.max_records = lane.max_records
        self.max_bytes = lane.max_bytes
        self.celery_app = celery_app
        self.timeout = timeout
        self._stuck: threading.Thread | None = None

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        """Send one ``pyramid_mixpanel.deliver`` task with the batch."""
        if self._stuck is not None and self._stuck.is_alive():
            return Outcome(
                "retry", "the broker has not answered an earlier hand-over", unreachable=True
            )
        batch = [body if isinstance(body, str) else body.decode() for body in bodies]
        failure: list[BaseException] = []

        def publish() -> None:
            try:
                # No retry inside Celery: the engine retries, with Mixpanel's backoff.
                self.celery_app.send_task(
                    TASK_NAME, args=(endpoint, batch), kwargs={"lane": self.name}, retry=False
                )
            except Exception as exc:  # the broker refused or is gone: retried by the engine
                failure.append(exc)

        thread = threading.Thread(target=publish, name="pyramid_mixpanel-celery", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            self._stuck = thread
            error = f"the broker did not answer within {self.timeout:g}s"
            return Outcome("retry", error, unreachable=True)
        if failure:
            exc = failure[0]
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            return Outcome("retry", error, unreachable=True)
        return Outcome("sent")

    def close(self) -> None:
        """Nothing of ours to release: the Celery app is the app's."""


def CeleryDelivery(  # noqa: N802  # a factory, named like the delivery it builds
    transport: Transport, settings: MixpanelSettings, log: Log
) -> BackgroundEngine:
    """The web side: released messages wait in the engine's queue (or spool) for a publisher.

    Requests never talk to the broker: they hand their messages to a
    :class:`~.engine.BackgroundEngine` whose "transport" publishes tasks. A broker that is down
    or hung is retried with the same backoff as Mixpanel (one publish at a time, each bounded by
    ``mixpanel.connect_timeout``), and nothing is dropped because the broker blinked: the
    messages wait in the bounded queue, or in the spool when ``mixpanel.spool_path`` is set.
    """
    publisher = CeleryPublisher(transport, settings.celery_app, settings.connect_timeout)
    return BackgroundEngine.from_settings(publisher, settings, log)
