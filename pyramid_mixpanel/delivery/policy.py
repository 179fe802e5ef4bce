"""Retry policy: which answers are worth retrying, and how long to wait before the next try.

Mixpanel asks clients to back off from 2 s, doubling up to 60 s, with jitter
(reference/import-events; troubleshooting/errors/429-rate-limit-exceeded). Full jitter (a
uniform draw between 0 and the ceiling) spreads the retries of many processes so they do not hit
a recovering Mixpanel in lock-step; a ``Retry-After`` from the server is a floor.

:func:`is_retryable` is the one definition of a retryable HTTP status, shared by ingestion, the
query client, ``pmixpanel import`` and Customer.io.
"""

from __future__ import annotations

import random
import typing as t
from dataclasses import dataclass

__all__ = ["RETRYABLE_STATUS", "RetryPolicy", "is_retryable", "parse_retry_after"]

#: Request timeout, rate limit and server errors: the same request may well succeed later.
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


def is_retryable(status: int) -> bool:
    """Whether an answer with HTTP ``status`` is worth sending again later."""
    return status in RETRYABLE_STATUS


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before the ``attempt``-th retry of a batch."""

    base: float = 2.0
    cap: float = 60.0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the ``attempt``-th delay (1-based): 2, 4, 8, … capped at 60."""
        # The exponent is bounded: 2.0 ** 1024 would overflow after ~1000 failures in a row.
        return min(self.cap, self.base * 2.0 ** min(max(0, attempt - 1), 64))

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        draw: t.Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait: a full-jitter draw below :meth:`ceiling`, at least ``retry_after``."""
        jittered = self.ceiling(attempt) * draw()
        if retry_after is not None:
            return max(jittered, min(retry_after, self.cap * 5))
        return jittered


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds; HTTP dates and junk give ``None``."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
