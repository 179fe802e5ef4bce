"""The figures the Prometheus and OpenTelemetry exports read, when they are collected.

:class:`Observed` reads one app's delivery lanes and relay at collection time (a Prometheus
scrape, an OpenTelemetry reader's cycle): nothing is counted or stored per request for them.
:mod:`pyramid_mixpanel.prometheus` and :mod:`pyramid_mixpanel.otel` export them; this module
needs neither package.

Per lane (``mixpanel``, ``customerio``):

* the delivery's counters (:attr:`~pyramid_mixpanel.delivery.Delivery.stats`): for a background
  engine ``queued``, ``sent``, ``retried``, ``spooled``, ``overflowed``, ``dead``, ``dropped``
  and ``sender_errors``; other deliveries export what they count (``sent``, ``failed`` …);
* for a background engine only (``background`` and ``celery`` delivery): how many messages wait
  (the store plus the in-memory overflow), how long the oldest has waited, whether the sender
  thread runs.

And, when ``pyramid_mixpanel.relay`` is included, the relay's accepted items and refusals by
reason.
"""

from __future__ import annotations

import typing as t

from .delivery.engine import BackgroundEngine
from .runtime import Runtime, get_runtime

if t.TYPE_CHECKING:
    from pyramid.registry import Registry

    from .delivery.store import Store

__all__ = ["OUTCOMES", "App", "Observed"]

#: The message outcomes a background engine counts, in the order they are exported.
OUTCOMES = ("queued", "sent", "retried", "spooled", "overflowed", "dead", "dropped")
#: The counter of failed sender cycles, exported on its own (it counts cycles, not messages).
SENDER_ERRORS = "sender_errors"
#: The relay's counter of accepted items (every other counter of the relay is a refusal reason,
#: but :data:`NOT_CALLS`).
ACCEPTED = "accepted"
#: Counters of the relay's state that count something else than calls: the browser-SDK
#: proxy's properties left out of accepted events (logged with their names).
NOT_CALLS = ("dropped_properties",)
#: An app: its registry (lanes and relay), or a runtime (lanes only).
App: t.TypeAlias = "Registry | Runtime"


class Observed:
    """One app's figures, read anew at each call.

    :param app: the app's registry (its lanes, and its relay when included), or a
        :class:`~pyramid_mixpanel.runtime.Runtime` (its lanes only). A registry's runtime is
        looked up at each read, so an observer may be made before the configuration is
        committed.
    """

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def runtime(self) -> Runtime:
        """The app's runtime.

        :raises MixpanelConfigurationError: the registry has no runtime (``pyramid_mixpanel``
            not included, or its configuration not committed yet).
        """
        return self.app if isinstance(self.app, Runtime) else get_runtime(self.app)

    def messages(self) -> list[tuple[str, str, int]]:
        """``(lane, outcome, count)`` of every message counter of every lane.

        A background engine's outcomes come first, in :data:`OUTCOMES` order; then any other
        counter a delivery keeps (``failed`` …), by name.
        """
        found = []
        for lane, delivery in self.runtime.lanes.items():
            counts = delivery.stats.snapshot()
            counts.pop(SENDER_ERRORS, None)
            order = [name for name in OUTCOMES if name in counts]
            order += sorted(name for name in counts if name not in OUTCOMES)
            found += [(lane, name, counts[name]) for name in order]
        return found

    def sender_errors(self) -> list[tuple[str, int]]:
        """``(lane, count)`` of failed sender cycles, for the lanes whose delivery counts them."""
        found = []
        for lane, delivery in self.runtime.lanes.items():
            counts = delivery.stats.snapshot()
            if SENDER_ERRORS in counts:
                found.append((lane, counts[SENDER_ERRORS]))
        return found

    def queue_depth(self) -> list[tuple[str, int]]:
        """``(lane, messages waiting)``: the store plus the overflow, of each background engine.

        Messages being sent count as waiting until they are settled. A lane whose store cannot
        be read now (a broken spool) is left out, and logged.
        """
        found = []
        for lane, stores in self._queues():
            try:
                found.append((lane, sum(store.pending() for store in stores)))
            except Exception as exc:  # a monitoring read never breaks the scrape
                self._unreadable(lane, "queue_depth", exc)
        return found

    def oldest_age(self) -> list[tuple[str, float]]:
        """``(lane, seconds)`` the oldest waiting message of each background engine has waited.

        ``0.0`` when none waits. A store without ``oldest_age`` (a custom one) is skipped; a
        lane whose store cannot be read now is left out, and logged.
        """
        found = []
        for lane, stores in self._queues():
            try:
                ages = [
                    age
                    for store in stores
                    if (oldest := getattr(store, "oldest_age", None)) is not None
                    and (age := oldest()) is not None
                ]
            except Exception as exc:  # a monitoring read never breaks the scrape
                self._unreadable(lane, "oldest_age", exc)
                continue
            found.append((lane, max(ages, default=0.0)))
        return found

    def sender_up(self) -> list[tuple[str, bool]]:
        """``(lane, up)`` of each background engine's sender thread.

        Up while it runs, and before it started: the sender starts at the first hand-over of
        each process, so an app that has not tracked anything yet is not down. Down once it
        stopped: it died, or the engine was closed.
        """
        found = []
        for lane, delivery in self.runtime.lanes.items():
            if isinstance(delivery, BackgroundEngine):
                found.append((lane, _sender_up(delivery)))
        return found

    def relay_calls(self) -> list[tuple[str, int]] | None:
        """``(result, count)``: the relay's accepted items, then its refusals by reason.

        ``None`` unless the app is a registry that includes ``pyramid_mixpanel.relay``. A reason
        shows once it happened (``csrf``, ``rate_limited``, ``invalid`` …).
        """
        if isinstance(self.app, Runtime):
            return None
        from .relay import RELAY_KEY  # here: the relay's modules only load for its users

        state = self.app.get(RELAY_KEY)
        if state is None:
            return None
        counts = state.stats.snapshot()
        accepted = counts.pop(ACCEPTED, 0)
        for name in NOT_CALLS:
            counts.pop(name, None)
        return [(ACCEPTED, accepted), *sorted(counts.items())]

    def _queues(self) -> list[tuple[str, list[Store]]]:
        """Each background engine's lane and stores (the store, and the overflow if apart)."""
        found = []
        for lane, delivery in self.runtime.lanes.items():
            if isinstance(delivery, BackgroundEngine):
                stores = [delivery.store]
                if delivery.overflow is not delivery.store:
                    stores.append(delivery.overflow)
                found.append((lane, stores))
        return found

    def _unreadable(self, lane: str, figure: str, exc: Exception) -> None:
        self.runtime.log.warning(
            "mixpanel.observed_unreadable",
            lane=lane,
            figure=figure,
            error=f"{type(exc).__name__}: {exc}"[:300],
            detail="left out of this collection",
        )


def _sender_up(engine: BackgroundEngine) -> bool:
    """Whether ``engine``'s sender runs, or was not needed yet in this process."""
    # Not health(), which also reads the store (closed with the engine).
    return engine.sender_up
