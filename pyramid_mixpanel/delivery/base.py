"""The two seams of delivery: a :class:`Transport` posts a batch, a :class:`Delivery` decides when.

A *lane* is one destination with its own endpoints, batch limits, queue and counters: Mixpanel
(:class:`~.transport.MixpanelTransport`) and, when configured, Customer.io
(:class:`~pyramid_mixpanel.customerio.CustomerIOTransport`). Every delivery mode — ``sync``,
``background``, ``celery`` or a backend of your own named by ``mixpanel.delivery`` — takes a
transport and never knows which destination it feeds.
"""

from __future__ import annotations

import abc
import typing as t
from dataclasses import dataclass, field

from ..counters import Counters

if t.TYPE_CHECKING:
    from ..log import Log
    from ..settings import MixpanelSettings

__all__ = ["Delivery", "DeliveryFactory", "Message", "Outcome", "Prepared", "Transport", "batches"]


class Prepared(str):
    """A message body already in the form its destination takes, checked when it was built.

    :class:`~pyramid_mixpanel.MixpanelTrack` builds its events this way (integer milliseconds,
    ``ip``, ``$insert_id``, every documented rule checked once), so the sender posts them as
    they are instead of parsing, checking and encoding each again. A body that travelled
    through the spool or a Celery broker comes back a plain string and is prepared again
    (the same result: preparing is idempotent).
    """

    __slots__ = ()


#: One message of a lane: ``(endpoint, JSON body)``, e.g. ``("events", '{"event": ...}')``.
Message = tuple[str, str]


@dataclass(frozen=True)
class Outcome:
    """What happened to one posted batch.

    ``kind`` says what happened to the batch as a whole: ``sent`` (every record arrived),
    ``dead`` (refused: the records in ``failed``, or all of them when ``failed`` is empty; the
    rest arrived) or ``retry`` (the records in ``pending``, or all of them when ``pending`` is
    empty, can be tried again later; those in ``failed`` were refused; the rest arrived).
    :meth:`partition` turns that into positions.
    """

    kind: str  # "sent", "retry" or "dead"
    error: str = ""
    retry_after: float | None = None
    #: Positions (in the batch) of refused records.
    failed: frozenset[int] = field(default_factory=frozenset)
    #: The destination's reason for each refused record, by position.
    reasons: t.Mapping[int, str] = field(default_factory=dict, hash=False)
    #: True when the destination could not be reached at all (connection error or timeout).
    unreachable: bool = False
    #: True when not even a connection could be opened (refused, no route, connect timeout):
    #: the engine may then check cheaply when it can be (a server that accepts connections
    #: but does not answer is waited out instead).
    no_connection: bool = False
    #: With ``kind == "retry"``: positions to try again, when not the whole batch.
    pending: frozenset[int] = field(default_factory=frozenset)

    @property
    def sent(self) -> bool:
        """True when the whole batch was accepted."""
        return self.kind == "sent"

    def partition(self, count: int) -> tuple[list[int], list[int], list[int]]:
        """Positions of a batch of ``count`` records: ``(arrived, to retry, refused)``."""
        everything = range(count)
        if self.kind == "sent":
            return list(everything), [], []
        if self.kind == "dead":
            dead = sorted(self.failed) if self.failed else list(everything)
            return [i for i in everything if i not in self.failed] if self.failed else [], [], dead
        retry = (
            sorted(self.pending)
            if self.pending
            else [i for i in everything if i not in self.failed]
        )
        chosen = set(retry) | self.failed
        return [i for i in everything if i not in chosen], retry, sorted(self.failed)

    def refused_of(self, count: int) -> int:
        """How many of the ``count`` records of the batch did not arrive (yet)."""
        _, retry, dead = self.partition(count)
        return len(retry) + len(dead)


class Transport(t.Protocol):
    """Posts batches of one lane and says what happened; never raises for a network problem."""

    #: The lane's name, used in log events (``mixpanel.delivery_retry``) and task arguments.
    name: str
    #: The lane's endpoints, in the order a sender visits them.
    endpoints: tuple[str, ...]
    #: Most records, and most bytes of JSON, in one post.
    max_records: int
    max_bytes: int

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        """Send ``bodies`` (JSON messages) to ``endpoint`` as one batch."""

    def close(self) -> None:
        """Release connections."""


class Delivery(abc.ABC):
    """Where a lane's released messages go. Subclass it for a backend of your own.

    A backend is named in ``mixpanel.delivery`` by the dotted name of a factory called as
    ``factory(transport, settings, log)`` once per lane when the configuration is committed
    (a subclass whose ``__init__`` takes those three arguments is such a factory). It must
    never raise into the request and never block it for long.
    """

    def __init__(self) -> None:
        #: What happened to the lane's messages (``queued``, ``sent``, ``dead``, … by backend).
        self.stats = Counters()

    @abc.abstractmethod
    def submit(self, messages: t.Sequence[Message]) -> int:
        """Take a request's released messages; return how many could not be accepted."""

    def open(self) -> None:  # noqa: B027  # optional hook, empty on purpose
        """Called once when the app's configuration is committed."""

    def close(self, timeout: float | None = None) -> int:
        """Stop, draining for at most ``timeout`` seconds; return how many messages are left."""
        return 0


#: ``factory(transport, settings, log) -> Delivery``, e.g. a :class:`Delivery` subclass.
DeliveryFactory = t.Callable[[Transport, "MixpanelSettings", "Log"], Delivery]


def batches(bodies: t.Sequence[str], max_records: int, max_bytes: int) -> t.Iterator[list[str]]:
    """Split JSON messages into batches of at most ``max_records`` and ``max_bytes`` of JSON.

    A single message over ``max_bytes`` still gets a batch of its own (Mixpanel will say why it
    refuses it); it is never dropped here.
    """
    batch: list[str] = []
    size = 2  # the brackets of the JSON array
    for body in bodies:
        cost = len(body.encode()) + 1
        if batch and (len(batch) >= max_records or size + cost > max_bytes):
            yield batch
            batch, size = [], 2
        batch.append(body)
        size += cost
    if batch:
        yield batch
