"""Where accepted messages wait for delivery: in memory, or in a durable SQLite spool.

Both stores share one interface, so the engine does not care which it has:

* :meth:`Store.put` accepts a request's messages (bounded by count and bytes; what does not fit
  is refused, counted and logged by the engine — never silently);
* :meth:`Store.claim` hands out a due batch for one endpoint, within Mixpanel's limits;
* :meth:`Store.ack` / :meth:`Store.retry` / :meth:`Store.bury` settle a claimed batch.

The SQLite spool (WAL mode, ``synchronous=NORMAL``) commits before the request returns, so a
``kill -9`` at any moment loses nothing a request accepted. Several processes may share one
file: a claim is a lease (``lease_until``) taken in an ``IMMEDIATE`` transaction, so two senders
never post the same row at once, and rows of a sender that died become due again when its lease
expires. A resend after a crash is harmless: ``$insert_id`` was fixed when the message was built
and Mixpanel deduplicates on it.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import os
import sqlite3
import threading
import time
import typing as t
from dataclasses import dataclass

MAX_BATCH_RECORDS = 2000
MAX_BATCH_BYTES = 10 * 1024 * 1024
ENDPOINTS = ("events", "people", "groups", "imports", "customerio")


@dataclass(frozen=True)
class Batch:
    """A claimed batch: row ids (opaque to the engine) and JSON bodies, in order."""

    endpoint: str
    ids: tuple[int, ...]
    bodies: tuple[str, ...]
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    """A message Mixpanel refused, with its error text."""

    id: int
    endpoint: str
    body: str
    error: str
    failed_at: float
    attempts: int


class Store(t.Protocol):
    """The interface both stores implement."""

    def put(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Accept messages; return how many were refused for lack of room."""

    def claim(self, endpoint: str, now: float, max_records: int, max_bytes: int) -> Batch | None:
        """Lease the oldest due messages of ``endpoint``."""

    def ack(self, batch: Batch) -> None:
        """Forget a delivered batch."""

    def retry(self, batch: Batch, not_before: float) -> None:
        """Return a batch to the queue, due again at ``not_before``."""

    def bury(self, batch: Batch, error: str, positions: t.Iterable[int] | None = None) -> None:
        """Move a batch (or only the records at ``positions``) to the dead letters."""

    def next_due(self) -> float | None:
        """When the earliest waiting message becomes due (``None`` when empty)."""

    def pending(self) -> int:
        """How many messages wait for delivery."""

    def dead(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters."""

    def requeue_dead(self, ids: t.Iterable[int] | None = None) -> int:
        """Move dead letters (all, or ``ids``) back to the queue; return how many."""

    def after_fork(self) -> None:
        """Called in a forked child, before it hands anything over."""

    def close(self) -> None:
        """Release resources."""


class MemoryStore:
    """A bounded in-process queue: fast, but lost if the process dies (use a spool for that)."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # Per endpoint: messages never tried, in order, and a heap of retries by due time, so a
        # batch waiting out its backoff does not hold back the messages behind it.
        self._fresh: dict[str, collections.deque[tuple[int, str]]] = {
            endpoint: collections.deque() for endpoint in ENDPOINTS
        }
        self._retries: dict[str, list[tuple[float, int, str, int]]] = {
            endpoint: [] for endpoint in ENDPOINTS
        }
        self._dead: list[DeadLetter] = []
        self._count = 0
        self._bytes = 0

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
            fresh = self._fresh[endpoint]
            while len(ids) < max_records:
                if retries and retries[0][0] <= now:
                    _, row_id, body, tries = retries[0]
                elif fresh:
                    (row_id, body), tries = fresh[0], 0
                else:
                    break
                if ids and size + len(body) + 1 > max_bytes:
                    break
                if tries:
                    heapq.heappop(retries)
                else:
                    fresh.popleft()
                ids.append(row_id)
                bodies.append(body)
                size += len(body) + 1
                attempts = max(attempts, tries)
        if not ids:
            return None
        return Batch(endpoint, tuple(ids), tuple(bodies), attempts)

    def _forget(self, batch: Batch) -> None:
        self._count -= len(batch.ids)
        self._bytes -= sum(len(body) for body in batch.bodies)

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

    def bury(self, batch: Batch, error: str, positions: t.Iterable[int] | None = None) -> None:
        """Keep refused messages as dead letters; the rest of the batch was delivered."""
        chosen = set(range(len(batch.ids)) if positions is None else positions)
        now = time.time()
        with self._lock:
            for position, (row_id, body) in enumerate(zip(batch.ids, batch.bodies, strict=True)):
                if position in chosen:
                    self._dead.append(
                        DeadLetter(row_id, batch.endpoint, body, error, now, batch.attempts + 1)
                    )
            self._forget(batch)

    def next_due(self) -> float | None:
        """0 when fresh messages wait, else the earliest retry time, else ``None``."""
        with self._lock:
            if any(self._fresh.values()):
                return 0.0
            heads = [heap[0][0] for heap in self._retries.values() if heap]
        return min(heads) if heads else None

    def pending(self) -> int:
        """Messages queued, waiting for a retry or being sent."""
        with self._lock:
            return self._count

    def dead(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters."""
        with self._lock:
            return self._dead[:limit]

    def requeue_dead(self, ids: t.Iterable[int] | None = None) -> int:
        """Queue dead letters again (ignoring the cap: they were accepted once)."""
        wanted = None if ids is None else set(ids)
        with self._lock:
            move = [d for d in self._dead if wanted is None or d.id in wanted]
            self._dead = [d for d in self._dead if not (wanted is None or d.id in wanted)]
            for letter in move:
                self._fresh[letter.endpoint].append((letter.id, letter.body))
                self._count += 1
                self._bytes += len(letter.body)
        return len(move)

    def after_fork(self) -> None:
        """Drop what the parent had queued: the parent sends it, the child must not twice."""
        with self._lock:
            for queue in self._fresh.values():
                queue.clear()
            for heap in self._retries.values():
                heap.clear()
            self._count = self._bytes = 0

    def close(self) -> None:
        """Nothing to release."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    -- when the row may next be claimed: 0 when new, the retry time after a failure, the end of
    -- the lease while a sender holds it
    due REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (endpoint, due, id);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    body TEXT NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL,
    attempts INTEGER NOT NULL
);
-- Running totals, so the cap check on the request path is O(1) even with a million rows.
CREATE TABLE IF NOT EXISTS totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS messages_added AFTER INSERT ON messages BEGIN
    UPDATE totals SET messages = messages + 1, bytes = bytes + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS messages_removed AFTER DELETE ON messages BEGIN
    UPDATE totals SET messages = messages - 1, bytes = bytes - OLD.size;
END;
"""


class SqliteSpool:
    """A durable spool in one SQLite file, shareable by several processes.

    :param path: the spool file (created with its tables if missing).
    :param max_messages: / :param max_bytes: the cap; a request's messages that would exceed it
        are refused (the engine counts and logs them as dropped).
    :param lease: seconds a claimed batch is reserved for its sender; after that, a crashed
        sender's rows become due again.
    """

    def __init__(self, path: str, max_messages: int, max_bytes: int, lease: float = 120.0) -> None:
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.lease = lease
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._db = self._connect()
        with self._lock:
            # One transaction, so processes opening a new file together see a whole schema.
            self._db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only a power loss can cost the
        # last commits, which is the trade every WAL user makes for not fsyncing per request.
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _write(self) -> t.Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (IMMEDIATE) so concurrent writers queue."""
        if os.getpid() != self._pid:
            # A forked child must not share the parent's SQLite handle.
            self.after_fork()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Insert the messages in one transaction; refuse what would break the cap."""
        if not messages:
            return 0
        now = time.time()
        rows = []
        with self._write() as db:
            count, size = db.execute("SELECT messages, bytes FROM totals").fetchone()
            for endpoint, body in messages:
                if count + 1 > self.max_messages or size + len(body) > self.max_bytes:
                    continue
                rows.append((endpoint, body, len(body), now))
                count += 1
                size += len(body)
            db.executemany(
                "INSERT INTO messages (endpoint, body, size, created) VALUES (?, ?, ?, ?)", rows
            )
        return len(messages) - len(rows)

    def claim(self, endpoint: str, now: float, max_records: int, max_bytes: int) -> Batch | None:
        """Lease the oldest due rows of ``endpoint``."""
        chosen: list[tuple[int, str, int]] = []
        with self._write() as db:
            rows = db.execute(
                "SELECT id, body, attempts FROM messages WHERE endpoint = ? AND due <= ?"
                " ORDER BY due, id LIMIT ?",
                (endpoint, now, max_records),
            ).fetchall()
            size = 2
            for row in rows:
                if chosen and size + len(row[1]) + 1 > max_bytes:
                    break
                chosen.append(row)
                size += len(row[1]) + 1
            db.executemany(
                "UPDATE messages SET due = ? WHERE id = ?",
                [(now + self.lease, row[0]) for row in chosen],
            )
        if not chosen:
            return None
        return Batch(
            endpoint,
            tuple(row[0] for row in chosen),
            tuple(row[1] for row in chosen),
            max(row[2] for row in chosen),
        )

    def ack(self, batch: Batch) -> None:
        """Delete delivered rows."""
        with self._write() as db:
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in batch.ids])

    def retry(self, batch: Batch, not_before: float) -> None:
        """Release the lease and make the rows due again at ``not_before``."""
        with self._write() as db:
            db.executemany(
                "UPDATE messages SET due = ?, attempts = attempts + 1 WHERE id = ?",
                [(not_before, i) for i in batch.ids],
            )

    def bury(self, batch: Batch, error: str, positions: t.Iterable[int] | None = None) -> None:
        """Move refused rows to ``dead``; the rest of the batch was delivered."""
        chosen = set(range(len(batch.ids)) if positions is None else positions)
        now = time.time()
        pairs = list(zip(batch.ids, batch.bodies, strict=True))
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO dead (id, endpoint, body, error, failed_at, attempts)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (row_id, batch.endpoint, body, error, now, batch.attempts + 1)
                    for position, (row_id, body) in enumerate(pairs)
                    if position in chosen
                ],
            )
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in batch.ids])

    def next_due(self) -> float | None:
        """Earliest moment a waiting row may be claimed."""
        with self._write() as db:
            dues = [
                db.execute(
                    "SELECT MIN(due) FROM messages WHERE endpoint = ?", (endpoint,)
                ).fetchone()[0]
                for endpoint in ENDPOINTS
            ]
        known = [due for due in dues if due is not None]
        return min(known) if known else None

    def pending(self) -> int:
        """Rows waiting or leased."""
        with self._write() as db:
            return int(db.execute("SELECT messages FROM totals").fetchone()[0])

    def dead(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters."""
        with self._write() as db:
            rows = db.execute(
                "SELECT id, endpoint, body, error, failed_at, attempts FROM dead"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def requeue_dead(self, ids: t.Iterable[int] | None = None) -> int:
        """Move dead letters back to the queue (all, or those with ``ids``)."""
        now = time.time()
        with self._write() as db:
            rows = db.execute("SELECT id, endpoint, body FROM dead ORDER BY id").fetchall()
            if ids is not None:
                wanted = set(ids)
                rows = [row for row in rows if row[0] in wanted]
            db.executemany(
                "INSERT INTO messages (endpoint, body, size, created) VALUES (?, ?, ?, ?)",
                [(endpoint, body, len(body), now) for _, endpoint, body in rows],
            )
            db.executemany("DELETE FROM dead WHERE id = ?", [(row[0],) for row in rows])
        return len(rows)

    def after_fork(self) -> None:
        """Open a connection of the child's own (rows are shared through the file)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._db = self._connect()

    def close(self) -> None:
        """Close this process's connection."""
        with self._lock:
            self._db.close()
