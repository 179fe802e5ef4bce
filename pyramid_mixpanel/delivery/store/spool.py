"""The durable spool: one SQLite file, shareable by several processes.

WAL mode with ``synchronous=NORMAL``. A request's messages reach it through the process's
journal (:mod:`.journal`, ``mixpanel.spool_commit = request``: on file before the request's
release returns, moved in every few milliseconds, so a ``kill -9`` at any moment loses nothing
a request accepted) or from memory in groups (``group``). Several processes may share one
file: a claim is a lease taken in an ``IMMEDIATE`` transaction, so two senders never post the
same row at once, and rows of a sender that died become due again when its lease expires. A
resend after a crash is harmless: ``$insert_id`` was fixed when the message was built and
Mixpanel deduplicates on it.

The request path never waits long on another process: :meth:`SqliteSpool.put` has its own
connection with a lock wait of ``put_wait`` seconds (50 ms by default) and raises
:class:`~pyramid_mixpanel.delivery.store.SpoolError` when the file stays locked, is full or
cannot be written; the engine then keeps the messages in memory and spools them later. Reads
(``pending``, ``dead``, status) take no write lock. A file that is deleted or replaced while the
app runs is noticed (:meth:`SqliteSpool.check`) and what it held is moved into the new file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
import typing as t

from . import Batch, Beat, DeadLetter, SpoolError

__all__ = ["SCHEMA", "STATEMENTS", "SqliteSpool"]

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
-- The journal files (store/journal.py) whose messages were moved in: never moved again.
CREATE TABLE IF NOT EXISTS {p}journals (name TEXT PRIMARY KEY);
-- Each sender's last sign of life, for pmixpanel status.
CREATE TABLE IF NOT EXISTS {p}senders (
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    progress REAL NOT NULL,
    error TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (host, pid)
);
"""

