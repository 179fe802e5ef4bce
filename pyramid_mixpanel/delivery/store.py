"""Where accepted messages wait for delivery: in memory, or in a durable SQLite spool.

Both stores share one interface, so the engine does not care which it has, and neither knows
what its endpoints mean: one store holds one lane (Mixpanel, or Customer.io).

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

__all__ = ["Batch", "DeadLetter", "MemoryStore", "SqliteSpool", "Store"]


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

    def bury(
        self,
        batch: Batch,
        error: str,
        positions: t.Iterable[int] | None = None,
        reasons: t.Mapping[int, str] | None = None,
    ) -> None:
        """Move a batch (or only the records at ``positions``) to the dead letters.

        Each keeps its own reason from ``reasons`` (by position) when there is one, else
        ``error``.
        """

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
        self._fresh: collections.defaultdict[str, collections.deque[tuple[int, str]]] = (
            collections.defaultdict(collections.deque)
        )
        self._retries: collections.defaultdict[str, list[tuple[float, int, str, int]]] = (
            collections.defaultdict(list)
        )
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

    def bury(
        self,
        batch: Batch,
        error: str,
        positions: t.Iterable[int] | None = None,
        reasons: t.Mapping[int, str] | None = None,
    ) -> None:
        """Keep refused messages as dead letters; the rest of the batch was delivered."""
        chosen = set(range(len(batch.ids)) if positions is None else positions)
        why = reasons or {}
        now = time.time()
        with self._lock:
            for position, (row_id, body) in enumerate(zip(batch.ids, batch.bodies, strict=True)):
                if position in chosen:
                    self._dead.append(
                        DeadLetter(
                            row_id,
                            batch.endpoint,
                            body,
                            why.get(position, error),
                            now,
                            batch.attempts + 1,
                        )
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
CREATE TABLE IF NOT EXISTS {p}messages (
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
CREATE INDEX IF NOT EXISTS {p}messages_due ON {p}messages (endpoint, due, id);
CREATE TABLE IF NOT EXISTS {p}dead (
    id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    body TEXT NOT NULL,
    error TEXT NOT NULL,
    failed_at REAL NOT NULL,
    attempts INTEGER NOT NULL
);
-- Running totals, so the cap check on the request path is O(1) even with a million rows.
CREATE TABLE IF NOT EXISTS {p}totals (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO {p}totals VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS {p}messages_added AFTER INSERT ON {p}messages BEGIN
    UPDATE {p}totals SET messages = messages + 1, bytes = bytes + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS {p}messages_removed AFTER DELETE ON {p}messages BEGIN
    UPDATE {p}totals SET messages = messages - 1, bytes = bytes - OLD.size;
END;
"""


