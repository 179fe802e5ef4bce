"""Suite-wide fixtures."""

from __future__ import annotations

import os
import socket
import typing as t
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from pyramid_mixpanel import MixpanelTrack
from pyramid_mixpanel.delivery import engine as engine_module
from pyramid_mixpanel.runtime import Runtime

from .browser import browser  # noqa: F401  # headless Chromium, for the end-to-end tests
from .recorder import recording

# Property-based tests: CI runs a bounded, reproducible number of examples (derandomized, so a
# failure is the same failure on every rerun); `HYPOTHESIS_PROFILE=long make unit` searches far
# wider on a laptop. Examples are never timed (a loaded 2-CPU machine is not a benchmark).
settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


@pytest.fixture
def tracks() -> Iterator[list[MixpanelTrack]]:
    """Every ``request.mixpanel`` built during the test."""
    with recording() as built:
        yield built


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    """Runtimes the test built: closed at its end, so no sender outlives it."""
    built: list[Runtime] = []
    yield built
    for runtime in built:
        runtime.close(0.5)
