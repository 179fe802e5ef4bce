"""``mixpanel.delivery = background``: requests hand messages over and return at once.

One engine per lane of an app, owned by the app's runtime; one sender thread per engine and
process, started lazily on the first hand-over and again after a fork (``os.register_at_fork``
plus a pid check, so gunicorn/uwsgi pre-fork — ``--preload`` included — works). Messages wait in
a :mod:`~pyramid_mixpanel.delivery.store` (memory, or the durable SQLite spool); the sender
claims due batches per endpoint of the lane, posts them through the lane's transport and settles
each batch (a backlog of full batches with a poster thread beside it, two posts in flight):

* delivered → deleted;
* connection error, timeout, 408, 429, 5xx → held back with Mixpanel's backoff (``Retry-After``
  honoured). The endpoint — every endpoint, when the destination could not be reached at all —
  pauses for that delay, so one failing batch costs one timeout, not one per batch, and other
  endpoints keep flowing;
* any other refusal → dead letters with the destination's reason (for a strict ``/import``,
  only the refused records; the rest were accepted).

Nothing stops it for good. The sender is supervised: any exception in a cycle (a broken spool,
a bug) is logged, counted as ``sender_errors`` and the loop goes on after a short, growing pause;
:meth:`BackgroundEngine.health` (and ``pmixpanel status`` through the spool) says when it last
made progress. When the spool cannot take a request's messages at once (another process holds
its lock, the disk is full), they wait in a bounded in-memory overflow — counted as
``overflowed`` — and are spooled, or sent, by the sender; the request never waits.

At interpreter exit, and on ``SIGTERM`` for servers that would otherwise die without running
exit hooks (``pserve``/waitress), the engine drains for at most ``mixpanel.shutdown_timeout``
seconds and logs how many messages were left and where (the spool, or lost). The exit, fork and
signal hooks are installed when an engine is first used, not when this module is imported; a
``SIGTERM`` handler the app already has is kept and called instead.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import signal
import threading
import time
import typing as t
import weakref

from ..counters import Counters
from ..exceptions import MixpanelConfigurationError
from ..log import Log
from .base import Delivery, Message, Outcome, Transport
from .policy import RetryPolicy
from .store import Batch, MemoryStore, SpoolError, SqliteSpool, Store
from .store.journal import Journal, adopt
from .store.spool import CORRUPT

if t.TYPE_CHECKING:
    import types

    from ..settings import MixpanelSettings

__all__ = ["COUNTERS", "BackgroundEngine"]

COUNTERS = (
    "queued",
    "sent",
    "retried",
    "spooled",
    "overflowed",
    "dead",
    "dropped",
    "sender_errors",
)
# While anything fails, counters are logged at most this often (seconds).
FAILURE_LOG_INTERVAL = 30.0
# How often the sender checks its store (a spool file replaced or deleted) and records that it
# is alive, in seconds.
CHECK_INTERVAL = 2.0
# The longest pause of a sender whose cycles keep failing, in seconds.
SUPERVISOR_CAP = 30.0
# After the store failed a request, the next requests skip it for this long (seconds): one
# request in this interval pays the spool's lock wait, not every request.
STORE_RETRY = 1.0
# Woken by a hand-over, the sender waits this long (seconds) for more before it claims, unless
# a whole batch is already waiting: otherwise it posts the first few messages of a busy app one
# request at a time, each post waking it again, and takes the GIL from the app's threads.
LINGER = 0.05
# While the destination cannot be reached at all, how often the sender checks whether it takes
# connections again (seconds), instead of sleeping out a backoff of up to a minute.
PROBE_INTERVAL = 1.0
# At most this many batches held back during an outage are made due at once when the destination
# is back; older ones wait out their own backoff.
MAX_HELD = 64
# With ``mixpanel.spool_commit = group``: how long the spooler lets hand-overs gather before it
# commits them in one transaction (seconds). The most a ``kill -9`` can cost in that mode.
GROUP_WINDOW = 0.005
# While a backlog drains, this many posts are in flight at once (see _post_and_settle).
IN_FLIGHT = 2
# A backlog drains in spans of at most this long (seconds); between them the sender visits the
# other endpoints, moves the overflow, checks its store and records that it is alive.
SPAN = 0.25
# A problem writing the spool on the request path is logged at most this often (seconds).
SPOOL_LOG_INTERVAL = 10.0

# Engines whose sender started in this process: what the exit and fork hooks act on. Weak, so
# an app that is gone takes its engine with it; the runtime, not this set, owns an engine.
_STARTED: weakref.WeakSet[BackgroundEngine] = weakref.WeakSet()
_HOOKS_LOCK = threading.Lock()
_hooks_installed = False
#: The signal handlers this module replaced, called in their turn.
_PREVIOUS: dict[int, t.Any] = {}


def _install_hooks() -> None:
    """Register the exit and fork hooks, once, when the first sender starts."""
    global _hooks_installed
    with _HOOKS_LOCK:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all)
        os.register_at_fork(after_in_child=_after_fork)


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    """Let the process end through its exit hooks, so the engines drain and say what is left."""
    previous = _PREVIOUS.get(signum)
    if callable(previous):
        # The app (or its server: gunicorn) has its own way of stopping: keep it. Its exit
        # runs the exit hooks.
        previous(signum, frame)
        return
    # The default action would kill the process without running any exit hook (waitress,
    # pserve): exit instead, which runs them.
    raise SystemExit(128 + signum)


def _install_signal_handlers() -> None:
    """Chain ``SIGTERM`` (only possible from the main thread; elsewhere, exit hooks only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm or current == signal.SIG_IGN:
        return
    _PREVIOUS[signal.SIGTERM] = current
    signal.signal(signal.SIGTERM, _on_sigterm)


class BackgroundEngine(Delivery):
    """Deliver one lane's messages from a store on a sender thread; never block the caller.

    :param store: where messages wait (:class:`~.store.MemoryStore` or
        :class:`~.store.SqliteSpool`).
    :param transport: posts the lane's batches, within its own batch limits.
    :param spooled: whether the store survives the process (changes counters and shutdown logs).
    :param journal: hand-overs are appended to this journal of the spool and moved into it by
        the spooler thread (``mixpanel.spool_commit = request``); see
        :mod:`~pyramid_mixpanel.delivery.store.journal`.
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        log: Log,
        *,
        policy: RetryPolicy | None = None,
        spooled: bool = False,
        group_commit: bool = False,
        journal: Journal | None = None,
        flush_interval: float = 1.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.store = store
        self.transport = transport
        self.log = log
        self.policy = policy or RetryPolicy()
        self.spooled = spooled
        #: Hand-overs go to memory and the spooler thread commits them in groups (see
        #: ``mixpanel.spool_commit``); otherwise each request's messages are committed at once.
        self.group_commit = group_commit and spooled
        self.journal = None if self.group_commit else journal
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.stats = Counters(COUNTERS)
        #: Where a request's messages wait when the store cannot take them at once (bounded
        #: like the store; what does not fit is dropped, counted and logged).
        self.overflow = MemoryStore(
            getattr(store, "max_messages", 100_000), getattr(store, "max_bytes", 64 << 20)
        )
        self._stores = (store, self.overflow)
        #: When the sender last completed a cycle (wall clock), and the last error of a cycle.
        self.last_progress: float | None = None
        self.last_error = ""
        self._event = f"{transport.name}."
        self._closed = False
        self._spool_logged = 0.0
        # Until then, requests skip a store that just failed (the sender tries it meanwhile).
        self._store_retry_at = 0.0
        self._reset_process_state()

    @classmethod
    def from_settings(
        cls, transport: Transport, settings: MixpanelSettings, log: Log
    ) -> BackgroundEngine:
        """The engine of one lane: the SQLite spool when ``mixpanel.spool_path`` is set.

        :raises MixpanelConfigurationError: the spool file cannot be used; the message names
            ``mixpanel.spool_path``, the file and the reason.
        """
        store: Store
        journal = None
        if settings.spool_path:
            # A claimed batch is leased for a few times the longest a post may take: long
            # enough that a live sender keeps it, short enough that a crashed sender's rows
            # soon come back.
            lease = 4 * (settings.connect_timeout + settings.read_timeout) + 5
            try:
                spool = SqliteSpool(
                    settings.spool_path,
                    settings.queue_max_messages,
                    settings.queue_max_bytes,
                    lease,
                    endpoints=transport.endpoints,
                    lane=transport.name,
                    repair=settings.spool_repair,
                )
            except SpoolError as error:
                corrupted = any(word in error.problem for word in CORRUPT)
                hint = (
                    " (set mixpanel.spool_repair = true to move a corrupted file aside and"
                    " start an empty one)"
                    if corrupted and not settings.spool_repair
                    else ""
                )
                raise MixpanelConfigurationError(
                    f"mixpanel.spool_path = {settings.spool_path!r}: {error.problem}{hint}"
                ) from None
            if spool.repaired:
                log.error(
                    transport.name + ".spool_repaired",
                    path=settings.spool_path,
                    moved_to=spool.repaired,
                    detail="the file was corrupted: it was moved aside, an empty spool started",
                )
            store = spool
            if settings.spool_commit == "request":
                journal = Journal(spool)
        else:
            store = MemoryStore(settings.queue_max_messages, settings.queue_max_bytes)
        return cls(
            store,
            transport,
            log,
            spooled=bool(settings.spool_path),
            group_commit=settings.spool_commit == "group",
            journal=journal,
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
        # endpoint -> (paused until, on the monotonic clock; consecutive failures)
        self._pauses: dict[str, tuple[float, int]] = {}
        self._failing_since: float | None = None
        self._last_failure_log = 0.0
        # The sender waits for work: the next hand-over must wake it (otherwise none does, so a
        # busy app does not pay for waking a sender that is already at work).
        self._idle = False
        # Messages handed over since the sender last claimed, and the signal that a whole batch
        # waits (ends a linger early).
        self._handed = 0
        self._full = threading.Event()
        # While the destination was unreachable: when to check it again, and the batches held
        # back for it (store, endpoint, row ids, held until), due again as soon as it is back.
        self._unreachable = False
        self._next_probe = 0.0
        self._held: list[tuple[Store, str, tuple[int, ...], float]] = []
        # The threads that post a backlog, IN_FLIGHT batches at once (see _post_and_settle).
        self._poster: concurrent.futures.ThreadPoolExecutor | None = None
        # The spooler of group commits, and whether it waits for hand-overs.
        self._spooler: threading.Thread | None = None
        self._spool_wake = threading.Event()
        self._spooler_idle = False

    # -- the request side -------------------------------------------------------------------

    def submit(self, messages: t.Sequence[Message]) -> int:
        """Accept a request's messages without any network I/O; return how many were refused.

        Never raises and never waits on another process: what the store cannot take at once
        waits in the bounded overflow; refusals are counted as ``dropped`` and logged.
        """
        if not messages:
            return 0
        if self.group_commit:
            # Committed by the spooler within GROUP_WINDOW, with what other requests handed over.
            refused = self.overflow.put(messages)
            accepted = len(messages) - refused
            if self._spooler_idle:
                self._spooler_idle = False
                self._spool_wake.set()
        else:
            refused, accepted = self._store_put(messages)
            if self.journal is not None and self._spooler_idle:
                self._spooler_idle = False
                self._spool_wake.set()
        self.stats.add("queued", accepted)
        if refused:
            self.stats.add("dropped", refused)
            self.log.error(
                self._event + "queue_full_dropped",
                messages=refused,
                detail="the queue cap (mixpanel.queue_max_messages / _bytes) is reached",
            )
        self._handed += accepted
        self._ensure_sender()
        if self._idle:
            self._idle = False
            self._wake.set()
        elif self._handed >= self.transport.max_records:
            self._full.set()
        return refused

    def _store_put(self, messages: t.Sequence[Message]) -> tuple[int, int]:
        """Into the journal or the store now, else into the overflow; ``(refused, accepted)``."""
        try:
            if time.monotonic() < self._store_retry_at:
                # The store just failed: do not make every request wait to learn it again.
                raise SpoolError(getattr(self.store, "path", ""), "was just unavailable")
            journal = self.journal
            refused = self.store.put(messages) if journal is None else journal.append(messages)
            accepted = len(messages) - refused
            if self.spooled:
                self.stats.add("spooled", accepted)
        except Exception as exc:
            # The spool is locked by another process, full, or unwritable: the request that
            # produced the messages must still succeed at once, and the messages be kept.
            if not (isinstance(exc, SpoolError) and exc.problem == "was just unavailable"):
                self._store_retry_at = time.monotonic() + STORE_RETRY
            refused = self.overflow.put(messages)
            accepted = len(messages) - refused
            self.stats.add("overflowed", accepted)
            self._spool_trouble(exc, accepted)
        return refused, accepted

    def _spool_trouble(self, exc: Exception, kept: int) -> None:
        now = time.monotonic()
        if now - self._spool_logged < SPOOL_LOG_INTERVAL:
            return
        self._spool_logged = now
        problem = exc.problem if isinstance(exc, SpoolError) else f"{type(exc).__name__}: {exc}"
        self.log.error(
            self._event + "spool_unavailable",
            problem=problem[:300],
            kept_in_memory=kept,
            overflowed=self.stats["overflowed"],
            detail="kept in memory until the spool takes them again",
        )

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
            if self.group_commit or self.journal is not None:
                self._spooler = threading.Thread(
                    target=self._spool_run,
                    name=f"pyramid_mixpanel-{self.transport.name}-spooler",
                    daemon=True,
                )
                self._spooler.start()

    def start(self) -> None:
        """Start the sender now, e.g. to send what a spool holds from an earlier run."""
        self._ensure_sender()
        self._wake.set()

    def open(self) -> None:
        """When the app is configured: hook ``SIGTERM``; send what a spool kept, right away.

        With a journal the sender starts at once: its first cycle moves in what the journals of
        processes that are gone hold.
        """
        _install_signal_handlers()
        # With a journal, the sender's first cycle also adopts what dead processes left in
        # theirs (see _check_store).
        if self.journal is not None or self.store.pending():
            self.start()

    @property
    def sender_up(self) -> bool:
        """Whether the sender runs, or was not needed yet in this process (it starts lazily).

        False once it died or the engine was closed. Reads no store (unlike :meth:`health`),
        so it is safe after :meth:`close`.
        """
        thread = self._thread
        if thread is None:
            return not self._closed
        return thread.is_alive()

    def health(self) -> dict[str, t.Any]:
        """Whether the sender runs, when it last completed a cycle, and its last error."""
        thread = self._thread
        progress = self.last_progress
        return {
            "sender_alive": bool(thread is not None and thread.is_alive()),
            "last_progress": progress,
            "seconds_since_progress": (
                None if progress is None else round(max(0.0, time.time() - progress), 3)
            ),
            "last_error": self.last_error,
            "pending": self._pending(),
        }

    def _pending(self) -> int:
        """Messages of this engine not sent yet: in the store, the overflow and the journal."""
        moving = 0 if self.journal is None else self.journal.messages
        return self.store.pending() + self.overflow.pending() + moving

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        next_check = 0.0
        if self._handed:  # started by a hand-over: the first batch too gathers what follows
            self._linger()
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + CHECK_INTERVAL
                    self._check_store()
                if not self.group_commit:  # the spooler's job in that mode
                    self._spool_overflow()
                self._probe()
                worked = self.send_due()
                self.last_progress = time.time()
                failures = 0
                # Idle from here: a hand-over wakes the sender — unless every endpoint is
                # paused, when it would only find nothing to send. Set before the store is
                # asked what is due, so a hand-over is either seen there or wakes the wait.
                self._idle = not worked and not self._all_paused()
                wait = 0.0 if worked else self._idle_wait()
            except Exception as exc:  # a bug or a broken spool must not kill delivery for good
                failures += 1
                wait = min(SUPERVISOR_CAP, 0.1 * 2.0 ** min(failures, 16))
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.stats.add("sender_errors")
                self.log.error(
                    self._event + "sender_error",
                    error=self.last_error,
                    failures=failures,
                    restart_in=round(wait, 2),
                )
            if wait > 0:
                woken = self._wake.wait(wait)
                self._wake.clear()
                self._idle = False
                if woken and not self._closed:
                    self._linger()

    def _check_store(self) -> None:
        """A spool file replaced or deleted under us is said, and what it held carried over."""
        problem = self.store.check()
        if problem is not None:
            self.log.error(
                self._event + "spool_replaced",
                path=getattr(self.store, "path", ""),
                problem=problem,
            )
        self.store.beat(self.last_progress or time.time(), self.last_error)
        self.adopt_journals()

    def adopt_journals(self) -> None:
        """Move the journals of this spool's processes that are gone into it.

        The sender does it when it starts and every few seconds; ``pmixpanel replay`` before
        it counts what waits. See :func:`~.store.journal.adopt`.

        :raises SpoolError: the spool could not take them now (they stay on file).
        """
        if self.journal is None:
            return
        moved, refused = adopt(t.cast(SqliteSpool, self.store))
        if moved or refused:
            self.log.warning(
                self._event + "journal_adopted",
                moved=moved,
                detail="the journal of a process that ended without moving it",
            )
            self._dropped_by_cap(refused)

    def _dropped_by_cap(self, refused: int) -> None:
        if refused:
            self.stats.add("dropped", refused)
            self.log.error(self._event + "queue_full_dropped", messages=refused)

    def _spool_overflow(self) -> int:
        """Move what waits in memory into the spool, in one transaction; return how many."""
        if not self.overflow.pending() or self.store is self.overflow:
            return 0
        clock = self.overflow.clock()
        batches = [
            batch
            for endpoint in self.transport.endpoints
            if (batch := self.overflow.claim(endpoint, clock, 10_000, 1 << 40)) is not None
        ]
        if not batches:
            return 0
        try:
            refused = self.store.put(
                [(batch.endpoint, body) for batch in batches for body in batch.bodies]
            )
        except Exception as exc:
            for batch in batches:  # still not: they wait in memory (and may be sent from there)
                self.overflow.retry(batch, clock)
            if not isinstance(exc, SpoolError):
                raise  # a bug: the supervisor logs it; the messages are back in memory
            self._store_retry_at = time.monotonic() + STORE_RETRY
            self._spool_trouble(exc, sum(len(batch.ids) for batch in batches))
            return 0
        moved = 0
        for batch in batches:
            self.overflow.ack(batch)
            moved += len(batch.ids)
        self._store_retry_at = 0.0  # the spool takes messages again: so may requests
        self.stats.add("spooled", moved - refused)
        self._dropped_by_cap(refused)
        return moved

    def _move_journal(self, journal: Journal) -> int:
        """Move what requests appended to the journal into the spool; return how many."""
        # Counted as spooled when appended: the journal is as durable as the spool.
        moved, refused = journal.move()
        self._dropped_by_cap(refused)
        return moved

    def _spool_run(self) -> None:
        """The spooler: commits hand-overs into the spool in groups (``mixpanel.spool_commit``).

        What requests appended to the journal (``request``), or left in memory (``group``).
        """
        failures = 0
        while not self._stop.is_set():
            # Idle from here: set before the journal or the overflow is looked at, so a
            # hand-over is either seen there or wakes the wait.
            self._spooler_idle = True
            wait = self._spooler_wait()
            if wait > 0:
                self._spool_wake.wait(wait)
                self._spool_wake.clear()
            self._spooler_idle = False
            # What other requests hand over meanwhile joins this commit; a spool that just
            # failed is given STORE_RETRY before the next attempt.
            pause = max(GROUP_WINDOW, self._store_retry_at - time.monotonic())
            if self._stop.wait(pause):
                return  # close() spools what is left
            try:
                journal = self.journal
                moved = self._spool_overflow() if journal is None else self._move_journal(journal)
                failures = 0
            except Exception as exc:  # a broken spool must not stop the spooler for good
                failures += 1
                self.stats.add("sender_errors")
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.log.error(self._event + "spooler_error", error=self.last_error)
                self._stop.wait(min(SUPERVISOR_CAP, 0.1 * 2.0 ** min(failures, 16)))
                continue
            if moved and self._idle:
                self._idle = False
                self._wake.set()

    def _spooler_wait(self) -> float:
        """How long the spooler may sleep before it has something to commit."""
        if self.journal is not None:
            return 0.0 if self.journal.messages else self.flush_interval
        due, now = self.overflow.next_due(), self.overflow.clock()
        if due is None:
            return self.flush_interval
        # (What the sender took from memory is not due.)
        return min(self.flush_interval, due - now)

    def _linger(self) -> None:
        """Woken by a hand-over: let a busy app's next ones join the batch (see ``LINGER``)."""
        if self._handed < self.transport.max_records:
            self._full.wait(LINGER)
        self._full.clear()

    def _paused(self, now: float) -> list[str]:
        return [e for e, (until, _) in self._pauses.items() if until > now]

    def _all_paused(self) -> bool:
        return len(self._paused(time.monotonic())) == len(self.transport.endpoints)

    def _idle_wait(self) -> float:
        """How long the sender may sleep.

        Until the next retry or pause is due (only endpoints that may send count), the next
        probe of an unreachable destination, or ``flush_interval``.
        """
        now = time.monotonic()
        paused = self._paused(now)
        active = [e for e in self.transport.endpoints if e not in paused]
        waits = [self.flush_interval]
        if active:
            for store in (self.store, self.overflow):
                due = store.next_due(active)
                if due is not None:
                    waits.append(max(0.0, due - store.clock()))
        waits.extend(until - now for until, _ in self._pauses.values() if until > now)
        if self._unreachable and paused and hasattr(self.transport, "reachable"):
            waits.append(self._next_probe - now)
        return max(0.01, min(waits))

    def _probe(self) -> None:
        """Check whether an unreachable destination takes connections again.

        Every ``PROBE_INTERVAL`` while it could not be reached: if it does, the pauses end and
        what was held back is due now.

        Only for a destination that took no connection at all (refused, no route, connect
        timeout: ``Outcome.no_connection``) and a transport that can check (``reachable()``):
        one that accepts connections but does not answer, and a 429 or 5xx answer, are waited
        out, as Mixpanel asks. The failure counts stay, so a post that fails again backs off
        from where it was.
        """
        if not self._unreachable or not self._pauses:
            return
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + PROBE_INTERVAL
        reachable = getattr(self.transport, "reachable", None)
        if reachable is None or not reachable():
            return
        self._unreachable = False
        self._pauses = {e: (0.0, failures) for e, (_, failures) in self._pauses.items()}
        self._release_held()

    def _release_held(self) -> None:
        """The destination is back: batches held back for it are due now."""
        held, self._held = self._held, []
        for store, endpoint, ids, until in held:
            store.hasten(endpoint, ids, until)

    def send_due(self) -> bool:
        """Send one due batch per endpoint that is not paused; return whether any was sent."""
        worked = False
        transport = self.transport
        self._handed = 0
        spool_trouble = time.monotonic() < self._store_retry_at
        stores = (self.store,) if self.group_commit and not spool_trouble else self._stores
        for endpoint in transport.endpoints:
            paused_until, _ = self._pauses.get(endpoint, (0.0, 0))
            if paused_until > time.monotonic():
                continue
            # The spool first; what waits in memory because the spool could not take it is
            # sent from there rather than held back for as long as the spool is in trouble
            # (with group commits, memory is where every hand-over waits for the spooler: it
            # is sent from there only while the spool is in trouble).
            for store in stores:
                batch = store.claim(
                    endpoint, store.clock(), transport.max_records, transport.max_bytes
                )
                if batch is not None:
                    worked = True
                    self._post_and_settle(store, batch)
                    break
        self._maybe_log_failures()
        return worked

    def _post_and_settle(self, store: Store, batch: Batch) -> None:
        """Post a batch; when it is full, keep ``IN_FLIGHT`` posts going while more wait.

        While one post waits for the destination, the next batch is claimed, encoded,
        compressed and sent, so a backlog drains at the pace of the destination, not of this
        process's CPU and the round trip in turn. The sender thread and ``IN_FLIGHT - 1``
        poster threads each claim a batch, post it and settle it, then claim the next (claims
        and settlements one at a time): no thread waits for another to hand it work. A post
        that fails stops the claims: what is in flight is settled (and waits as long as the
        failed one), nothing more is sent.
        """
        transport = self.transport
        if len(batch.ids) < transport.max_records:
            self._settle(store, batch, transport.post(batch.endpoint, batch.bodies))
            return
        if self._poster is None:
            self._poster = concurrent.futures.ThreadPoolExecutor(
                IN_FLIGHT - 1, thread_name_prefix=f"pyramid_mixpanel-{transport.name}-poster"
            )
        endpoint, limits = batch.endpoint, (transport.max_records, transport.max_bytes)
        turn = threading.Lock()  # claims and settlements: one thread at a time
        # The other endpoints, the overflow, the store check and the heartbeat get their turn
        # at least this often.
        ends = time.monotonic() + SPAN
        more = True

        def drain(claimed: Batch | None) -> None:
            nonlocal more
            while True:
                if claimed is None:
                    with turn:
                        if more and not self._stop.is_set() and time.monotonic() < ends:
                            claimed = store.claim(endpoint, store.clock(), *limits)
                        # A batch that is not full was the end of the backlog.
                        more = claimed is not None and len(claimed.ids) == limits[0]
                    if claimed is None:
                        return
                outcome = transport.post(endpoint, claimed.bodies)
                with turn:
                    self._settle(store, claimed, outcome)
                    if (
                        not outcome.sent
                        and self._pauses.get(endpoint, (0.0, 0))[0] > time.monotonic()
                    ):
                        more = False  # held back: nothing more goes until the pause ends
                claimed = None

        beside = [self._poster.submit(drain, None) for _ in range(IN_FLIGHT - 1)]
        try:
            drain(batch)
        finally:
            for future in beside:
                future.result()  # a post never raises for the network, nor waits forever

    def _settle(self, store: Store, batch: Batch, outcome: Outcome) -> None:
        if outcome.sent:
            store.ack(batch)
            self.stats.add("sent", len(batch.ids))
            self._pauses.pop(batch.endpoint, None)
            if not self._pauses:
                self._failing_since = None
            if self._held:
                self._release_held()
            return
        arrived, retry, dead = outcome.partition(len(batch.ids))
        if dead:
            whole = len(dead) == len(batch.ids)
            refused = batch if whole else _part(batch, dead)
            reasons = outcome.reasons if whole else _renumber(outcome.reasons, dead)
            dropped = store.bury(refused, outcome.error, reasons=reasons)
            self.stats.add("dead", len(dead) - dropped)
            self.log.error(
                self._event + "delivery_refused",
                endpoint=batch.endpoint,
                messages=len(dead),
                error=outcome.error,
                detail="kept as dead letters: pmixpanel dead <config.ini>",
            )
            if dropped:
                self.stats.add("dropped", dropped)
                self.log.error(
                    self._event + "dead_letters_full_dropped",
                    messages=dropped,
                    detail="the dead letters kept in memory reached mixpanel.queue_max_messages",
                )
        if arrived:
            store.ack(_part(batch, arrived))
            self.stats.add("sent", len(arrived))
        if retry:
            again = batch if len(retry) == len(batch.ids) else _part(batch, retry)
            self._retry(store, again, outcome)

    def _retry(self, store: Store, batch: Batch, outcome: Outcome) -> None:
        paused_until, failures = self._pauses.get(batch.endpoint, (0.0, 0))
        if paused_until > time.monotonic():
            # The batch posted beside it failed first: this one waits as long (no doubling).
            failures -= 1
            delay = paused_until - time.monotonic()
        else:
            delay = self.policy.delay(max(batch.attempts, failures) + 1, outcome.retry_after)
        not_before = store.clock() + delay
        store.retry(batch, not_before)
        self.stats.add("retried", len(batch.ids))
        paused = self.transport.endpoints if outcome.unreachable else (batch.endpoint,)
        until = time.monotonic() + delay
        # Only a destination that took no connection is probed (see _probe).
        self._unreachable = outcome.no_connection
        if outcome.unreachable:
            self._next_probe = time.monotonic() + PROBE_INTERVAL
            if len(self._held) < MAX_HELD:
                self._held.append((store, batch.endpoint, batch.ids, not_before))
        for endpoint in paused:
            self._pauses[endpoint] = (until, failures + 1)
        self._failing_since = self._failing_since or time.monotonic()
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
        now = time.monotonic()
        if now - self._last_failure_log < FAILURE_LOG_INTERVAL:
            return
        self._last_failure_log = now
        self.log.warning(
            self._event + "delivery_failing",
            failing_for=round(now - self._failing_since, 1),
            pending=self._pending(),
            **self.stats.snapshot(),
        )

    # -- shutdown ---------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> int:
        """Drain for at most ``timeout`` seconds (default ``shutdown_timeout``), then stop.

        Returns how many messages were left undelivered: they stay in the spool, or are lost
        (and logged as such) when they were in memory. Never blocks longer than ``timeout``
        plus one store operation.
        """
        if self._closed:
            return 0
        self._closed = True
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        thread = self._thread if self._pid == os.getpid() else None
        if thread is not None:
            while time.monotonic() < deadline and thread.is_alive() and self._drainable(deadline):
                self._wake.set()
                time.sleep(0.02)  # a drain's pace, not a test waiting for something
            self._stop.set()
            self._wake.set()
            self._full.set()
            self._spool_wake.set()
            thread.join(max(0.0, deadline - time.monotonic()))
            if self._spooler is not None:
                self._spooler.join(max(0.1, deadline - time.monotonic()))
        if thread is None:
            # This process never sent anything: what a shared spool holds is not its to report.
            self.store.close()
            self.transport.close()
            return 0
        if self.spooled and self.overflow.pending():
            # A last chance for what waited in memory: into the spool, not lost with us (the
            # overflow hands each message to one taker: a sender still posting is no harm).
            try:
                self._spool_overflow()
            except Exception as exc:  # the spool is still unusable: they are counted as lost
                self.log.error(self._event + "spool_unavailable", problem=str(exc)[:300])
        kept = 0
        if self.journal is not None:
            try:
                self._move_journal(self.journal)
            except Exception as exc:  # still on file: the next process moves it in
                self.log.error(self._event + "spool_unavailable", problem=str(exc)[:300])
            kept = self.journal.messages
            self.journal.close()
        spooled = (self.store.pending() if self.spooled else 0) + kept
        lost = self.overflow.pending() + (0 if self.spooled else self.store.pending())
        left = spooled + lost
        self.log.log(
            "warning" if left else "info",
            self._event + "shutdown",
            left=left,
            kept_in_spool=spooled,
            lost=lost,
            sent=self.stats["sent"],
            detail="" if not lost else "messages in memory are lost: set mixpanel.spool_path",
        )
        if not thread.is_alive():
            self.store.close()
            self.transport.close()
            if self._poster is not None:
                self._poster.shutdown(wait=False)
        return left

    def _drainable(self, deadline: float) -> bool:
        """Whether something is pending that could still be sent before ``deadline``."""
        remaining = deadline - time.monotonic()
        if self.journal is not None and self.journal.messages:
            return True  # the spooler moves them within GROUP_WINDOW
        for store in (self.store, self.overflow):
            if store.pending():
                due = store.next_due()
                if due is not None and due <= store.clock() + remaining:
                    return True
        return False

    def _after_fork_in_child(self) -> None:
        self._reset_process_state()
        self.stats = Counters(COUNTERS)
        # The parent still owns (and will send) what it had queued in memory.
        self.store.after_fork()
        self.overflow.after_fork()
        if self.journal is not None:
            self.journal.after_fork()


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
