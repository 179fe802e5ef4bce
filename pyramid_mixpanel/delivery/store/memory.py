"""The in-process queue: fast, bounded, lost if the process dies (a spool is not)."""

from __future__ import annotations

import collections
import heapq
import itertools
import operator
import os
import socket
import threading
import time
import typing as t

from . import Batch, Beat, DeadLetter

__all__ = ["MemoryStore"]

_row_id, _body = operator.itemgetter(0), operator.itemgetter(1)


def _take_fresh(
    fresh: collections.deque[tuple[int, str]],
    room: int,
    size: int,
    max_bytes: int,
    ids: list[int],
    bodies: list[str],
) -> None:
    """Move up to ``room`` fresh messages into a batch of ``size`` bytes, within ``max_bytes``.

    The busy path of a sender: when the next messages fit as a whole (the usual case), they
    move at once, without Python work per message.
    """
    take = min(room, len(fresh))
    if size + take + sum(map(len, map(_body, itertools.islice(fresh, take)))) <= max_bytes:
        taken = [fresh.popleft() for _ in range(take)]
        ids.extend(map(_row_id, taken))
        bodies.extend(map(_body, taken))
        return
    while fresh and room:  # one at a time, up to the byte limit
        row_id, body = fresh[0]
        if ids and size + len(body) + 1 > max_bytes:
            break
        fresh.popleft()
        ids.append(row_id)
        bodies.append(body)
        size += len(body) + 1
        room -= 1


