"""Replication of ``track`` and ``profile_set`` to Customer.io: a lane of its own.

:class:`CustomerIOCall` is what ``request.mixpanel`` records; released calls travel as messages
``(method, JSON of the call)`` of the ``customerio`` lane, with their own queue (or spool
tables), batch size (one call per request: the track API has no batch endpoint), retries and
counters, through :class:`CustomerIOTransport`. Mixpanel's transport knows nothing of them.

Customer.io wants epoch seconds where Mixpanel wants ISO dates, plain attribute names where
Mixpanel uses ``$`` names, and ``created_at`` for Mixpanel's ``$created``. Properties are passed
as the event's ``data`` dict and as the body of the identify call, never as keyword arguments,
so a property called ``Path`` or ``id`` cannot collide with the client's own parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import typing as t
from dataclasses import asdict, dataclass

from .delivery.base import Outcome
from .delivery.policy import is_retryable
from .delivery.transport import accepts_connections
from .log import redact

if t.TYPE_CHECKING:
    from .settings import MixpanelSettings

__all__ = [
    "CustomerIOCall",
    "CustomerIOTransport",
    "cio_attributes",
    "cio_name",
    "cio_value",
    "describe_error",
    "epoch_seconds",
]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def epoch_seconds(value: dt.datetime | dt.date) -> int:
    """Seconds since the epoch; naive datetimes and dates are taken as UTC."""
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return int((value - EPOCH).total_seconds())


def cio_value(value: object) -> object:
    """Convert one property value to what Customer.io expects."""
    if isinstance(value, (dt.datetime, dt.date)):
        return epoch_seconds(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [cio_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): cio_value(item) for key, item in value.items()}
    return value


def cio_name(name: str) -> str:
    """Map a Mixpanel property name to a Customer.io attribute name."""
    if name == "$created":
        return "created_at"
    return name.lstrip("$")


def cio_attributes(props: t.Mapping[str, object]) -> dict[str, object]:
    """Convert ``{Mixpanel name: raw value}`` to Customer.io attributes."""
    return {cio_name(name): cio_value(value) for name, value in props.items()}


@dataclass(frozen=True)
class CustomerIOCall:
    """One replicated call, recorded in testing mode and delivered otherwise."""

    method: str  # "track" or "identify"
    customer_id: str
    data: dict[str, object]
    name: str | None = None

    def to_json(self) -> str:
        """Serialise for the delivery queue / spool."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CustomerIOCall:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


class CustomerIOTransport:
    """Sends the ``customerio`` lane's calls with one shared, timeout-bounded client.

    Endpoints are the call methods: ``identify`` (sent first, so a profile exists before its
    events) and ``track``; a batch holds one call.
    """

    name: str = "customerio"
    endpoints: tuple[str, ...] = ("identify", "track")
    max_records: int = 1
    max_bytes: int = 1_000_000

    def __init__(
        self,
        site_id: str,
        api_key: str,
        *,
        region: str = "us",
        url: str | None = None,
        timeout: tuple[float, float] = (2.0, 5.0),
    ) -> None:
        from customerio import CustomerIO, Regions

        self.secrets = (site_id, api_key)
        self.timeout = timeout
        self.client = CustomerIO(
            site_id=site_id,
            api_key=api_key,
            region=Regions.EU if region == "eu" else Regions.US,
            # One bounded attempt per post: retries belong to the delivery mode.
            retries=0,
            timeout=timeout,
        )
        if url:
            # The client always builds an https URL from a host; a proxy or a test stand-in
            # needs the scheme and port kept, so the base URL is set after construction.
            self.client.base_url = f"{url}/api/v1"

    @classmethod
    def from_settings(cls, settings: MixpanelSettings) -> CustomerIOTransport:
        """The transport for ``customerio.tracking.*`` (timeouts from ``mixpanel.*``)."""
        return cls(
            t.cast(str, settings.customerio_site_id),
            t.cast(str, settings.customerio_api_key),
            region=settings.customerio_region or "us",
            url=settings.customerio_url,
            timeout=(settings.connect_timeout, settings.read_timeout),
        )

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        """Send one call; connection problems, 408, 429 and 5xx are worth retrying."""
        (body,) = bodies
        call = CustomerIOCall.from_json(body if isinstance(body, str) else body.decode())
        try:
            if endpoint == "identify":
                url = self.client.get_customer_query_string(call.customer_id)
                self.client.send_request("PUT", url, call.data)
            else:
                self.client.track(customer_id=call.customer_id, name=call.name, data=call.data)
        except Exception as exc:
            error = redact(describe_error(exc), self.secrets)
            status = error.removeprefix("HTTP ")
            if status.isdigit():
                return Outcome("retry" if is_retryable(int(status)) else "dead", error)
            return Outcome("retry", error, unreachable=True)
        return Outcome("sent")

    def reachable(self) -> bool:
        """Whether Customer.io's host takes connections again (the engine's outage probe)."""
        return accepts_connections(self.client.base_url, self.timeout[0])

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def describe_error(exc: Exception) -> str:
    """Summarise a Customer.io client error without the payload it quotes back."""
    text = str(exc)
    head = text.split(":", 1)[0]
    if head.isdigit():
        # "<status>: <url> <payload> <response text>": keep only the status code.
        return f"HTTP {head}"
    return f"{type(exc).__name__}: {text.splitlines()[-1][:200] if text else ''}"
