"""Per-client token buckets: a steady ``rate`` of items per second with bursts up to ``burst``."""

from __future__ import annotations

import collections
import math
import threading
import time
import typing as t

__all__ = ["TokenBuckets", "retry_after"]


class TokenBuckets:
    """One token bucket per client key, in this process's memory.

    Each bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; an item
    costs one token. At most ``max_clients`` buckets are kept: the least recently seen client
    is forgotten first (and starts again with a full bucket), so memory stays bounded whatever
    an attacker sends. Limits are per process: with N workers, a client gets up to N times them.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = 10_000,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, cost: int = 1) -> float:
        """Take ``cost`` tokens for ``key``: 0 when allowed, else seconds until they would be.

        A refused call takes nothing, so a client that keeps hammering is not starved forever
        once it slows down.
        """
        now = self.clock()
        with self._lock:
            tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            wait = 0.0
            if tokens >= cost:
                tokens -= cost
            else:
                wait = (cost - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
