"""Retry policy: which answers are worth retrying, and how long to wait before the next try.

Mixpanel asks clients to back off "starting with a backoff of 2s and doubling backoff until
60s, with 1-5s of jitter" (reference/import-events, "Rate Limit"; the same for 502/503). So
the n-th retry waits ``min(60, 2 * 2**(n-1))`` seconds plus a uniform draw between 1 and 5
seconds — the jitter spreads the retries of many processes so they do not hit a recovering
Mixpanel in lock-step, and never lets a retry come back at once. A ``Retry-After`` from the
server (not documented by Mixpanel, honoured when present) is a floor.

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
    """How long to wait before the ``attempt``-th retry of a batch.

    :param base: the first backoff (2 s), doubled per attempt up to ``cap`` (60 s).
    :param jitter: the range of the random seconds added to every backoff (1 to 5 s).
    """

    base: float = 2.0
    cap: float = 60.0
    jitter: tuple[float, float] = (1.0, 5.0)

    def ceiling(self, attempt: int) -> float:
        """The backoff before jitter of the ``attempt``-th retry (1-based): 2, 4, 8, … 60."""
        # The exponent is bounded: 2.0 ** 1024 would overflow after ~1000 failures in a row.
        return min(self.cap, self.base * 2.0 ** min(max(0, attempt - 1), 64))

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        draw: t.Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait: :meth:`ceiling` plus jitter, at least ``retry_after``."""
        low, high = self.jitter
        wait = self.ceiling(attempt) + low + (high - low) * draw()
        if retry_after is not None:
            return max(wait, min(retry_after, self.cap * 5))
        return wait


def parse_retry_after(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds; HTTP dates and junk give ``None``."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
