"""Consumers: where built Mixpanel messages go.

* :class:`MockedConsumer` records messages in testing mode (no token).
* :class:`PoliteBufferedConsumer` sends them in batches and never raises: every failure is
  logged (without secrets) and the request that produced the messages is left alone.
* :class:`RequestBuffer` is what ``request.mixpanel.api._consumer`` is outside testing mode
  (unless ``mixpanel.consumer`` names another class): a :class:`PoliteBufferedConsumer` that
  holds a request's messages until the request's outcome is known.
"""

from __future__ import annotations

import collections
import json
import typing as t
import weakref
from dataclasses import dataclass, field

import mixpanel

from . import rules
from .delivery.sync import post_all
from .delivery.transport import ENDPOINTS, MAX_RECORDS, MixpanelTransport
from .log import Log

if t.TYPE_CHECKING:
    from .settings import MixpanelSettings

__all__ = ["MockedConsumer", "PoliteBufferedConsumer", "RequestBuffer"]

#: How many messages :attr:`RequestBuffer.history` keeps.
HISTORY = 1000
SYSTEM_EVENT_PROPERTIES = ("token", "time", "$insert_id", "mp_lib", "$lib_version")
SYSTEM_PROFILE_KEYS = ("$token", "$time")


@dataclass
class MockedConsumer:
    """Testing-mode consumer: records every message in :attr:`mocked_messages`, sends nothing.

    Messages are appended at call time as ``{"endpoint": ..., "msg": ...}`` dicts (Customer.io
    calls as ``{"endpoint": "customer.io", ...}``). With :attr:`DROP_SYSTEM_MESSAGE_PROPERTIES`
    (the default), values that change on every call (``token``, ``time``, ``$insert_id``,
    ``mp_lib``, ``$lib_version`` and a profile update's ``$token`` / ``$time``) are dropped so
    tests can compare messages with ``==``. :attr:`flushed` turns true when the request's
    messages were released, i.e. would have been delivered; it stays false for a request that
    failed or whose transaction aborted. Two consumers with the same state are equal.
    """

    mocked_messages: list[dict[str, t.Any]] = field(default_factory=list)
    flushed: bool = False
    #: Set to ``False`` on an instance or a subclass to keep the system properties.
    DROP_SYSTEM_MESSAGE_PROPERTIES: t.ClassVar[bool] = True

    def send(
        self,
        endpoint: str,
        json_message: str,
        api_key: object = None,
        api_secret: object = None,
    ) -> None:
        """Record one message (too large for Mixpanel: ``ValueError``, as in production)."""
        check_size(json_message)
        msg = json.loads(json_message)
        if self.DROP_SYSTEM_MESSAGE_PROPERTIES:
            properties = msg.get("properties")
            if isinstance(properties, dict):
                for key in SYSTEM_EVENT_PROPERTIES:
                    properties.pop(key, None)
            for key in SYSTEM_PROFILE_KEYS:
                msg.pop(key, None)
        self.mocked_messages.append({"endpoint": endpoint, "msg": msg})

    def flush(self) -> None:
        """Mark the recorded messages as released."""
        self.flushed = True