class MemoryStore:
    """A bounded in-process queue.

    :param max_messages: / :param max_bytes: the cap of waiting messages; what would exceed it is
        refused (the engine counts and logs it as dropped).
    :param max_dead: the most dead letters kept (by default ``max_messages``; their bodies stay
        within ``max_bytes`` too); more are dropped (counted and logged), so a Mixpanel refusing
        everything for hours cannot grow the process without bound.
    """

    def __init__(self, max_messages: int, max_bytes: int, max_dead: int | None = None) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_dead = max_messages if max_dead is None else max_dead
        # Monotonic: a wall clock stepped backwards would hold every retry back by the step.
        self.clock: t.Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # Per endpoint: messages never tried, in order, and a heap of retries by due time, so a
        # batch waiting out its backoff does not hold back the messages behind it.
        self._fresh: collections.defaultdict[str, collections.deque[tuple[int, str]]] = (
            collections.defaultdict(collections.deque)
        )
        self._retries: collections.defaultdict[str, list[tuple[float, int, str, int]]] = (
            collections.defaultdict(list)
        )
        self._dead: collections.deque[DeadLetter] = collections.deque()
        self._dead_bytes = 0
        self._count = 0
        self._bytes = 0
        self._beat: Beat | None = None

    def put(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Accept what fits (whole messages, in order); return how many were refused."""
        refused = 0
        with self._lock:
            for endpoint, body in messages:
                if self._count + 1 > self.max_messages or self._bytes + len(body) > self.max_bytes:
                    refused += 1
                    continue
                self._fresh[endpoint].append((next(self._ids), body))
                self._count += 1
                self._bytes += len(body)
        return refused

    def claim(self, endpoint: str, now: float, max_records: int, max_bytes: int) -> Batch | None:
        """Take due retries first, then fresh messages, within the batch limits."""
        ids: list[int] = []
        bodies: list[str] = []
        size = 2
        attempts = 0
        with self._lock:
            retries = self._retries[endpoint]
            while retries and retries[0][0] <= now and len(ids) < max_records:
                _, row_id, body, tries = retries[0]
                if ids and size + len(body) + 1 > max_bytes:
                    break
                heapq.heappop(retries)
                ids.append(row_id)
                bodies.append(body)
                size += len(body) + 1
                attempts = max(attempts, tries)
            else:
                _take_fresh(
                    self._fresh[endpoint], max_records - len(ids), size, max_bytes, ids, bodies
                )
        if not ids:
            return None
        return Batch(endpoint, tuple(ids), tuple(bodies), attempts)

    def _forget(self, batch: Batch) -> None:
        self._count -= len(batch.ids)
        self._bytes -= sum(map(len, batch.bodies))

    def ack(self, batch: Batch) -> None:
        """Forget a delivered batch."""
        with self._lock:
            self._forget(batch)

    def retry(self, batch: Batch, not_before: float) -> None:
        """Hold the batch back until ``not_before``."""
        with self._lock:
            for row_id, body in zip(batch.ids, batch.bodies, strict=True):
                heapq.heappush(
                    self._retries[batch.endpoint], (not_before, row_id, body, batch.attempts + 1)
                )

    def bury(
        self,
        batch: Batch,
        error: str,
        positions: t.Iterable[int] | None = None,
        reasons: t.Mapping[int, str] | None = None,
    ) -> int:
        """Keep refused messages as dead letters (up to ``max_dead``); the rest arrived."""
        chosen = set(range(len(batch.ids)) if positions is None else positions)
        why = reasons or {}
        now = time.time()
        dropped = 0
        with self._lock:
            for position, (row_id, body) in enumerate(zip(batch.ids, batch.bodies, strict=True)):
                if position not in chosen:
                    continue
                if (
                    len(self._dead) >= self.max_dead
                    or self._dead_bytes + len(body) > self.max_bytes
                ):
                    dropped += 1
                    continue
                letter = DeadLetter(
                    row_id, batch.endpoint, body, why.get(position, error), now, batch.attempts + 1
                )
                self._dead.append(letter)
                self._dead_bytes += len(body)
            self._forget(batch)
        return dropped

    def next_due(self, endpoints: t.Iterable[str] | None = None) -> float | None:
        """0 when fresh messages wait, else the earliest retry time, else ``None``."""
        with self._lock:
            chosen = list({*self._fresh, *self._retries} if endpoints is None else endpoints)
            if any(self._fresh.get(endpoint) for endpoint in chosen):
                return 0.0
            heads = [heap[0][0] for e in chosen if (heap := self._retries.get(e))]
        return min(heads) if heads else None

    def hasten(self, endpoint: str, ids: t.Sequence[int], held_until: float) -> None:
        """Held-back rows ``ids`` become due now."""
        wanted = set(ids)
        now = self.clock()
        with self._lock:
            heap = self._retries.get(endpoint, [])
            for index, (due, row_id, body, tries) in enumerate(heap):
                if row_id in wanted and due == held_until:
                    heap[index] = (now, row_id, body, tries)
            heapq.heapify(heap)

    def pending(self) -> int:
        """Messages queued, waiting for a retry or being sent."""
        with self._lock:
            return self._count

    def dead(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters."""
        with self._lock:
            return list(itertools.islice(self._dead, limit))

    def dead_count(self) -> int:
        """How many dead letters are kept."""
        with self._lock:
            return len(self._dead)

    def requeue_dead(self, ids: t.Iterable[int] | None = None) -> int:
        """Queue dead letters again (ignoring the cap: they were accepted once)."""
        wanted = None if ids is None else set(ids)
        with self._lock:
            move = [d for d in self._dead if wanted is None or d.id in wanted]
            self._dead = collections.deque(
                d for d in self._dead if not (wanted is None or d.id in wanted)
            )
            for letter in move:
                self._dead_bytes -= len(letter.body)
                self._fresh[letter.endpoint].append((letter.id, letter.body))
                self._count += 1
                self._bytes += len(letter.body)
        return len(move)

    def beat(self, progress: float, error: str) -> None:
        """Remember this process's sender's last progress."""
        self._beat = Beat(socket.gethostname(), os.getpid(), progress, error, time.time())

    def beats(self) -> list[Beat]:
        """The sender of this process, once it has started."""
        return [self._beat] if self._beat is not None else []

    def check(self) -> str | None:
        """Nothing can change under a queue in memory."""
        return None

    def after_fork(self) -> None:
        """Drop what the parent had queued: the parent sends it, the child must not twice."""
        with self._lock:
            for queue in self._fresh.values():
                queue.clear()
            for heap in self._retries.values():
                heap.clear()
            self._count = self._bytes = 0
            self._beat = None

    def close(self) -> None:
        """Nothing to release."""
