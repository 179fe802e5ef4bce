"""Every ``request.mixpanel`` built while recording (the ``tracks`` fixture is in conftest)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pyramid_mixpanel import MixpanelTrack, lifecycle


@contextlib.contextmanager
def recording() -> Iterator[list[MixpanelTrack]]:
    """Every ``request.mixpanel`` built inside the block (usable inside @given)."""
    built: list[MixpanelTrack] = []
    lifecycle.LISTENERS.append(built.append)
    try:
        yield built
    finally:
        lifecycle.LISTENERS.remove(built.append)
