"""Client-side rate limits for Mixpanel's query APIs, shared by every client of a project.

Mixpanel allows 60 queries per hour and 5 at once on the Query API, and 60 per hour and 3 per
second on the Raw Event Export API. Going over earns 429s and, for a backfill, a stalled job;
waiting on our side first is cheaper and makes long runs predictable.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import typing as t
from dataclasses import dataclass, field

__all__ = ["QueryLimits", "SlidingWindow", "limits_for"]


Clock = t.Callable[[], float]
Sleep = t.Callable[[float], None]


class SlidingWindow:
    """At most ``limit`` calls in any ``period`` seconds; :meth:`acquire` waits for a slot."""

    def __init__(self, limit: int, period: float, clock: Clock, sleep: Sleep) -> None:
        self.limit = limit
        self.period = period
        self.clock = clock
        self.sleep = sleep
        self._calls: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take a slot, sleeping until one is free; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock()
                while self._calls and self._calls[0] <= now - self.period:
                    self._calls.popleft()
                if len(self._calls) < self.limit:
                    self._calls.append(now)
                    return waited
                wait = self._calls[0] + self.period - now
            self.sleep(wait)
            waited += wait


@dataclass
class QueryLimits:
    """The limits one project's clients share (see :func:`limits_for`)."""

    queries_per_hour: int = 60
    concurrent_queries: int = 5
    exports_per_hour: int = 60
    exports_per_second: int = 3
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep
    _windows: dict[str, SlidingWindow] = field(default_factory=dict, repr=False)
    _running: threading.BoundedSemaphore | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._windows = {
            "query": SlidingWindow(self.queries_per_hour, 3600.0, self.clock, self.sleep),
            "export_hour": SlidingWindow(self.exports_per_hour, 3600.0, self.clock, self.sleep),
            "export_second": SlidingWindow(self.exports_per_second, 1.0, self.clock, self.sleep),
        }
        self._running = threading.BoundedSemaphore(self.concurrent_queries)

    @contextlib.contextmanager
    def query(self) -> t.Iterator[float]:
        """Hold a Query API slot (hourly budget and concurrency) for one call."""
        waited = self._windows["query"].acquire()
        with t.cast(threading.BoundedSemaphore, self._running):
            yield waited

    def export(self) -> float:
        """Take an export slot (hourly and per-second budgets); return the seconds waited."""
        return self._windows["export_hour"].acquire() + self._windows["export_second"].acquire()


_SHARED: dict[tuple[str, ...], QueryLimits] = {}
_SHARED_LOCK = threading.Lock()


def limits_for(key: tuple[str, ...]) -> QueryLimits:
    """The process-wide limits of one project (``key`` identifies it, without secrets)."""
    with _SHARED_LOCK:
        limits = _SHARED.get(key)
        if limits is None:
            limits = _SHARED[key] = QueryLimits()
        return limits
