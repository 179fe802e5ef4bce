"""Suite-wide fixtures."""

from __future__ import annotations

import socket
import typing as t
from collections.abc import Iterator

import pytest

from pyramid_mixpanel.delivery import engine as engine_module

from .browser import browser  # noqa: F401  # headless Chromium, for the end-to-end tests


@pytest.fixture(autouse=True, scope="session")
def close_engines_before_exit() -> Iterator[None]:
    """Stop every background engine while pytest's log capture is still open.

    Engines otherwise close at interpreter exit (their atexit hook), after pytest has closed the
    streams its logging handlers write to.
    """
    yield
    for engine in list(engine_module._STARTED):
        engine.close(0.5)


LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", None}


@pytest.fixture(autouse=True, scope="session")
def loopback_only() -> Iterator[None]:
    """Refuse any name lookup beyond loopback: no test may ever reach the real Mixpanel."""
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if host not in LOOPBACK:
            raise socket.gaierror(f"tests only touch 127.0.0.1, not {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = guarded
    yield
    socket.getaddrinfo = real_getaddrinfo
