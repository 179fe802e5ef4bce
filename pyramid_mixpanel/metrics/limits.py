"""Mixpanel's per-project query limits kept in the metrics database, shared by every process.

Mixpanel counts queries per project (reference/rate-limits), whichever process sends them: the web
workers, ``pmixpanel sync`` and Celery workers of one app share one budget. This store keeps that
budget in one row per project and limit of ``mixpanel_query_limits`` (created by the metrics
migrations, ``pmixpanel migrate``): the recent calls of a window, or the held slots of a
concurrency limit, as JSON. Each take is one short transaction that starts with a write on the
row, so processes taking a slot of the same limit go one after the other (SQLite takes its write
lock there, PostgreSQL the row's lock).

The limits are a courtesy to Mixpanel, who enforces them anyway (a 429 is retried): when the
table is missing or the database fails, the process keeps its own limits meanwhile and says so
in the log, rather than failing the query.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import typing as t
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..log import Log, redact
from ..query_limits import MemoryLimitStore
from .store import make_engine, query_limits_table

__all__ = ["SqlLimitStore"]

T = t.TypeVar("T")
State = t.Any  # a list of call times, or a {token: expiry} mapping


class SqlLimitStore:
    """A :class:`~pyramid_mixpanel.query_limits.LimitStore` in an SQL database (see the module).

    :param url: the SQLAlchemy URL (never logged).
    :param log: where failures are reported (the URL's password is redacted as well).
    :param recheck: seconds between two checks for the table while it is missing.
    :param portable: create rows without ``ON CONFLICT`` even on SQLite and PostgreSQL (the
        way other databases do).
    """

    def __init__(
        self,
        url: str,
        log: Log | None = None,
        *,
        recheck: float = 300.0,
        clock: t.Callable[[], float] = time.monotonic,
        portable: bool = False,
    ) -> None:
        self.engine = make_engine(url)
        password = self.engine.url.password
        self._password = str(password) if password else ""
        self.log = log or Log()
        self.recheck = recheck
        self.portable = portable
        self.clock = clock
        self.fallback = MemoryLimitStore()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._ready = False
        self._checked: float | None = None
        self._rows: set[str] = set()

    def __repr__(self) -> str:
        return f"SqlLimitStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # -- the LimitStore protocol ------------------------------------------------------------

    def take(self, name: str, limit: int, period: float, now: float) -> float:  # noqa: D102
        def change(calls: State) -> tuple[State, float]:
            recent = [at for at in calls if at > now - period]
            if len(recent) < limit:
                return [*recent, now], 0.0
            return recent, min(recent) + period - now

        return self._update(name, [], change, lambda: self.fallback.take(name, limit, period, now))

    def lease(self, name: str, limit: int, now: float, expires: float) -> str | None:  # noqa: D102
        token = uuid.uuid4().hex

        def change(held: State) -> tuple[State, str | None]:
            alive = {k: until for k, until in held.items() if until > now}
            if len(alive) >= limit:
                return alive, None
            return {**alive, token: expires}, token

        return self._update(
            name, {}, change, lambda: self.fallback.lease(name, limit, now, expires)
        )

    def release(self, name: str, token: str) -> None:  # noqa: D102
        def change(held: State) -> tuple[State, None]:
            return {k: until for k, until in held.items() if k != token}, None

        self.fallback.release(name, token)  # where it was taken while the database was away
        self._update(name, {}, change, lambda: None)

    # -- plumbing ---------------------------------------------------------------------------

    def _update(
        self,
        name: str,
        empty: State,
        change: t.Callable[[State], tuple[State, T]],
        fallback: t.Callable[[], T],
    ) -> T:
        if not self._usable():
            return fallback()
        table = query_limits_table
        try:
            if name not in self._rows:
                self._create_row(name, empty)
            with self.engine.begin() as connection:
                # A write first: it makes the processes taking a slot of this limit wait for
                # each other until commit (SQLite: the database's write lock; PostgreSQL and
                # others: the row's lock), so two of them never both see the last free slot.
                connection.execute(
                    sa.update(table).where(table.c.key == name).values(key=table.c.key)
                )
                state = connection.execute(
                    sa.select(table.c.state).where(table.c.key == name)
                ).scalar_one()
                new, result = change(state)
                connection.execute(
                    sa.update(table)
                    .where(table.c.key == name)
                    .values(state=new, updated_at=dt.datetime.now(dt.timezone.utc))
                )
            return result
        except sa.exc.SQLAlchemyError as exc:
            self._unshared(self._failure(exc))
            return fallback()

    def _create_row(self, name: str, empty: State) -> None:
        table = query_limits_table
        row = {"key": name, "state": empty, "updated_at": dt.datetime.now(dt.timezone.utc)}
        with self.engine.begin() as connection:
            dialect = connection.dialect.name
            if not self.portable and dialect in ("sqlite", "postgresql"):
                insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
                connection.execute(insert.values(row).on_conflict_do_nothing())
            else:
                # Elsewhere two processes creating the row at the same moment is possible: the
                # loser's insert fails, and that one call keeps its process's limits.
                exists = connection.execute(
                    sa.select(table.c.key).where(table.c.key == name)
                ).first()
                if exists is None:
                    connection.execute(sa.insert(table).values(row))
        self._rows.add(name)

    def _failure(self, exc: Exception) -> str:
        return redact(f"the database failed: {type(exc).__name__}: {exc}"[:400], (self._password,))

    def _unshared(self, reason: str) -> None:
        self.log.warning(
            "mixpanel.query_limits_unshared",
            reason=reason,
            action="this process keeps its own limits meanwhile",
        )

    def _usable(self) -> bool:
        """Whether the table is there (asked again every ``recheck`` seconds while it is not)."""
        with self._lock:
            if os.getpid() != self._pid:
                # A forked child must not use its parent's connections: it opens its own.
                self.engine.dispose(close=False)
                self._pid = os.getpid()
            if self._ready:
                return True
            now = self.clock()
            if self._checked is not None and now - self._checked < self.recheck:
                return False
            self._checked = now
            try:
                self._ready = sa.inspect(self.engine).has_table(query_limits_table.name)
            except sa.exc.SQLAlchemyError as exc:
                self._unshared(self._failure(exc))
                return False
            if not self._ready:
                self._unshared(
                    "the table mixpanel_query_limits is missing: run 'pmixpanel migrate"
                    " <config.ini>'"
                )
            return self._ready
