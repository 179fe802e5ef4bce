"""``mixpanel.delivery = sync``: post a request's messages when they are released.

No queue and no thread: every batch is posted once through the lane's transport, with its
bounded timeouts and no blocking retries. Nothing raises into the request; what could not be
delivered is counted and logged (endpoint, count and error, never a body or a secret). When the
destination cannot be reached, the remaining batches are not tried in the same release, so a
hung service costs one timeout, not one per endpoint.

:class:`ConsumerDelivery` is the compatibility path of ``mixpanel.consumer``: a consumer object
per release, fed with ``send(endpoint, json)`` and ``flush()``, like the original package.
"""

from __future__ import annotations

import typing as t

from .base import Delivery, Message, Transport, batches

if t.TYPE_CHECKING:
    from ..log import Log
    from ..settings import MixpanelSettings

__all__ = ["ConsumerDelivery", "Posted", "SyncDelivery", "post_all"]


class Posted(t.NamedTuple):
    """What :func:`post_all` did."""

    delivered: int
    failed: int
    #: The destination could not be reached (the remaining batches were not tried).
    unreachable: bool = False


def post_all(transport: Transport, messages: t.Sequence[Message], log: Log) -> Posted:
    """Post ``messages`` in batches, endpoint by endpoint."""
    by_endpoint: dict[str, list[str]] = {}
    for endpoint, body in messages:
        by_endpoint.setdefault(endpoint, []).append(body)
    unknown = [endpoint for endpoint in by_endpoint if endpoint not in transport.endpoints]
    failed = 0
    for endpoint in unknown:
        count = len(by_endpoint.pop(endpoint))
        failed += count
        log.error(f"{transport.name}.unknown_endpoint", endpoint=endpoint, messages=count)
    pending = [
        (endpoint, batch)
        for endpoint in transport.endpoints
        for batch in batches(
            by_endpoint.get(endpoint, ()), transport.max_records, transport.max_bytes
        )
    ]
    delivered = 0
    for position, (endpoint, batch) in enumerate(pending):
        outcome = transport.post(endpoint, batch)
        lost = outcome.refused_of(len(batch))
        delivered += len(batch) - lost
        if not lost:
            continue
        failed += lost
        log.error(
            f"{transport.name}.delivery_failed",
            endpoint=endpoint,
            messages=lost,
            error=outcome.error,
        )
        if outcome.unreachable:
            # One timeout is enough to know: do not make the caller wait for one per batch.
            skipped = sum(len(rest) for _, rest in pending[position + 1 :])
            if skipped:
                failed += skipped
                log.error(f"{transport.name}.unreachable_skipped", messages=skipped)
            return Posted(delivered, failed, unreachable=True)
    return Posted(delivered, failed)


class SyncDelivery(Delivery):
    """Post released messages right away through ``transport``."""

    def __init__(self, transport: Transport, settings: MixpanelSettings, log: Log) -> None:
        super().__init__()
        self.transport = transport
        self.log = log

    def submit(self, messages: t.Sequence[Message]) -> int:
        """Post every message now; return how many did not arrive (each logged)."""
        if not messages:
            return 0
        delivered, failed, _ = post_all(self.transport, messages, self.log)
        self.stats.add("sent", delivered)
        if failed:
            self.stats.add("failed", failed)
        return failed

    def close(self, timeout: float | None = None) -> int:
        """Close the transport's connections."""
        self.transport.close()
        return 0


class ConsumerDelivery(Delivery):
    """``mixpanel.consumer``: a consumer of the configured class per release.

    Classes with a ``from_settings(settings, log)`` classmethod (such as
    :class:`~pyramid_mixpanel.consumer.PoliteBufferedConsumer`) are built with it; others are
    called without arguments. Anything the consumer raises is caught and logged; a consumer
    with an integer ``failed`` attribute after ``flush()`` reports how many messages it lost.
    """

    def __init__(self, consumer: type, settings: MixpanelSettings, log: Log) -> None:
        super().__init__()
        self.consumer = consumer
        self.settings = settings
        self.log = log
        # Decided once: this runs for every released request.
        from_settings = getattr(consumer, "from_settings", None)
        self._make: t.Callable[[], t.Any] = (
            consumer if from_settings is None else lambda: from_settings(settings, log)
        )

    def make_consumer(self) -> t.Any:
        """A fresh consumer (``request.mixpanel.api._consumer``)."""
        return self._make()

    def submit(self, messages: t.Sequence[Message]) -> int:
        """Feed the messages to a new consumer and flush it; return how many failed."""
        return self.submit_to(None, messages)

    def submit_to(self, consumer: t.Any, messages: t.Sequence[Message]) -> int:
        """Feed the messages to ``consumer`` (a new one if ``None``) and flush it.

        Returns how many failed.
        """
        if not messages:
            return 0
        try:
            if consumer is None:
                consumer = self._make()
            for endpoint, body in messages:
                consumer.send(endpoint, body)
            flush = getattr(consumer, "flush", None)
            if flush is not None:
                flush()
        except Exception as exc:
            # A custom consumer may raise anything; the request must not see it.
            self.stats.add("failed", len(messages))
            self.log.error(
                "mixpanel.consumer_failed",
                consumer=type(exc).__name__,
                messages=len(messages),
                error=str(exc)[:300],
            )
            return len(messages)
        # PoliteBufferedConsumer says how many it could not deliver; other consumers do not.
        failed = getattr(consumer, "failed", 0)
        failed = failed if isinstance(failed, int) and 0 <= failed <= len(messages) else 0
        self.stats.add("consumed", len(messages) - failed)
        if failed:
            self.stats.add("failed", failed)
        return failed
