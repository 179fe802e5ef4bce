"""Client-side rate limits for Mixpanel's query APIs, shared by every client of a project.

Mixpanel's limits are per project (reference/rate-limits): the Query API allows 60 queries per
hour and 5 at once; the Raw Data Export API 60 per hour, 3 per second and 100 at once. Going over
earns 429s and, for a backfill, a stalled job; waiting on our side first is cheaper and makes long
runs predictable.

By default the slots are kept in the process, shared by every client of the project there. An app
that runs several processes against one project (web workers, ``pmixpanel sync``, Celery workers)
shares them through a database instead: ``mixpanel.query_limits_url``, by default the metrics
database (``mixpanel.metrics.database_url``) when it is set. Every process then takes its slots
from the same rows (:class:`pyramid_mixpanel.metrics.limits.SqlLimitStore`), timed by the wall
clock, which every process agrees on.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import typing as t
import uuid
from dataclasses import dataclass, field

if t.TYPE_CHECKING:
    from .log import Log

__all__ = [
    "LimitStore",
    "MemoryLimitStore",
    "QueryLimits",
    "SlidingWindow",
    "limits_for",
    "project_digest",
]


Clock = t.Callable[[], float]
Sleep = t.Callable[[float], None]


class LimitStore(t.Protocol):
    """Where the slots of the limits are kept: this process, or a database every process shares."""

    def take(self, name: str, limit: int, period: float, now: float) -> float:
        """Take a slot of the window ``name`` at ``now``, or say how long to wait for one.

        A slot is free when fewer than ``limit`` calls were recorded in the ``period`` seconds
        before ``now``: the call is recorded and ``0.0`` returned. Otherwise nothing is recorded
        and the seconds until the oldest call leaves the window are returned.
        """

    def lease(self, name: str, limit: int, now: float, expires: float) -> str | None:
        """Hold one of ``limit`` slots of ``name``; ``None`` when all are held at ``now``.

        The slot is held until :meth:`release`, or until ``expires`` should its holder die.
        """

    def release(self, name: str, token: str) -> None:
        """Give back the slot that :meth:`lease` returned ``token`` for."""


class MemoryLimitStore:
    """A :class:`LimitStore` in this process's memory (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, list[float]] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def take(self, name: str, limit: int, period: float, now: float) -> float:  # noqa: D102
        with self._lock:
            calls = [at for at in self._calls.get(name, ()) if at > now - period]
            self._calls[name] = calls
            if len(calls) < limit:
                calls.append(now)
                return 0.0
            return min(calls) + period - now

    def lease(self, name: str, limit: int, now: float, expires: float) -> str | None:  # noqa: D102
        with self._lock:
            held = {k: until for k, until in self._leases.get(name, {}).items() if until > now}
            self._leases[name] = held
            if len(held) >= limit:
                return None
            token = uuid.uuid4().hex
            held[token] = expires
            return token

    def release(self, name: str, token: str) -> None:  # noqa: D102
        with self._lock:
            self._leases.get(name, {}).pop(token, None)


class SlidingWindow:
    """At most ``limit`` calls in any ``period`` seconds; :meth:`acquire` waits for a slot.

    :param store: where the calls are recorded (by default this window's own memory).
    :param name: the window's name in ``store``.
    """

    def __init__(
        self,
        limit: int,
        period: float,
        clock: Clock,
        sleep: Sleep,
        store: LimitStore | None = None,
        name: str = "window",
    ) -> None:
        self.limit = limit
        self.period = period
        self.clock = clock
        self.sleep = sleep
        self.store: LimitStore = store if store is not None else MemoryLimitStore()
        self.name = name

    def acquire(self) -> float:
        """Take a slot, sleeping until one is free; return the seconds waited."""
        waited = 0.0
        while True:
            wait = self.store.take(self.name, self.limit, self.period, self.clock())
            if wait <= 0:
                return waited
            self.sleep(wait)
            waited += wait


class _Semaphore:
    """At most ``limit`` holders at once in this process (waiting without polling)."""

    def __init__(self, limit: int) -> None:
        self._semaphore = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def hold(self) -> t.Iterator[None]:
        with self._semaphore:
            yield