#: The spool's statements; ``{p}`` is the lane's table prefix (a checked identifier).
STATEMENTS = {
    "totals": "SELECT messages, bytes FROM {p}totals",
    "insert": "INSERT INTO {p}messages (endpoint, body, size, created) VALUES (?, ?, ?, ?)",
    "due": (
        "SELECT id, body, attempts FROM {p}messages"
        " WHERE endpoint = ? AND (due <= ? OR due > ?) ORDER BY due, id LIMIT ?"
    ),
    "lease": "UPDATE {p}messages SET due = ? WHERE id = ?",
    "delete": "DELETE FROM {p}messages WHERE id = ?",
    "retry": "UPDATE {p}messages SET due = ?, attempts = attempts + 1 WHERE id = ?",
    "hasten": "UPDATE {p}messages SET due = ? WHERE id = ? AND due = ?",
    "bury": (
        "INSERT OR REPLACE INTO {p}dead (id, endpoint, body, error, failed_at, attempts)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "next_due": "SELECT MIN(due), MAX(due) FROM {p}messages WHERE endpoint = ?",
    "pending": "SELECT messages FROM {p}totals",
    # A pass over the table (no index on created: it would cost every put): 10-35 ms per 100,000
    # rows, for monitoring only.
    "oldest": "SELECT MIN(created) FROM {p}messages",
    "dead": (
        "SELECT id, endpoint, body, error, failed_at, attempts FROM {p}dead ORDER BY id LIMIT ?"
    ),
    "dead_count": "SELECT COUNT(*) FROM {p}dead",
    "all_dead": "SELECT id, endpoint, body FROM {p}dead ORDER BY id",
    "undead": "DELETE FROM {p}dead WHERE id = ?",
    "beat": (
        "INSERT OR REPLACE INTO {p}senders (host, pid, progress, error, updated)"
        " VALUES (?, ?, ?, ?, ?)"
    ),
    "beats": (
        "SELECT host, pid, progress, error, updated FROM {p}senders ORDER BY updated DESC LIMIT 20"
    ),
    "everything": "SELECT endpoint, body, created, attempts FROM {p}messages ORDER BY id",
    "rescue": (
        "INSERT INTO {p}messages (endpoint, body, size, created, attempts) VALUES (?, ?, ?, ?, ?)"
    ),
    "journal_seen": "SELECT 1 FROM {p}journals WHERE name = ?",
    "journal_moved": "INSERT INTO {p}journals (name) VALUES (?)",
    "journal_forget": "DELETE FROM {p}journals WHERE name = ?",
    "everything_dead": "SELECT id, endpoint, body, error, failed_at, attempts FROM {p}dead",
}
#: SQLite's words for a file that is not (or no longer) a database.
CORRUPT = ("not a database", "malformed", "corrupt")


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
    :param put_wait: the longest a request waits for another process's lock on the file.
    :param repair: when the file is corrupted, move it aside (``<path>.broken-<time>``) and
        start an empty one instead of refusing to start; :attr:`repaired` says where it went.
    :raises SpoolError: the file cannot be used (its message names the path and the reason).
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
        put_wait: float = 0.05,
        repair: bool = False,
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
        self.put_wait = put_wait
        # Due times are shared with other processes: the wall clock. A row due further ahead
        # than any backoff or lease can be is due now: the clock was stepped backwards.
        self.clock: t.Callable[[], float] = time.time
        self.horizon = max(lease, 310.0)
        #: Where a corrupted file was moved by ``repair``, else ``None``.
        self.repaired: str | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._put_lock = threading.Lock()
        try:
            self._open()
        except SpoolError as error:
            if not (repair and any(word in error.problem for word in CORRUPT)):
                raise
            self.repaired = f"{path}.broken-{int(time.time())}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(path + suffix, self.repaired + suffix)
            self._open()

    # -- connections ------------------------------------------------------------------------

    def _connect(self, timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only a power loss can cost the
        # last commits, which is the trade every WAL user makes for not fsyncing per request.
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _open(self) -> None:
        """Open both connections, create the tables, check the file; or raise SpoolError."""
        opened: list[sqlite3.Connection] = []
        try:
            opened.append(self._connect(5.0))
            opened.append(self._connect(self.put_wait))
            # A checkpoint (copying the WAL into the file, with an fsync) runs in the connection
            # whose commit fills the WAL: never a request's. The sender's connection keeps
            # SQLite's automatic checkpoints, and the sender commits at least every two seconds.
            opened[1].execute("PRAGMA wal_autocheckpoint=0")
            db = opened[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if not {f"{self._p}{name}" for name in ("messages", "senders", "journals")} <= tables:
                # One transaction, so processes opening a new file together see a whole schema.
                # Only then: an app must boot while another process holds the write lock.
                db.executescript(f"BEGIN IMMEDIATE; {SCHEMA.format(p=self._p)} COMMIT;")
            (verdict,) = db.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
            self._identity = _identity(self.path)
        except (sqlite3.Error, OSError) as exc:
            for db in opened:
                db.close()
            raise SpoolError(self.path, f"cannot be used: {exc}") from None
        self._db, self._put_db = opened

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

    @contextlib.contextmanager
    def _read(self) -> t.Iterator[sqlite3.Connection]:
        """Reads in autocommit: WAL readers never block writers, nor wait for them."""
        if os.getpid() != self._pid:
            self.after_fork()
        with self._lock:
            yield self._db

    # -- the request side -------------------------------------------------------------------

    def put(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Insert the messages in one transaction; refuse what would break the cap.

        :raises SpoolError: the file stayed locked for ``put_wait``, is full, or cannot be
            written: the caller keeps the messages elsewhere.
        """
        if not messages:
            return 0
        if os.getpid() != self._pid:
            self.after_fork()
        with self._put_lock:
            db = self._put_db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    inserted, _ = self._insert_within_cap(db, messages)
                    db.execute("COMMIT")
                except BaseException:
                    # Nothing to roll back when SQLite already ended the transaction itself.
                    with contextlib.suppress(sqlite3.OperationalError):
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SpoolError(self.path, describe(exc)) from None
        return len(messages) - inserted

    def _insert_within_cap(
        self, db: sqlite3.Connection, messages: t.Sequence[tuple[str, str]]
    ) -> tuple[int, tuple[int, int]]:
        """Insert what fits under the cap, in a write transaction already open.

        Returns how many were inserted and the spool's size (messages, bytes) after.
        """
        now = time.time()
        count, size = db.execute(self._sql["totals"]).fetchone()
        rows = []
        for endpoint, body in messages:
            if count + 1 > self.max_messages or size + len(body) > self.max_bytes:
                continue
            rows.append((endpoint, body, len(body), now))
            count += 1
            size += len(body)
        db.executemany(self._sql["insert"], rows)
        return len(rows), (count, size)

    def put_journal(
        self, name: str, messages: t.Sequence[tuple[str, str]], forget: t.Iterable[str]
    ) -> tuple[int, int, tuple[int, int]]:
        """Move a journal file's messages in, noting ``name`` as moved, in one transaction.

        A file already noted is skipped (another process moved it first). ``forget``: files
        moved earlier and deleted since, whose notes can go. Returns how many messages were
        moved in and how many the cap refused, and the spool's size (messages, bytes) after.

        :raises SpoolError: the spool could not take them (locked, full disk): nothing moved.
        """
        try:
            with self._write() as db:
                db.executemany(self._sql["journal_forget"], [(done,) for done in forget])
                if db.execute(self._sql["journal_seen"], (name,)).fetchone():
                    return 0, 0, db.execute(self._sql["totals"]).fetchone()
                inserted, totals = self._insert_within_cap(db, messages)
                db.execute(self._sql["journal_moved"], (name,))
        except sqlite3.Error as exc:
            raise SpoolError(self.path, describe(exc)) from None
        return inserted, len(messages) - inserted, totals

    # -- the sender side --------------------------------------------------------------------

    def claim(self, endpoint: str, now: float, max_records: int, max_bytes: int) -> Batch | None:
        """Lease the oldest due rows of ``endpoint``."""
        chosen: list[tuple[int, str, int]] = []
        with self._write() as db:
            rows = db.execute(
                self._sql["due"], (endpoint, now, now + self.horizon, max_records)
            ).fetchall()
            size = 2
            for row in rows:
                if chosen and size + len(row[1]) + 1 > max_bytes:
                    break
                chosen.append(row)
                size += len(row[1]) + 1
            db.executemany(self._sql["lease"], [(now + self.lease, row[0]) for row in chosen])
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
            db.executemany(self._sql["retry"], [(not_before, i) for i in batch.ids])

    def hasten(self, endpoint: str, ids: t.Sequence[int], held_until: float) -> None:
        """Held-back rows ``ids`` become due now.

        Unless another sender leased them meanwhile: their ``due`` is then that lease, not
        ``held_until``.
        """
        now = self.clock()
        with self._write() as db:
            db.executemany(self._sql["hasten"], [(now, i, held_until) for i in ids])

    def bury(
        self,
        batch: Batch,
        error: str,
        positions: t.Iterable[int] | None = None,
        reasons: t.Mapping[int, str] | None = None,
    ) -> int:
        """Move refused rows to ``dead``; the rest of the batch was delivered. Drops none."""
        chosen = set(range(len(batch.ids)) if positions is None else positions)
        why = reasons or {}
        now = time.time()
        pairs = list(zip(batch.ids, batch.bodies, strict=True))
        letters = [
            (row_id, batch.endpoint, body, why.get(position, error), now, batch.attempts + 1)
            for position, (row_id, body) in enumerate(pairs)
            if position in chosen
        ]
        with self._write() as db:
            db.executemany(self._sql["bury"], letters)
            db.executemany(self._sql["delete"], [(i,) for i in batch.ids])
        return 0

    def next_due(self, endpoints: t.Iterable[str] | None = None) -> float | None:
        """Earliest moment a waiting row may be claimed (now for rows a clock step left ahead)."""
        now = self.clock()
        with self._read() as db:
            ranges = [
                db.execute(self._sql["next_due"], (endpoint,)).fetchone()
                for endpoint in (self.endpoints if endpoints is None else endpoints)
            ]
        dues = []
        for earliest, latest in ranges:
            if earliest is None:
                continue
            dues.append(now if latest > now + self.horizon else earliest)
        return min(dues) if dues else None

    # -- reading ----------------------------------------------------------------------------

    def pending(self) -> int:
        """Rows waiting or leased."""
        with self._read() as db:
            return int(db.execute(self._sql["pending"]).fetchone()[0])

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest row (waiting or leased, of any process) was queued.

        ``None`` when the lane's table is empty. ``now`` is wall-clock time (default: now).
        Reads every row of the lane (10-35 ms per 100,000): for monitoring, not the request path.
        """
        with self._read() as db:
            (created,) = db.execute(self._sql["oldest"]).fetchone()
        if created is None:
            return None
        return max(0.0, (self.clock() if now is None else now) - float(created))

    def dead(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters."""
        with self._read() as db:
            rows = db.execute(self._sql["dead"], (limit,)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def dead_count(self) -> int:
        """How many dead letters there are."""
        with self._read() as db:
            return int(db.execute(self._sql["dead_count"]).fetchone()[0])

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

    # -- health -----------------------------------------------------------------------------

    def beat(self, progress: float, error: str) -> None:
        """Record this process's sender's last progress, for ``pmixpanel status``."""
        beat = (socket.gethostname(), os.getpid(), progress, error[:500], time.time())
        with self._write() as db:
            db.execute(self._sql["beat"], beat)

    def beats(self) -> list[Beat]:
        """The senders that used this file, the most recent first."""
        with self._read() as db:
            return [Beat(*row) for row in db.execute(self._sql["beats"]).fetchall()]

    def check(self) -> str | None:
        """Notice the file deleted or replaced under us; move what it held into the new one."""
        try:
            current: tuple[int, int] | None = _identity(self.path)
        except OSError:
            current = None
        if current == self._identity:
            return None
        what = "was deleted" if current is None else "was replaced by another file"
        with self._lock, self._put_lock:
            # The old file is still open here: what it held can be read and carried over.
            messages = self._db.execute(self._sql["everything"]).fetchall()
            dead = self._db.execute(self._sql["everything_dead"]).fetchall()
            self._db.close()
            self._put_db.close()
            self._open()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                self._sql["rescue"],
                [(e, body, len(body), created, tries) for e, body, created, tries in messages],
            )
            db.executemany(self._sql["bury"], dead)
            db.execute("COMMIT")
        return f"{what}: {len(messages)} message(s) and {len(dead)} dead letter(s) carried over"

    # -- lifecycle --------------------------------------------------------------------------

    def after_fork(self) -> None:
        """Open connections of the child's own (rows are shared through the file)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._put_lock = threading.Lock()
        self._db = self._connect(5.0)
        self._put_db = self._connect(self.put_wait)

    def close(self) -> None:
        """Close this process's connections."""
        with self._lock, self._put_lock:
            self._db.close()
            self._put_db.close()


def describe(exc: sqlite3.Error) -> str:
    """What went wrong with the spool, in words an operator acts on."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return "is locked by another process (longer than a request may wait)"
    if "full" in text:
        return "is on a full disk (or at its size limit)"
    return f"cannot be written: {text}"


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino
