"""Delivery of released messages: ``mixpanel.delivery = background`` (default) or ``sync``.

``background`` hands messages to a process-wide :class:`~.engine.BackgroundEngine` (memory
queue, or the durable SQLite spool when ``mixpanel.spool_path`` is set) and returns at once;
``sync`` sends them through the configured consumer at the end of the request.
"""

from __future__ import annotations

import typing as t

from ..customerio import CustomerIOReplicator
from ..log import Log
from .engine import BackgroundEngine, Stats
from .policy import RetryPolicy
from .store import MemoryStore, SqliteSpool, Store
from .transport import HttpTransport, Router

if t.TYPE_CHECKING:
    from ..settings import MixpanelSettings

__all__ = ["BackgroundEngine", "RetryPolicy", "Stats", "build_engine", "build_store"]


def build_store(settings: MixpanelSettings) -> Store:
    """The configured store: the SQLite spool when ``mixpanel.spool_path`` is set."""
    if settings.spool_path:
        # A claimed batch is leased for a few times the longest a post may take: long enough
        # that a live sender keeps it, short enough that a crashed sender's rows soon come back.
        lease = 4 * (settings.connect_timeout + settings.read_timeout) + 5
        return SqliteSpool(
            settings.spool_path, settings.queue_max_messages, settings.queue_max_bytes, lease
        )
    return MemoryStore(settings.queue_max_messages, settings.queue_max_bytes)


def build_engine(
    settings: MixpanelSettings, log: Log, customerio: CustomerIOReplicator | None = None
) -> BackgroundEngine:
    """A background engine for ``settings`` (its sender starts on the first hand-over)."""
    return BackgroundEngine(
        build_store(settings),
        Router(HttpTransport(settings), customerio),
        log,
        spooled=bool(settings.spool_path),
        flush_interval=settings.flush_interval,
        shutdown_timeout=settings.shutdown_timeout,
        max_batch_records=settings.batch_max_records,
        max_batch_bytes=settings.batch_max_bytes,
    )
