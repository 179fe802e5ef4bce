"""``mixpanel.delivery = background``: requests hand messages over and return at once.

One engine per lane of an app, owned by the app's runtime; one sender thread per engine and
process, started lazily on the first hand-over and again after a fork (``os.register_at_fork``
plus a pid check, so gunicorn/uwsgi pre-fork — ``--preload`` included — works). Messages wait in
a :mod:`~pyramid_mixpanel.delivery.store` (memory, or the durable SQLite spool); the sender
claims due batches per endpoint of the lane, posts them through the lane's transport and settles
each batch:

* delivered → deleted;
* connection error, timeout, 408, 429, 5xx → held back with capped exponential backoff and full
  jitter (``Retry-After`` honoured). The endpoint — every endpoint, when Mixpanel could not be
  reached at all — pauses for that delay, so one failing batch costs one timeout, not one per
  batch, and other endpoints keep flowing;
* any other refusal → dead letters with Mixpanel's error text (for a strict ``/import``, only the
  refused records; the rest were accepted).

At interpreter exit (and on :meth:`BackgroundEngine.close`) the engine drains for at most
``mixpanel.shutdown_timeout`` seconds and never joins without a timeout: what is left stays in
the spool, or is counted and logged as lost when there is none. The exit and fork hooks are
installed when the first sender starts, not when this module is imported.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import typing as t
import weakref

from ..counters import Counters
from ..log import Log
from .base import Delivery, Message, Outcome, Transport
from .policy import RetryPolicy
from .store import Batch, MemoryStore, SqliteSpool, Store

if t.TYPE_CHECKING:
    from ..settings import MixpanelSettings

__all__ = ["COUNTERS", "BackgroundEngine"]

COUNTERS = ("queued", "sent", "retried", "spooled", "dead", "dropped")
# While anything fails, counters are logged at most this often (seconds).
FAILURE_LOG_INTERVAL = 30.0

# Engines whose sender started in this process: what the exit and fork hooks act on. Weak, so
# an app that is gone takes its engine with it; the runtime, not this set, owns an engine.
_STARTED: weakref.WeakSet[BackgroundEngine] = weakref.WeakSet()
_HOOKS_LOCK = threading.Lock()
_hooks_installed = False


def _install_hooks() -> None:
    """Register the exit and fork hooks, once, when the first sender starts."""
    global _hooks_installed
    with _HOOKS_LOCK:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all)
        os.register_at_fork(after_in_child=_after_fork)


class BackgroundEngine(Delivery):
    """Deliver one lane's messages from a store on a sender thread; never block the caller.

    :param store: where messages wait (:class:`~.store.MemoryStore` or
        :class:`~.store.SqliteSpool`).
    :param transport: posts the lane's batches, within its own batch limits.
    :param spooled: whether the store survives the process (changes counters and shutdown logs).
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        log: Log,
        *,
        policy: RetryPolicy | None = None,
        spooled: bool = False,
        flush_interval: float = 1.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.store = store
        self.transport = transport
        self.log = log
        self.policy = policy or RetryPolicy()
        self.spooled = spooled
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.stats = Counters(COUNTERS)
        self._event = f"{transport.name}."
        self._closed = False
        self._reset_process_state()

    @classmethod
    def from_settings(
        cls, transport: Transport, settings: MixpanelSettings, log: Log
    ) -> BackgroundEngine:
        """The engine of one lane: the SQLite spool when ``mixpanel.spool_path`` is set."""
        store: Store
        if settings.spool_path:
            # A claimed batch is leased for a few times the longest a post may take: long
            # enough that a live sender keeps it, short enough that a crashed sender's rows
            # soon come back.
            lease = 4 * (settings.connect_timeout + settings.read_timeout) + 5
            store = SqliteSpool(
                settings.spool_path,
                settings.queue_max_messages,
                settings.queue_max_bytes,
                lease,
                endpoints=transport.endpoints,
                lane=transport.name,
            )
        else:
            store = MemoryStore(settings.queue_max_messages, settings.queue_max_bytes)
        return cls(
            store,
            transport,
            log,
            spooled=bool(settings.spool_path),
            flush_interval=settings.flush_interval,
            shutdown_timeout=settings.shutdown_timeout,
        )

    def _reset_process_state(self) -> None:
        """State that belongs to one process; rebuilt in a forked child."""
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # endpoint -> (paused until, consecutive failures)
        self._pauses: dict[str, tuple[float, int]] = {}
        self._failing_since: float | None = None
        self._last_failure_log = 0.0

    # -- the request side -------------------------------------------------------------------

    def submit(self, messages: t.Sequence[Message]) -> int:
        """Accept a request's messages without any network I/O; return how many were refused.

        Never raises: refusals are counted as ``dropped`` and logged.
        """
        if not messages:
            return 0
        try:
            refused = self.store.put(messages)
        except Exception as exc:
            # The spool file may be unwritable (disk full, permissions): say so loudly, but the
            # request that produced the messages must still succeed.
            refused = len(messages)
            self.log.error(self._event + "spool_write_failed", error=str(exc)[:300])
        accepted = len(messages) - refused
        self.stats.add("queued", accepted)
        if self.spooled:
            self.stats.add("spooled", accepted)
        if refused:
            self.stats.add("dropped", refused)
            self.log.error(
                self._event + "queue_full_dropped",
                messages=refused,
                detail="the queue cap (mixpanel.queue_max_messages / _bytes) is reached",
            )
        self._ensure_sender()
        self._wake.set()
        return refused

    def _ensure_sender(self) -> None:
        if self._pid != os.getpid():
            self._reset_process_state()  # forked without the at-fork hook (belt and braces)
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            _install_hooks()
            _STARTED.add(self)
            self._thread = threading.Thread(
                target=self._run, name=f"pyramid_mixpanel-{self.transport.name}", daemon=True
            )
            self._thread.start()

    def start(self) -> None:
        """Start the sender now, e.g. to send what a spool holds from an earlier run."""
        self._ensure_sender()
        self._wake.set()

    def open(self) -> None:
        """When the app is configured: send what an earlier run left in the spool right away."""
        if self.store.pending():
            self.start()

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.send_due()
            except Exception as exc:  # a bug or a broken spool must not kill delivery for good
                self.log.error(self._event + "sender_error", error=f"{type(exc).__name__}: {exc}")
                worked = False
            if not worked:
                self._wake.wait(self._idle_wait())
                self._wake.clear()

    def _idle_wait(self) -> float:
        due = self.store.next_due()
        now = time.time()
        waits = [self.flush_interval]
        if due is not None:
            waits.append(max(0.0, due - now))
        waits.extend(max(0.0, until - now) for until, _ in self._pauses.values() if until > now)
        return max(0.01, min(waits))

    def send_due(self) -> bool:
        """Send one due batch per endpoint that is not paused; return whether any was sent."""
        worked = False
        transport = self.transport
        for endpoint in transport.endpoints:
            now = time.time()
            paused_until, _ = self._pauses.get(endpoint, (0.0, 0))
            if paused_until > now:
                continue
            batch = self.store.claim(endpoint, now, transport.max_records, transport.max_bytes)
            if batch is None:
                continue
            worked = True
            self._settle(batch, self.transport.post(endpoint, batch.bodies))
        self._maybe_log_failures()
        return worked

    def _settle(self, batch: Batch, outcome: Outcome) -> None:
        if outcome.sent:
            self.store.ack(batch)
            self.stats.add("sent", len(batch.ids))
            self._pauses.pop(batch.endpoint, None)
            if not self._pauses:
                self._failing_since = None
            return
        arrived, retry, dead = outcome.partition(len(batch.ids))
        if dead:
            whole = len(dead) == len(batch.ids)
            refused = batch if whole else _part(batch, dead)
            reasons = outcome.reasons if whole else _renumber(outcome.reasons, dead)
            self.store.bury(refused, outcome.error, reasons=reasons)
            self.stats.add("dead", len(dead))
            self.log.error(
                self._event + "delivery_refused",
                endpoint=batch.endpoint,
                messages=len(dead),
                error=outcome.error,
                detail="kept as dead letters: pmixpanel dead <config.ini>",
            )
        if arrived:
            self.store.ack(_part(batch, arrived))
            self.stats.add("sent", len(arrived))
        if retry:
            self._retry(batch if len(retry) == len(batch.ids) else _part(batch, retry), outcome)

    def _retry(self, batch: Batch, outcome: Outcome) -> None:
        _, failures = self._pauses.get(batch.endpoint, (0.0, 0))
        delay = self.policy.delay(max(batch.attempts, failures) + 1, outcome.retry_after)
        until = time.time() + delay
        self.store.retry(batch, until)
        self.stats.add("retried", len(batch.ids))
        paused = self.transport.endpoints if outcome.unreachable else (batch.endpoint,)
        for endpoint in paused:
            self._pauses[endpoint] = (until, failures + 1)
        self._failing_since = self._failing_since or time.time()
        self.log.warning(
            self._event + "delivery_retry",
            endpoint=batch.endpoint,
            messages=len(batch.ids),
            retry_in=round(delay, 2),
            error=outcome.error,
        )

    def _maybe_log_failures(self) -> None:
        if self._failing_since is None:
            return
        now = time.time()
        if now - self._last_failure_log < FAILURE_LOG_INTERVAL:
            return
        self._last_failure_log = now
        self.log.warning(
            self._event + "delivery_failing",
            failing_for=round(now - self._failing_since, 1),
            pending=self.store.pending(),
            **self.stats.snapshot(),
        )

    # -- shutdown ---------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> int:
        """Drain for at most ``timeout`` seconds (default ``shutdown_timeout``), then stop.

        Returns how many messages were left undelivered: they stay in the spool, or are lost
        (and logged as such) with the memory store. Never blocks longer than ``timeout`` plus
        one store operation.
        """
        if self._closed:
            return 0
        self._closed = True
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        thread = self._thread if self._pid == os.getpid() else None
        if thread is not None:
            while time.monotonic() < deadline and thread.is_alive() and self._drainable(deadline):
                self._wake.set()
                time.sleep(0.02)
            self._stop.set()
            self._wake.set()
            thread.join(max(0.0, deadline - time.monotonic()))
        if thread is None:
            # This process never sent anything: what a shared spool holds is not its to report.
            self.store.close()
            self.transport.close()
            return 0
        left = self.store.pending()
        if left:
            self.log.warning(
                self._event + "shutdown_left_messages",
                messages=left,
                kept="in the spool" if self.spooled else "nowhere: lost (set mixpanel.spool_path)",
            )
        if not thread.is_alive():
            self.store.close()
            self.transport.close()
        return left

    def _drainable(self, deadline: float) -> bool:
        """Whether something is pending that could still be sent before ``deadline``."""
        if not self.store.pending():
            return False
        due = self.store.next_due()
        return due is not None and due <= time.time() + (deadline - time.monotonic())

    def _after_fork_in_child(self) -> None:
        self._reset_process_state()
        self.stats = Counters(COUNTERS)
        # The parent still owns (and will send) what it had queued in memory.
        self.store.after_fork()


def _part(batch: Batch, positions: t.Sequence[int]) -> Batch:
    """The records of ``batch`` at ``positions``, as a batch of their own."""
    return Batch(
        batch.endpoint,
        tuple(batch.ids[i] for i in positions),
        tuple(batch.bodies[i] for i in positions),
        batch.attempts,
    )


def _renumber(reasons: t.Mapping[int, str], positions: t.Sequence[int]) -> dict[int, str]:
    """``reasons`` by position in the batch made of ``positions``."""
    return {new: reasons[old] for new, old in enumerate(positions) if old in reasons}


def _close_all() -> None:
    for engine in list(_STARTED):
        engine.close()


def _after_fork() -> None:
    for engine in list(_STARTED):
        engine._after_fork_in_child()
