"""Where accepted messages wait for delivery: in memory, or in a durable SQLite spool.

Both stores share one interface (:class:`Store`), so the engine does not care which it has, and
neither knows what its endpoints mean: one store holds one lane (Mixpanel, or Customer.io).

* :meth:`Store.put` accepts a request's messages (bounded by count and bytes; what does not fit
  is refused, counted and logged by the engine — never silently);
* :meth:`Store.claim` hands out a due batch for one endpoint, within the lane's limits;
* :meth:`Store.ack` / :meth:`Store.retry` / :meth:`Store.bury` settle a claimed batch;
* :meth:`Store.pending` and :meth:`Store.oldest_age` say how much waits, and how long the oldest
  has waited (for monitoring: :mod:`pyramid_mixpanel.prometheus`, :mod:`pyramid_mixpanel.otel`).

Due times are read from the store's own :attr:`Store.clock`: a monotonic clock in memory (a
clock stepped backwards must not stall delivery), the wall clock in the spool (its times are
shared with other processes).
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ...exceptions import MixpanelError

__all__ = [
    "Batch",
    "Beat",
    "DeadLetter",
    "MemoryStore",
    "SpoolError",
    "SqliteSpool",
    "Store",
]


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


@dataclass(frozen=True)
class Beat:
    """A sender's last sign of life, as a shared spool records it for ``pmixpanel status``."""

    host: str
    pid: int
    progress: float
    error: str
    updated: float


class SpoolError(MixpanelError):
    """The spool file cannot be used (busy, full, corrupted, read-only, missing, replaced)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"the spool {path!r} {problem}")
        self.path = path
        self.problem = problem


class Store(t.Protocol):
    """The interface both stores implement."""

    #: The clock of due times: what ``now`` and ``not_before`` are measured with.
    clock: t.Callable[[], float]

    def put(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Accept messages; return how many were refused for lack of room.

        :raises SpoolError: the spool could not take them now (locked longer than a request may
            wait, disk full, ...): the engine keeps them in memory and spools them later.
        """

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
    ) -> int:
        """Move a batch (or only the records at ``positions``) to the dead letters.

        Each keeps its own reason from ``reasons`` (by position) when there is one, else
        ``error``. Returns how many could not be kept for lack of room (counted as dropped).
        """

    def next_due(self, endpoints: t.Iterable[str] | None = None) -> float | None:
        """When the earliest waiting message (of ``endpoints``, or any) becomes due.

        ``None`` when there is none.
        """

    def hasten(self, endpoint: str, ids: t.Sequence[int], held_until: float) -> None:
        """Make the rows ``ids`` of ``endpoint`` due now, if still held until ``held_until``.

        ``held_until`` is what :meth:`retry` was given: rows another sender took meanwhile
        stay as they are.
        """

    def pending(self) -> int:
        """How many messages wait for delivery."""

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds the oldest message waiting for delivery has waited; ``None`` when none waits.

        ``now`` is on :attr:`clock` (default: now). For monitoring (read at scrape time): it
        may cost a pass over the waiting messages, never anything on the request path.
        """

    def dead(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters."""

    def dead_count(self) -> int:
        """How many dead letters there are."""

    def requeue_dead(self, ids: t.Iterable[int] | None = None) -> int:
        """Move dead letters (all, or ``ids``) back to the queue; return how many."""

    def beat(self, progress: float, error: str) -> None:
        """Record that this process's sender made progress at ``progress`` (wall clock)."""

    def beats(self) -> list[Beat]:
        """The senders' last signs of life."""

    def check(self) -> str | None:
        """Notice a store that changed under the sender; return what happened, if anything."""

    def after_fork(self) -> None:
        """Called in a forked child, before it hands anything over."""

    def close(self) -> None:
        """Release resources."""


from .memory import MemoryStore  # noqa: E402  # the implementations use the types above
from .spool import SqliteSpool  # noqa: E402
