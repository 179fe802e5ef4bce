"""Replication of ``track`` and ``profile_set`` to Customer.io.

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

from .log import Log

if t.TYPE_CHECKING:
    from .settings import MixpanelSettings

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


class CustomerIOReplicator:
    """Sends :class:`CustomerIOCall` objects with a shared, timeout-bounded client."""

    def __init__(self, settings: MixpanelSettings, log: Log) -> None:
        from customerio import CustomerIO, Regions

        region = Regions.EU if settings.customerio_region == "eu" else Regions.US
        self.log = log
        self.client = CustomerIO(
            site_id=settings.customerio_site_id,
            api_key=settings.customerio_api_key,
            region=region,
            # Delivery must not hold a request: one bounded attempt, failures are logged.
            retries=0,
            timeout=(settings.connect_timeout, settings.read_timeout),
        )
        if settings.customerio_url:
            # The client always builds an https URL from a host; a proxy or a test stand-in
            # needs the scheme and port kept, so the base URL is set after construction.
            self.client.base_url = f"{settings.customerio_url}/api/v1"

    def send(self, call: CustomerIOCall) -> tuple[str, str]:
        """Send one call; return ``("sent", "")``, ``("retry", error)`` or ``("dead", error)``.

        Connection problems, 408, 429 and 5xx are worth retrying; other refusals are not.
        """
        try:
            if call.method == "identify":
                url = self.client.get_customer_query_string(call.customer_id)
                self.client.send_request("PUT", url, call.data)
            else:
                self.client.track(customer_id=call.customer_id, name=call.name, data=call.data)
        except Exception as exc:
            error = describe_error(exc)
            status = error.removeprefix("HTTP ")
            if status.isdigit() and not (int(status) in (408, 429) or int(status) >= 500):
                return "dead", error
            return "retry", error
        return "sent", ""

    def deliver(self, calls: t.Sequence[CustomerIOCall]) -> int:
        """Send every call; return how many failed (each failure is logged, never raised)."""
        failed = 0
        for call in calls:
            kind, error = self.send(call)
            if kind != "sent":
                failed += 1
                self.log.error("customerio.delivery_failed", method=call.method, error=error)
        return failed


def describe_error(exc: Exception) -> str:
    """Summarise a Customer.io client error without the payload it quotes back."""
    text = str(exc)
    head = text.split(":", 1)[0]
    if head.isdigit():
        # "<status>: <url> <payload> <response text>": keep only the status code.
        return f"HTTP {head}"
    return f"{type(exc).__name__}: {text.splitlines()[-1][:200] if text else ''}"