class PoliteBufferedConsumer(mixpanel.BufferedConsumer):  # type: ignore[misc]  # untyped base
    """A :class:`mixpanel.BufferedConsumer` that never raises and never waits for long.

    It posts through the same :class:`~pyramid_mixpanel.delivery.transport.MixpanelTransport`
    as every delivery mode:

    * bounded connect/read timeouts on every HTTP call; no blocking retries;
    * batches up to Mixpanel's limits (``max_size`` records, at most 2000, and 10 MB) per
      endpoint, gzip'd only where Mixpanel accepts it (``/track``, ``/import``); a buffer that
      reaches ``max_size`` is sent at once, as :class:`mixpanel.BufferedConsumer` does;
    * when Mixpanel cannot be reached, the remaining endpoints are not tried in the same flush,
      so a hung Mixpanel costs one timeout, not one per endpoint;
    * every failure is logged with the endpoint and the number of messages, never with a
      message body or a secret; :attr:`failed` counts the messages it could not deliver;
    * should an endpoint's flush raise anyway (a subclass's ``_flush_endpoint``), the error is
      logged as "It seems like Mixpanel is down." (logger ``pyramid_mixpanel.consumer``, with
      the traceback), as the original package did.

    :param use_structlog: log through structlog instead of the standard library.

    Built by :meth:`from_settings` when configured through ``mixpanel.consumer``; it can also be
    used on its own.
    """

    def __init__(
        self,
        use_structlog: bool = False,
        max_size: int = MAX_RECORDS,
        *,
        api_host: str = "https://api.mixpanel.com",
        request_timeout: float | tuple[float, float] = (2.0, 5.0),
        credentials: mixpanel.ServiceAccountCredentials | None = None,
        import_api_secret: str | None = None,
        log: Log | None = None,
    ) -> None:
        # BufferedConsumer.__init__ is not called on purpose: it caps batches at 50 records and
        # would build a second HTTP client. Everything it would set up is set up here.
        timeout = (
            request_timeout
            if isinstance(request_timeout, tuple)
            else (request_timeout, request_timeout)
        )
        auth: tuple[str, str] | None = None
        project_id: str | None = None
        if credentials is not None:
            auth, project_id = (credentials.username, credentials.secret), credentials.project_id
        elif import_api_secret:
            auth = (import_api_secret, "")
        # Otherwise /import is authenticated with the token each event carries.
        secrets = (import_api_secret, credentials.secret if credentials is not None else None)
        self._max_size = max(1, min(max_size, MAX_RECORDS))
        self._transport = MixpanelTransport(
            api_host,
            timeout=timeout,
            import_auth=auth,
            project_id=project_id,
            secrets=[secret for secret in secrets if secret],
            max_records=self._max_size,
        )
        self._buffers: dict[str, list[str]] = {endpoint: [] for endpoint in ENDPOINTS}
        self._log = (log or Log(self._transport.secrets, use_structlog)).child("consumer")
        self.use_structlog = self._log.use_structlog
        self._down = False
        #: How many messages could not be delivered (unknown endpoint, refused, unreachable).
        self.failed = 0

    @classmethod
    def from_settings(cls, settings: MixpanelSettings, log: Log) -> PoliteBufferedConsumer:
        """Build a consumer for the configured host, timeouts and import credentials."""
        consumer = cls(log=log)
        consumer._transport = MixpanelTransport.from_settings(settings)
        return consumer

    def send(
        self,
        endpoint: str,
        json_message: str,
        api_key: object = None,
        api_secret: object = None,
    ) -> None:
        """Buffer one message; a full buffer is sent at once, the rest on :meth:`flush`."""
        buffer = self._buffers.get(endpoint)
        if buffer is None:
            self._log.error("mixpanel.unknown_endpoint", endpoint=endpoint)
            self.failed += 1
            return
        buffer.append(json_message)
        if len(buffer) >= self._max_size:
            self._down = False
            self._flush_endpoint(endpoint)

    def flush(self) -> None:
        """Send every buffered message; log (never raise) what could not be sent."""
        self._down = False
        try:
            super().flush()  # _flush_endpoint for each endpoint, in Mixpanel's order
        except (OSError, mixpanel.MixpanelException) as exc:  # URLError is an OSError
            self._log.say("error", "It seems like Mixpanel is down.", error=exc)

    def _flush_endpoint(self, endpoint: str) -> None:
        bodies, self._buffers[endpoint] = self._buffers[endpoint], []
        if not bodies:
            return
        if self._down:
            # One timeout is enough to know: do not make the caller wait for one per endpoint.
            self.failed += len(bodies)
            self._log.error("mixpanel.unreachable_skipped", endpoint=endpoint, messages=len(bodies))
            return
        posted = post_all(self._transport, [(endpoint, body) for body in bodies], self._log)
        self.failed += posted.failed
        self._down = posted.unreachable


class RequestBuffer(PoliteBufferedConsumer):
    """Holds one request's messages until its outcome is known (``api._consumer`` in production).

    A :class:`PoliteBufferedConsumer` (code that checks ``isinstance`` keeps working) whose
    :meth:`flush` hands the messages to the app's delivery (the background engine, the spool,
    Celery or a synchronous post) instead of posting them itself. Scripts that call
    ``mixpanel.api._consumer.flush()`` by hand, as with the original package, keep working.
    """

    def __init__(self, owner: t.Any) -> None:
        # PoliteBufferedConsumer.__init__ is not called on purpose: it would build an HTTP
        # client per request that is never used; messages leave through the owner's runtime.
        self.messages: list[tuple[str, str]] = []
        #: The last :data:`HISTORY` messages held, also after release (for the debug toolbar
        #: panel); bounded, so a long-lived instance in a script or worker does not grow.
        self.history: collections.deque[tuple[str, str]] = collections.deque(maxlen=HISTORY)
        # A weak reference: the owner holds this buffer (through its client), and a strong
        # one back would make a reference cycle per request, left for the cyclic garbage
        # collector to find instead of being freed when the request ends.
        self._owner = weakref.ref(owner)

    def send(
        self,
        endpoint: str,
        json_message: str,
        api_key: object = None,
        api_secret: object = None,
    ) -> None:
        """Hold one message; one Mixpanel would refuse as too large is a ``ValueError``."""
        if len(json_message) >= MIGHT_BE_TOO_LARGE:  # inlined: this runs for every message
            check_size(json_message)
        message = (endpoint, json_message)
        self.messages.append(message)
        self.history.append(message)

    def flush(self) -> None:
        """Release the held messages to delivery now."""
        owner = self._owner()
        if owner is not None:
            owner.flush()


#: A message shorter than this (in characters) is under 1 MB whatever its characters.
MIGHT_BE_TOO_LARGE = rules.MAX_EVENT_BYTES // 4


def check_size(json_message: str) -> None:
    """Refuse a message of 1 MB or more of JSON, which Mixpanel would refuse whole."""
    # A character is 1 to 4 bytes: only long messages need encoding to be measured.
    if len(json_message) * 4 >= rules.MAX_EVENT_BYTES:
        size = len(json_message.encode())
        if size >= rules.MAX_EVENT_BYTES:
            raise ValueError(
                f"a message of {size:,} bytes: Mixpanel takes less than 1 MB per record"
            )