class _Leases:
    """At most ``limit`` holders at once among every process sharing ``store``."""

    def __init__(self, limits: QueryLimits, name: str, limit: int) -> None:
        self.limits = limits
        self.name = name
        self.limit = limit

    @contextlib.contextmanager
    def hold(self) -> t.Iterator[None]:
        limits = self.limits
        store = t.cast(LimitStore, limits.store)
        while True:
            now = limits.clock()
            token = store.lease(self.name, self.limit, now, now + limits.lease_seconds)
            if token is not None:
                break
            # Another process holds every slot and will not tell us when it lets go: ask again.
            limits.sleep(limits.poll_seconds)
        try:
            yield
        finally:
            store.release(self.name, token)


@dataclass
class QueryLimits:
    """The limits one project's clients share (see :func:`limits_for`).

    :param store: where the slots are kept; ``None`` keeps them in this object (one process).
        With a shared store, ``clock`` must be one every process agrees on (:func:`time.time`).
    :param key: names the project in ``store`` (never a secret).
    :param margin: seconds added to every window. Mixpanel counts a call when it arrives, a
        little after we counted it, and calls do not all arrive equally late: without a margin
        the fourth export of a second may reach it within the same second as the first.
    :param lease_seconds: how long a concurrency slot of a shared store stays taken when its
        process dies without giving it back.
    :param poll_seconds: how often a process waiting for a shared concurrency slot asks again.
    """

    queries_per_hour: int = 60
    concurrent_queries: int = 5
    exports_per_hour: int = 60
    exports_per_second: int = 3
    concurrent_exports: int = 100
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep
    store: LimitStore | None = field(default=None, repr=False)
    key: str = ""
    margin: float = 0.25
    lease_seconds: float = 900.0
    poll_seconds: float = 0.5
    _windows: dict[str, SlidingWindow] = field(default_factory=dict, repr=False)
    _running: dict[str, _Semaphore | _Leases] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        store = self.store
        windows = {
            "query:hour": (self.queries_per_hour, 3600.0),
            "export:hour": (self.exports_per_hour, 3600.0),
            "export:second": (self.exports_per_second, 1.0),
        }
        self._windows = {
            name: SlidingWindow(
                limit, period + self.margin, self.clock, self.sleep, store, f"{self.key}:{name}"
            )
            for name, (limit, period) in windows.items()
        }
        running = {"query": self.concurrent_queries, "export": self.concurrent_exports}
        self._running = {
            kind: _Semaphore(limit)
            if store is None
            else _Leases(self, f"{self.key}:{kind}:running", limit)
            for kind, limit in running.items()
        }

    @contextlib.contextmanager
    def query(self) -> t.Iterator[float]:
        """Hold a Query API slot (hourly budget and concurrency) for one call."""
        waited = self._windows["query:hour"].acquire()
        with self._running["query"].hold():
            yield waited

    def export(self) -> float:
        """Take an export slot (hourly and per-second budgets); return the seconds waited."""
        return self._windows["export:hour"].acquire() + self._windows["export:second"].acquire()

    @contextlib.contextmanager
    def exporting(self) -> t.Iterator[float]:
        """Take an export slot and hold one of the concurrent exports while the body streams."""
        waited = self.export()
        with self._running["export"].hold():
            yield waited


_SHARED: dict[tuple[tuple[str, ...], str | None], QueryLimits] = {}
_STORES: dict[str, LimitStore] = {}
_SHARED_LOCK = threading.Lock()


def project_digest(key: tuple[str, ...]) -> str:
    """A short name for a project key in a shared store (it holds no secret, but stays opaque)."""
    return hashlib.sha256("\0".join(key).encode()).hexdigest()[:32]


def limits_for(key: tuple[str, ...], url: str | None = None, log: Log | None = None) -> QueryLimits:
    """The limits of one project (``key`` identifies it, without secrets).

    :param url: an SQLAlchemy database URL where every process of the app shares the limits
        (``mixpanel.query_limits_url``); ``None`` shares them within this process only.
    :param log: where the shared store reports that it cannot be used (then this process's
        own limits apply until it can).
    """
    with _SHARED_LOCK:
        limits = _SHARED.get((key, url))
        if limits is None:
            if url is None:
                limits = QueryLimits()
            else:
                store = _STORES.get(url)
                if store is None:
                    from .metrics.limits import SqlLimitStore

                    store = _STORES[url] = SqlLimitStore(url, log)
                limits = QueryLimits(clock=time.time, store=store, key=project_digest(key))
            _SHARED[key, url] = limits
        return limits
