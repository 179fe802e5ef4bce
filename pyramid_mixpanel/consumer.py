"""Consumers: where built Mixpanel messages go.

* :class:`MockedConsumer` records messages in testing mode (no token).
* :class:`PoliteBufferedConsumer` sends them in batches and never raises: every failure is
  logged (without secrets) and the request that produced the messages is left alone.
* :class:`RequestBuffer` is what ``request.mixpanel.api._consumer`` is outside testing mode:
  it holds a request's messages until the request's outcome is known.
"""

from __future__ import annotations

import collections
import json
import typing as t
import weakref

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


class MockedConsumer:
    """Testing-mode consumer: records every message in :attr:`mocked_messages`, sends nothing.

    Messages are appended at call time as ``{"endpoint": ..., "msg": ...}`` dicts. With
    :attr:`DROP_SYSTEM_MESSAGE_PROPERTIES` (the default), values that change on every call
    (``token``, ``time``, ``$insert_id``, ``mp_lib``, ``$lib_version`` and a profile update's
    ``$token`` / ``$time``) are dropped so tests can compare messages with ``==``.
    :attr:`flushed` turns true when the request's messages were released, i.e. would have been
    delivered; it stays false for a request that failed or whose transaction aborted.
    """

    DROP_SYSTEM_MESSAGE_PROPERTIES = True

    def __init__(self) -> None:
        self.mocked_messages: list[dict[str, t.Any]] = []
        self.flushed = False

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
    * batches up to Mixpanel's limits (2000 records, 10 MB) per endpoint, gzip'd only where
      Mixpanel accepts it (``/track``, ``/import``);
    * when Mixpanel cannot be reached, the remaining endpoints are not tried in the same flush,
      so a hung Mixpanel costs one timeout, not one per endpoint;
    * every failure is logged with the endpoint and the number of messages, never with a
      message body or a secret; :attr:`failed` counts the messages it could not deliver.

    Built by :meth:`from_settings` when configured through ``mixpanel.consumer``; it can also be
    used on its own with the same keyword arguments as :class:`mixpanel.BufferedConsumer`.
    """

    def __init__(
        self,
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
        self._transport = MixpanelTransport(
            api_host,
            timeout=timeout,
            import_auth=auth,
            project_id=project_id,
            secrets=[secret for secret in secrets if secret],
            max_records=max_size,
        )
        self._buffers: dict[str, list[str]] = {endpoint: [] for endpoint in ENDPOINTS}
        self._log = log or Log(self._transport.secrets)
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
        """Buffer one message; nothing is sent before :meth:`flush`."""
        if endpoint not in self._buffers:
            self._log.error("mixpanel.unknown_endpoint", endpoint=endpoint)
            self.failed += 1
            return
        self._buffers[endpoint].append(json_message)

    def flush(self) -> None:
        """Send every buffered message; log (never raise) what could not be sent."""
        messages = [
            (endpoint, body) for endpoint, bodies in self._buffers.items() for body in bodies
        ]
        self._buffers = {endpoint: [] for endpoint in ENDPOINTS}
        _, failed = post_all(self._transport, messages, self._log) if messages else (0, 0)
        self.failed += failed


class RequestBuffer:
    """Holds one request's messages until its outcome is known (``api._consumer`` in production).

    ``flush()`` releases the messages to delivery right away, so scripts that call
    ``mixpanel.api._consumer.flush()`` by hand, as with the original package, keep working.
    """

    def __init__(self, owner: t.Any) -> None:
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