#: The spool's statements; ``{p}`` is the lane's table prefix (a checked identifier).
STATEMENTS = {
    "totals": "SELECT messages, bytes FROM {p}totals",
    "insert": "INSERT INTO {p}messages (endpoint, body, size, created) VALUES (?, ?, ?, ?)",
    "due": (
        "SELECT id, body, attempts FROM {p}messages"
        " WHERE endpoint = ? AND due <= ? ORDER BY due, id LIMIT ?"
    ),
    "lease": "UPDATE {p}messages SET due = ? WHERE id = ?",
    "delete": "DELETE FROM {p}messages WHERE id = ?",
    "retry": "UPDATE {p}messages SET due = ?, attempts = attempts + 1 WHERE id = ?",
    "bury": (
        "INSERT OR REPLACE INTO {p}dead (id, endpoint, body, error, failed_at, attempts)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "next_due": "SELECT MIN(due) FROM {p}messages WHERE endpoint = ?",
    "pending": "SELECT messages FROM {p}totals",
    "dead": (
        "SELECT id, endpoint, body, error, failed_at, attempts FROM {p}dead ORDER BY id LIMIT ?"
    ),
    "all_dead": "SELECT id, endpoint, body FROM {p}dead ORDER BY id",
    "undead": "DELETE FROM {p}dead WHERE id = ?",
}


class SqliteSpool:
    """A durable spool in one SQLite file, shareable by several processes.

    :param path: the spool file (created with its tables if missing).
    :param max_messages: / :param max_bytes: the cap; a request's messages that would exceed it
        are refused (the engine counts and logs them as dropped).
    :param lease: seconds a claimed batch is reserved for its sender; after that, a crashed
        sender's rows become due again.
    :param endpoints: the lane's endpoints.
    :param lane: the lane whose messages this spool holds. Each lane has its own tables in the
        file (Mixpanel's keep the unprefixed names, ``customerio`` gets ``customerio_messages``
        …), so lanes never see each other's rows, caps or dead letters.
    """

    def __init__(
        self,
        path: str,
        max_messages: int,
        max_bytes: int,
        lease: float = 120.0,
        *,
        endpoints: t.Sequence[str] = ("events", "people", "groups", "imports"),
        lane: str = "mixpanel",
    ) -> None:
        if not lane.isidentifier():
            raise ValueError(f"a lane name must be an identifier, got {lane!r}")
        self.path = path
        self.endpoints = tuple(endpoints)
        self.lane = lane
        # Table names are code, never user input: the lane name was checked just above.
        self._p = "" if lane == "mixpanel" else f"{lane}_"
        self._sql = {name: sql.format(p=self._p) for name, sql in STATEMENTS.items()}
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.lease = lease
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._db = self._connect()
        with self._lock:
            # One transaction, so processes opening a new file together see a whole schema.
            self._db.executescript(f"BEGIN IMMEDIATE; {SCHEMA.format(p=self._p)} COMMIT;")

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
            count, size = db.execute(self._sql["totals"]).fetchone()
            for endpoint, body in messages:
                if count + 1 > self.max_messages or size + len(body) > self.max_bytes:
                    continue
                rows.append((endpoint, body, len(body), now))
                count += 1
                size += len(body)
            db.executemany(
                self._sql["insert"],
                rows,
            )
        return len(messages) - len(rows)

    def claim(self, endpoint: str, now: float, max_records: int, max_bytes: int) -> Batch | None:
        """Lease the oldest due rows of ``endpoint``."""
        chosen: list[tuple[int, str, int]] = []
        with self._write() as db:
            rows = db.execute(
                self._sql["due"],
                (endpoint, now, max_records),
            ).fetchall()
            size = 2
            for row in rows:
                if chosen and size + len(row[1]) + 1 > max_bytes:
                    break
                chosen.append(row)
                size += len(row[1]) + 1
            db.executemany(
                self._sql["lease"],
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
            db.executemany(self._sql["delete"], [(i,) for i in batch.ids])

    def retry(self, batch: Batch, not_before: float) -> None:
        """Release the lease and make the rows due again at ``not_before``."""
        with self._write() as db:
            db.executemany(
                self._sql["retry"],
                [(not_before, i) for i in batch.ids],
            )

    def bury(
        self,
        batch: Batch,
        error: str,
        positions: t.Iterable[int] | None = None,
        reasons: t.Mapping[int, str] | None = None,
    ) -> None:
        """Move refused rows to ``dead``; the rest of the batch was delivered."""
        chosen = set(range(len(batch.ids)) if positions is None else positions)
        why = reasons or {}
        now = time.time()
        pairs = list(zip(batch.ids, batch.bodies, strict=True))
        with self._write() as db:
            db.executemany(
                self._sql["bury"],
                [
                    (
                        row_id,
                        batch.endpoint,
                        body,
                        why.get(position, error),
                        now,
                        batch.attempts + 1,
                    )
                    for position, (row_id, body) in enumerate(pairs)
                    if position in chosen
                ],
            )
            db.executemany(self._sql["delete"], [(i,) for i in batch.ids])

    def next_due(self) -> float | None:
        """Earliest moment a waiting row may be claimed."""
        with self._write() as db:
            dues = [
                db.execute(self._sql["next_due"], (endpoint,)).fetchone()[0]
                for endpoint in self.endpoints
            ]
        known = [due for due in dues if due is not None]
        return min(known) if known else None

    def pending(self) -> int:
        """Rows waiting or leased."""
        with self._write() as db:
            return int(db.execute(self._sql["pending"]).fetchone()[0])

    def dead(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters."""
        with self._write() as db:
            rows = db.execute(
                self._sql["dead"],
                (limit,),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def requeue_dead(self, ids: t.Iterable[int] | None = None) -> int:
        """Move dead letters back to the queue (all, or those with ``ids``)."""
        now = time.time()
        with self._write() as db:
            rows = db.execute(self._sql["all_dead"]).fetchall()
            if ids is not None:
                wanted = set(ids)
                rows = [row for row in rows if row[0] in wanted]
            db.executemany(
                self._sql["insert"],
                [(endpoint, body, len(body), now) for _, endpoint, body in rows],
            )
            db.executemany(self._sql["undead"], [(row[0],) for row in rows])
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
