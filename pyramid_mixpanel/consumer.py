"""Consumers: where built Mixpanel messages go.

* :class:`MockedConsumer` records messages in testing mode (no token).
* :class:`PoliteBufferedConsumer` sends them in batches and never raises: every failure is
  logged (without secrets) and the request that produced the messages is left alone.
* :class:`RequestBuffer` is what ``request.mixpanel.api._consumer`` is outside testing mode:
  it holds a request's messages until the request's outcome is known.
"""

from __future__ import annotations

import json
import typing as t
import weakref

import mixpanel
import requests

from .log import Log

if t.TYPE_CHECKING:
    from .settings import MixpanelSettings

ENDPOINTS = ("events", "people", "groups", "imports")
# Mixpanel accepts at most 2000 records and 10 MB (uncompressed) per ingestion request.
MAX_BATCH_RECORDS = 2000
MAX_BATCH_BYTES = 10 * 1024 * 1024

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
        """Record one message."""
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

    * Bounded connect/read timeouts on every HTTP call; no blocking retries.
    * Batches up to Mixpanel's limits (2000 records, 10 MB) per endpoint.
    * When Mixpanel cannot be reached, the remaining endpoints are not tried in the same flush,
      so a hung Mixpanel costs one timeout, not one per endpoint.
    * Every failure is logged with the endpoint and the number of messages, never with a
      message body or a secret.

    Built by :meth:`from_settings` when configured through ``mixpanel.consumer``; it can also be
    used on its own with the same keyword arguments as :class:`mixpanel.BufferedConsumer`.
    """

    def __init__(
        self,
        max_size: int = MAX_BATCH_RECORDS,
        *,
        api_host: str = "https://api.mixpanel.com",
        request_timeout: float | tuple[float, float] = (2.0, 5.0),
        credentials: mixpanel.ServiceAccountCredentials | None = None,
        import_api_secret: str | None = None,
        log: Log | None = None,
    ) -> None:
        # BufferedConsumer.__init__ is not called on purpose: it caps batches at 50 records and
        # would build a second HTTP client. Everything it would set up is set up here.
        base = api_host if "://" in api_host else f"https://{api_host}"
        self._consumer = mixpanel.Consumer(
            events_url=f"{base}/track",
            people_url=f"{base}/engage",
            groups_url=f"{base}/groups",
            import_url=f"{base}/import",
            request_timeout=request_timeout,
            retry_limit=0,
            credentials=credentials,
        )
        self._buffers: dict[str, list[str]] = {endpoint: [] for endpoint in ENDPOINTS}
        self._max_size = max(1, min(max_size, MAX_BATCH_RECORDS))
        self._import_api_secret = import_api_secret
        self._log = log or Log()

    @classmethod
    def from_settings(cls, settings: MixpanelSettings, log: Log) -> PoliteBufferedConsumer:
        """Build a consumer for the configured host, timeouts and import credentials."""
        credentials = None
        if settings.has_service_account:
            credentials = mixpanel.ServiceAccountCredentials(
                username=t.cast(str, settings.service_account_username),
                secret=t.cast(str, settings.service_account_secret),
                project_id=t.cast(str, settings.service_account_project_id),
            )
        return cls(
            api_host=settings.api_host,
            request_timeout=(settings.connect_timeout, settings.read_timeout),
            credentials=credentials,
            # /import takes the project token as basic-auth user when there is no secret.
            import_api_secret=settings.api_secret or settings.token,
            log=log,
        )

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
            return
        self._buffers[endpoint].append(json_message)

    def flush(self) -> None:
        """Send every buffered message; log (never raise) what could not be sent."""
        pending = [
            (endpoint, batch)
            for endpoint in ENDPOINTS
            for batch in batches(self._buffers[endpoint], self._max_size)
        ]
        self._buffers = {endpoint: [] for endpoint in ENDPOINTS}
        for position, (endpoint, batch) in enumerate(pending):
            try:
                self._post(endpoint, batch)
            except mixpanel.MixpanelException as exc:
                self._log.error(
                    "mixpanel.delivery_failed",
                    endpoint=endpoint,
                    messages=len(batch),
                    error=str(exc)[:300],
                )
                if isinstance(exc.__cause__, requests.RequestException):
                    # Mixpanel could not be reached: one timeout is enough to know, do not make
                    # the caller wait for another one per remaining batch.
                    skipped = sum(len(rest) for _, rest in pending[position + 1 :])
                    if skipped:
                        self._log.error("mixpanel.unreachable_skipped", messages=skipped)
                    return

    def _post(self, endpoint: str, batch: list[str]) -> None:
        secret = self._import_api_secret if endpoint == "imports" else None
        self._consumer.send(endpoint, "[" + ",".join(batch) + "]", None, secret)


def batches(messages: list[str], max_records: int) -> t.Iterator[list[str]]:
    """Split JSON messages into batches within Mixpanel's record and size limits."""
    batch: list[str] = []
    size = 2
    for message in messages:
        cost = len(message.encode()) + 1
        if batch and (len(batch) >= max_records or size + cost > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 2
        batch.append(message)
        size += cost
    if batch:
        yield batch


class RequestBuffer:
    """Holds one request's messages until its outcome is known (``api._consumer`` in production).

    ``flush()`` releases the messages to delivery right away, so scripts that call
    ``mixpanel.api._consumer.flush()`` by hand, as with the original package, keep working.
    """

    def __init__(self, owner: t.Any) -> None:
        self.messages: list[tuple[str, str]] = []
        #: Every message ever held, also after release (for the debug toolbar panel).
        self.history: list[tuple[str, str]] = []
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
        """Hold one message."""
        message = (endpoint, json_message)
        self.messages.append(message)
        self.history.append(message)

    def flush(self) -> None:
        """Release the held messages to delivery now."""
        owner = self._owner()
        if owner is not None:
            owner.flush()
