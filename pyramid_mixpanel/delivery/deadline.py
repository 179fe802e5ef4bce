"""A total deadline for one HTTP exchange.

``requests`` bounds each socket operation (connect, and each read), not an exchange: an answer
that trickles in a byte at a time never trips the read timeout and holds a sender for as long as
the server likes. :func:`deadline` bounds the whole exchange: the connections of a session made
by :func:`session` register the socket they are reading from, and a watchdog shuts that
socket down when the deadline passes, so the blocked read fails at once and the post counts as
"no answer" (retried later), never as a stuck sender. One watchdog thread serves every deadline
of the process (a timer thread per exchange would cost about 0.1 ms of every post).
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import os
import socket
import threading
import time
import typing as t

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["Deadline", "deadline", "session"]

# The sockets the current exchange reads from (per thread: a transport posts on one thread).
_READING: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "pyramid_mixpanel_deadline", default=None
)


class Deadline:
    """The sockets of one exchange, and whether its deadline passed."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.expired = False
        #: The exchange ended: a deadline passing now has nothing left to interrupt (its
        #: connection may already serve the next exchange).
        self.finished = False
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down too when the deadline passes."""
        with self._lock:
            if self.expired:
                _shut(sock)
            if sock is not None:
                self.sockets.append(sock)

    def expire(self) -> None:
        """The deadline passed: every watched socket stops blocking its reader."""
        with self._lock:
            if self.finished:
                return
            self.expired = True
            for sock in self.sockets:
                _shut(sock)

    def finish(self) -> None:
        """The exchange ended before its deadline."""
        with self._lock:
            self.finished = True
            self.sockets.clear()  # nothing to interrupt any more: let them go


def _shut(sock: socket.socket | None) -> None:
    # Already closed (or never opened): nothing left to interrupt.
    with contextlib.suppress(OSError, AttributeError):
        sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # None: AttributeError


class _Watched:
    """A connection that puts its socket under the current exchange's deadline."""

    sock: socket.socket | None

    def getresponse(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        current = _READING.get()
        if current is not None:
            current.watch(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]  # the urllib3 base


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def session() -> requests.Session:
    """A :class:`requests.Session` whose exchanges :func:`deadline` can bound."""
    made = requests.Session()
    adapter = _Adapter()
    made.mount("http://", adapter)
    made.mount("https://", adapter)
    return made


class _Watchdog:
    """One thread that expires the deadlines of a process when they pass."""

    def __init__(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        # (when, tie-breaker, deadline), on the monotonic clock. Most exchanges finish long
        # before their deadline: those leave when the heap is pruned, or when they are due.
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._prune_at = PRUNE_AT
        self._thread: threading.Thread | None = None

    def add(self, seconds: float, deadline: Deadline) -> None:
        """Expire ``deadline`` in ``seconds`` unless it finishes first."""
        when = time.monotonic() + seconds
        with self._wake:
            if self._thread is None:
                _install_fork_hook()
                self._thread = threading.Thread(
                    target=self._run, name="pyramid_mixpanel-deadlines", daemon=True
                )
                self._thread.start()
            heap = self._heap
            if len(heap) >= self._prune_at:
                # Amortised: the next pruning waits until the heap has doubled again.
                heap[:] = [entry for entry in heap if not entry[2].finished]
                heapq.heapify(heap)
                self._prune_at = max(PRUNE_AT, 2 * len(heap))
            heapq.heappush(heap, (when, next(self._order), deadline))
            if heap[0][2] is deadline:
                self._wake.notify()  # due before what the watchdog waits for

    def _run(self) -> None:
        heap = self._heap
        while True:
            with self._wake:
                wait = heap[0][0] - time.monotonic() if heap else None
                while wait is None or wait > 0:
                    self._wake.wait(wait)
                    wait = heap[0][0] - time.monotonic() if heap else None
                due = heapq.heappop(heap)[2]
            due.expire()  # outside the lock: exchanges may start meanwhile


# The heap of deadlines is pruned of finished ones once it holds this many (or twice as many as
# were left at the last pruning).
PRUNE_AT = 64
_WATCHDOG = _Watchdog()
_fork_hook_installed = False


def _install_fork_hook() -> None:
    """Once, with the first watchdog (not at import): a forked child needs its own."""
    global _fork_hook_installed
    if not _fork_hook_installed:
        _fork_hook_installed = True
        os.register_at_fork(after_in_child=_forked)


def _forked() -> None:
    """In a forked child: the parent's watchdog thread (and its deadlines) stayed there."""
    global _WATCHDOG
    _WATCHDOG = _Watchdog()


@contextlib.contextmanager
def deadline(seconds: float) -> t.Iterator[Deadline]:
    """Bound the exchanges of this block (on a :func:`session`) to ``seconds`` in all."""
    current = Deadline()
    token = _READING.set(current)
    _WATCHDOG.add(seconds, current)
    try:
        yield current
    finally:
        current.finish()
        _READING.reset(token)
