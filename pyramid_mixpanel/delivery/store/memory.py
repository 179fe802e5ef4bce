"""The in-process queue: fast, bounded, lost if the process dies (a spool is not)."""

from __future__ import annotations

import collections
import heapq
import itertools
import os
import socket
import threading
import time
import typing as t

from . import Batch, Beat, DeadLetter

__all__ = ["MemoryStore"]

#: What was taken from a fresh queue is cut off its front once it is this many messages (and
#: half of the queue's lists).
COMPACT = 4096


class _Fresh:
    """The messages of one endpoint never tried, in order, from ``head`` on.

    Their row ids, bodies and when each was queued (on the store's clock), in three lists
    rather than a tuple per message: a batch is taken as three slices (no Python work per
    message), and a queue of a million messages holds no object of its own per message for the
    garbage collector to walk. What was taken stays in the lists until their front is cut off
    (once it is at least ``COMPACT`` messages and half of the lists, or when the queue is
    empty): they hold at most twice what waits, or what waits and ``COMPACT`` more.
    """

    __slots__ = ("bodies", "head", "ids", "longest", "times")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.bodies: list[str] = []
        self.times: list[float] = []
        self.head = 0
        #: No body queued since the queue was last empty is longer: when a whole batch of the
        #: longest fits, a claim needs no pass over the bodies to know the batch is in bounds.
        self.longest = 0

    def __len__(self) -> int:
        return len(self.ids) - self.head

    def append(self, row_id: int, body: str, queued: float) -> None:
        self.ids.append(row_id)
        self.bodies.append(body)
        self.times.append(queued)
        if len(body) > self.longest:
            self.longest = len(body)

    def take(
        self, room: int, size: int, max_bytes: int, first: bool
    ) -> tuple[list[int], list[str], list[float]]:
        """Up to ``room`` messages for a batch of ``size`` bytes, within ``max_bytes``.

        ``first``: the batch is empty so far (a message over the limit still goes, alone).
        Returns their row ids, bodies and queue times.
        """
        head = self.head
        end = head + min(room, len(self.ids) - head)
        bodies = self.bodies[head:end]
        if (
            size + len(bodies) * (self.longest + 1) > max_bytes
            and size + len(bodies) + sum(map(len, bodies)) > max_bytes
        ):
            count = 0  # one at a time, up to the byte limit
            for body in bodies:
                if (count or not first) and size + len(body) + 1 > max_bytes:
                    break
                size += len(body) + 1
                count += 1
            end = head + count
            del bodies[count:]
        taken = self.ids[head:end], bodies, self.times[head:end]
        if end == len(self.ids):
            self.clear()
        elif end >= COMPACT and 2 * end >= len(self.ids):
            # Amortised: cut off the front once it is at least half of the lists.
            del self.ids[:end], self.bodies[:end], self.times[:end]
            self.head = 0
        else:
            self.head = end
        return taken

    def clear(self) -> None:
        self.ids.clear()
        self.bodies.clear()
        self.times.clear()
        self.head = self.longest = 0


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
        self._fresh: collections.defaultdict[str, _Fresh] = collections.defaultdict(_Fresh)
        self._retries: collections.defaultdict[str, list[tuple[float, int, str, int]]] = (
            collections.defaultdict(list)
        )
        # When the messages that left ``_fresh`` were queued, for oldest_age(): the row ids and
        # queue times of the fresh messages of each claim not settled yet (noted as they are,
        # so a claim costs one append), and by row id those a settlement left pending (held
        # back for a retry) or that belong to a claim settled in parts.
        self._claims: list[tuple[list[int], list[float]]] = []
        self._queued: dict[int, float] = {}
        self._dead: collections.deque[DeadLetter] = collections.deque()
        self._dead_bytes = 0
        self._count = 0
        self._bytes = 0
        self._beat: Beat | None = None

    def put(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Accept what fits (whole messages, in order); return how many were refused."""
        refused = 0
        max_messages, max_bytes, fresh, ids = (
            self.max_messages,
            self.max_bytes,
            self._fresh,
            self._ids,
        )
        with self._lock:
            now = self.clock()  # under the lock: each queue stays in the order of its times
            count, size = self._count, self._bytes
            for endpoint, body in messages:
                length = len(body)
                if count + 1 > max_messages or size + length > max_bytes:
                    refused += 1
                    continue
                # _Fresh.append, inline: this is every request's hand-over.
                queue = fresh[endpoint]
                queue.ids.append(next(ids))
                queue.bodies.append(body)
                queue.times.append(now)
                if length > queue.longest:
                    queue.longest = length
                count += 1
                size += length
            self._count, self._bytes = count, size
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
                queue = self._fresh[endpoint]
                if queue:
                    row_ids, taken, times = queue.take(
                        max_records - len(ids), size, max_bytes, not ids
                    )
                    if row_ids:
                        self._claims.append((row_ids, times))
                        if ids:  # after retries
                            ids.extend(row_ids)
                            bodies.extend(taken)
                        else:
                            ids, bodies = row_ids, taken
        if not ids:
            return None
        return Batch(endpoint, tuple(ids), tuple(bodies), attempts)

    def _settle(self, batch: Batch, pending: bool) -> None:
        """Stop noting ``batch`` as claimed; remember when its rows were queued if ``pending``."""
        claims, first, count = self._claims, batch.ids[0], len(batch.ids)
        for index, (row_ids, times) in enumerate(claims):
            # The usual settlement: a whole claim of fresh messages, as it was taken.
            if row_ids[0] == first and len(row_ids) == count:
                del claims[index]
                if pending:
                    self._queued.update(zip(batch.ids, times, strict=True))
                return
        # A part of a claim, or retries: every claimed row gets its own entry, then those of
        # this batch go unless they stay pending.
        for row_ids, times in claims:
            self._queued.update(zip(row_ids, times, strict=True))
        claims.clear()
        if not pending:
            for row_id in batch.ids:
                self._queued.pop(row_id, None)

    def _forget(self, batch: Batch) -> None:
        self._settle(batch, pending=False)
        self._count -= len(batch.ids)
        self._bytes -= sum(map(len, batch.bodies))

    def ack(self, batch: Batch) -> None:
        """Forget a delivered batch."""
        with self._lock:
            self._forget(batch)

    def retry(self, batch: Batch, not_before: float) -> None:
        """Hold the batch back until ``not_before``."""
        with self._lock:
            self._settle(batch, pending=True)
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

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds the oldest pending message (queued, held back or being sent) has waited.

        ``None`` when none waits. ``now`` is on :attr:`clock` (default: now). Costs a pass over
        the messages held back for a retry, or being sent in a batch settled in parts.
        """
        with self._lock:
            # Each fresh queue and each claim is in the order of its times: the first is the
            # oldest.
            times = [queue.times[queue.head] for queue in self._fresh.values() if queue]
            times.extend(claimed[0] for _, claimed in self._claims)
            held = list(self._queued.values())  # min() outside: put() waits on this lock
        if held:
            times.append(min(held))
        if not times:
            return None
        return max(0.0, (self.clock() if now is None else now) - min(times))

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
            now = self.clock()
            move = [d for d in self._dead if wanted is None or d.id in wanted]
            self._dead = collections.deque(
                d for d in self._dead if not (wanted is None or d.id in wanted)
            )
            for letter in move:
                self._dead_bytes -= len(letter.body)
                self._fresh[letter.endpoint].append(letter.id, letter.body, now)
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
            self._claims.clear()
            self._queued.clear()
            self._count = self._bytes = 0
            self._beat = None

    def close(self) -> None:
        """Nothing to release."""
