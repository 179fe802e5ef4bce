"""HTTP transport: post one batch to Mixpanel and classify the answer.

A keep-alive :class:`requests.Session`, gzip bodies, bounded connect/read timeouts. The answer
is turned into an :class:`Outcome` the engine acts on: delivered, retry later, or dead (a
client error Mixpanel will keep refusing), with the indices of refused records for a strict
``/import``.
"""

from __future__ import annotations

import gzip
import typing as t
from dataclasses import dataclass, field

import requests

from ..customerio import CustomerIOCall, CustomerIOReplicator
from ..log import redact
from .policy import parse_retry_after

if t.TYPE_CHECKING:
    from ..settings import MixpanelSettings

PATHS = {"events": "/track", "people": "/engage", "groups": "/groups", "imports": "/import"}
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class Outcome:
    """What happened to one batch."""

    kind: str  # "sent", "retry" or "dead"
    error: str = ""
    retry_after: float | None = None
    #: For a partly refused strict import: positions (in the batch) of the refused records.
    failed: frozenset[int] = field(default_factory=frozenset)
    #: For a refused strict import: Mixpanel's reason for each refused record (the ``message``
    #: of its ``failed_records`` entry), by position; also set when every record was refused.
    reasons: t.Mapping[int, str] = field(default_factory=dict, hash=False)
    #: True when Mixpanel could not be reached at all (connection error or timeout).
    unreachable: bool = False

    @property
    def sent(self) -> bool:
        """True when Mixpanel accepted the whole batch."""
        return self.kind == "sent"


class HttpTransport:
    """Posts batches to Mixpanel's ingestion API."""

    def __init__(
        self,
        settings: MixpanelSettings,
        session: requests.Session | None = None,
        compresslevel: int = 5,
    ) -> None:
        self.base = settings.api_host
        self.compresslevel = compresslevel
        self.timeout = (settings.connect_timeout, settings.read_timeout)
        self.secrets = settings.secrets
        self.session = session or requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        self.session.headers["Content-Encoding"] = "gzip"
        self.import_auth: tuple[str, str] | None = None
        self.import_params: dict[str, str] = {"strict": "1", "verbose": "1"}
        if settings.has_service_account:
            self.import_auth = (
                t.cast(str, settings.service_account_username),
                t.cast(str, settings.service_account_secret),
            )
            self.import_params["project_id"] = t.cast(str, settings.service_account_project_id)
        else:
            # The legacy secret, or the project token, as basic-auth user with no password
            # (an engine only exists when a token is set).
            self.import_auth = (t.cast(str, settings.api_secret or settings.token), "")

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        """Send ``bodies`` (JSON messages, text or UTF-8) to ``endpoint`` as one gzip'd array."""
        if bodies and isinstance(bodies[0], bytes):
            raw = b"[" + b",".join(t.cast("t.Sequence[bytes]", bodies)) + b"]"
        else:
            raw = ("[" + ",".join(t.cast("t.Sequence[str]", bodies)) + "]").encode()
        payload = gzip.compress(raw, compresslevel=self.compresslevel)
        is_import = endpoint == "imports"
        try:
            response = self.session.post(
                self.base + PATHS[endpoint],
                params=self.import_params if is_import else {"verbose": "1", "ip": "0"},
                data=payload,
                auth=self.import_auth if is_import else None,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            error = self._clean(f"{type(exc).__name__}: {exc}")
            return Outcome("retry", error, unreachable=True)
        return self._classify(response, len(bodies), is_import)

    def _classify(self, response: requests.Response, count: int, is_import: bool) -> Outcome:
        status = response.status_code
        try:
            answer = response.json()
        except ValueError:
            answer = None
        error = self._clean(_error_text(answer, response.text))
        if status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return Outcome("retry", f"HTTP {status}: {error}", retry_after)
        if status == 200 and isinstance(answer, dict) and answer.get("status") in (1, "OK"):
            return Outcome("sent")
        if status == 200 and answer in (1, "1"):
            return Outcome("sent")
        refused = _failed_records(answer, count) if is_import else {}
        reasons = {index: self._clean(message) for index, message in refused.items() if message}
        if refused and len(refused) < count:
            return Outcome(
                "dead", f"HTTP {status}: {error}", failed=frozenset(refused), reasons=reasons
            )
        return Outcome("dead", f"HTTP {status}: {error}", reasons=reasons)

    def _clean(self, text: str) -> str:
        return redact(text[:500], self.secrets)


def _error_text(answer: object, text: str) -> str:
    if isinstance(answer, dict):
        for key in ("error", "message"):
            if answer.get(key):
                return str(answer[key])
    return text.strip() or "no error text"


def _failed_records(answer: object, count: int) -> dict[int, str]:
    """``{index: message}`` of the refused records in a strict ``/import`` answer."""
    if not isinstance(answer, dict):
        return {}
    found: dict[int, str] = {}
    for record in answer.get("failed_records") or ():
        index = record.get("index") if isinstance(record, dict) else record
        if isinstance(index, int) and 0 <= index < count:
            message = record.get("message") if isinstance(record, dict) else None
            found[index] = message if isinstance(message, str) else ""
    return found


class Router:
    """Dispatch batches: Mixpanel endpoints to HTTP, ``customerio`` to the replicator."""

    def __init__(self, mixpanel: HttpTransport, customerio: CustomerIOReplicator | None) -> None:
        self.mixpanel = mixpanel
        self.customerio = customerio

    def post(self, endpoint: str, bodies: t.Sequence[str]) -> Outcome:
        """Send one batch (Customer.io batches hold one call)."""
        if endpoint != "customerio":
            return self.mixpanel.post(endpoint, bodies)
        if self.customerio is None:
            return Outcome("dead", "Customer.io is not configured in this process")
        (body,) = bodies
        kind, error = self.customerio.send(CustomerIOCall.from_json(body))
        return Outcome(kind, error)
