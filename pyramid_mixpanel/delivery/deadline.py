"""A total deadline for one HTTP exchange.

``requests`` bounds each socket operation (connect, and each read), not an exchange: an answer
that trickles in a byte at a time never trips the read timeout and holds a sender for as long as
the server likes. :func:`deadline` bounds the whole exchange: the connections of a session made
by :func:`session` register the socket they are reading from, and a timer shuts that socket
down when the deadline passes, so the blocked read fails at once and the post counts as "no
answer" (retried later), never as a stuck sender.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
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
            self.expired = True
            for sock in self.sockets:
                _shut(sock)


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


@contextlib.contextmanager
def deadline(seconds: float) -> t.Iterator[Deadline]:
    """Bound the exchanges of this block (on a :func:`session`) to ``seconds`` in all."""
    current = Deadline()
    token = _READING.set(current)
    timer = threading.Timer(seconds, current.expire)
    timer.daemon = True
    timer.start()
    try:
        yield current
    finally:
        timer.cancel()
        _READING.reset(token)
