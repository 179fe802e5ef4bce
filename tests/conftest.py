"""Suite-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pyramid_mixpanel.delivery import engine as engine_module


@pytest.fixture(autouse=True, scope="session")
def close_engines_before_exit() -> Iterator[None]:
    """Stop every background engine while pytest's log capture is still open.

    Engines otherwise close at interpreter exit (their atexit hook), after pytest has closed the
    streams its logging handlers write to.
    """
    yield
    for engine in list(engine_module._ENGINES):
        engine.close(0.5)
