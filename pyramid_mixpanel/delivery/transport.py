"""The one way a batch reaches Mixpanel's ingestion API, and how its answer is read.

Every delivery mode (``sync``, ``background``, ``celery``), :class:`PoliteBufferedConsumer` and
``pmixpanel import`` post through :class:`MixpanelTransport`: a keep-alive
:class:`requests.Session`, bounded connect/read timeouts, the endpoint's path, body encoding and
authentication, and one reading of the answer into an :class:`~.base.Outcome` — delivered,
retry later, or dead (a refusal Mixpanel will repeat), with the refused records of a strict
``/import``.
"""

from __future__ import annotations

import gzip
import typing as t

import requests

from ..log import redact
from .base import Outcome
from .policy import is_retryable, parse_retry_after

if t.TYPE_CHECKING:
    from ..settings import MixpanelSettings

__all__ = ["ENDPOINTS", "GZIP_ENDPOINTS", "PATHS", "MixpanelTransport"]

#: The client library's endpoint names and Mixpanel's paths.
PATHS = {"events": "/track", "people": "/engage", "groups": "/groups", "imports": "/import"}
ENDPOINTS = tuple(PATHS)
#: Mixpanel accepts gzip request bodies on /track and /import only (reference/track-event,
#: "/track vs /import"); /engage does not support gzip (reference/profile-set) and no official
#: client gzips /groups, so those get plain JSON.
GZIP_ENDPOINTS = frozenset({"events", "imports"})
#: Mixpanel's limits per ingestion request: 2000 records, 10 MB (decimal) of uncompressed JSON.
MAX_RECORDS = 2000
MAX_BYTES = 10_000_000


class MixpanelTransport:
    """Posts batches to Mixpanel's ingestion API (the ``mixpanel`` lane).

    :param api_host: base URL, e.g. ``https://api-eu.mixpanel.com``.
    :param timeout: ``(connect, read)`` seconds for every post.
    :param import_auth: basic-auth ``(user, password)`` for ``/import``: a service account, or
        the project token (or legacy secret) as user with an empty password.
    :param project_id: the service account's project, sent to ``/import``.
    :param secrets: scrubbed from every error text.
    """

    name: str = "mixpanel"
    endpoints: tuple[str, ...] = ENDPOINTS

    def __init__(
        self,
        api_host: str = "https://api.mixpanel.com",
        *,
        timeout: tuple[float, float] = (2.0, 5.0),
        import_auth: tuple[str, str] | None = None,
        project_id: str | None = None,
        secrets: t.Iterable[str] = (),
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_BYTES,
        compresslevel: int = 5,
        session: requests.Session | None = None,
    ) -> None:
        self.base = api_host if "://" in api_host else f"https://{api_host}"
        self.timeout = timeout
        self.import_auth = import_auth
        self.secrets = tuple(secrets)
        self.max_records = max(1, min(max_records, MAX_RECORDS))
        self.max_bytes = max(1, min(max_bytes, MAX_BYTES))
        self.compresslevel = compresslevel
        self.session = session or requests.Session()
        self.import_params: dict[str, str] = {"strict": "1", "verbose": "1"}
        if project_id is not None:
            self.import_params["project_id"] = project_id
        # ip=0: the request comes from this server, whose address must not geolocate users.
        self.params: dict[str, str] = {"verbose": "1", "ip": "0"}
        self.urls = {endpoint: self.base + path for endpoint, path in PATHS.items()}

    @classmethod
    def from_settings(
        cls,
        settings: MixpanelSettings,
        *,
        compresslevel: int = 5,
        session: requests.Session | None = None,
    ) -> MixpanelTransport:
        """The transport for the configured host, timeouts, batch limits and credentials."""
        project_id = None
        if settings.has_service_account:
            auth = (
                t.cast(str, settings.service_account_username),
                t.cast(str, settings.service_account_secret),
            )
            project_id = settings.service_account_project_id
        else:
            # The legacy secret, or the project token, as basic-auth user with no password.
            auth = (settings.api_secret or settings.token or "", "")
        return cls(
            settings.api_host,
            timeout=(settings.connect_timeout, settings.read_timeout),
            import_auth=auth,
            project_id=project_id,
            secrets=settings.secrets,
            max_records=settings.batch_max_records,
            max_bytes=settings.batch_max_bytes,
            compresslevel=compresslevel,
            session=session,
        )

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        """Send ``bodies`` (JSON messages, text or UTF-8) to ``endpoint`` as one JSON array."""
        if bodies and isinstance(bodies[0], bytes):
            raw = b"[" + b",".join(t.cast("t.Sequence[bytes]", bodies)) + b"]"
        else:
            raw = ("[" + ",".join(t.cast("t.Sequence[str]", bodies)) + "]").encode()
        headers = {"Content-Type": "application/json"}
        if endpoint in GZIP_ENDPOINTS:
            raw = gzip.compress(raw, compresslevel=self.compresslevel)
            headers["Content-Encoding"] = "gzip"
        is_import = endpoint == "imports"
        try:
            response = self.session.post(
                self.urls[endpoint],
                params=self.import_params if is_import else self.params,
                data=raw,
                headers=headers,
                auth=self.import_auth if is_import else None,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            error = self._clean(f"{type(exc).__name__}: {exc}")
            return Outcome("retry", error, unreachable=True)
        return self._classify(response, len(bodies), is_import)

    def close(self) -> None:
        """Close the keep-alive connections."""
        self.session.close()

    def _classify(self, response: requests.Response, count: int, is_import: bool) -> Outcome:
        status = response.status_code
        try:
            answer = response.json()
        except ValueError:
            answer = None
        error = self._clean(_error_text(answer, response.text))
        if is_retryable(status):
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
