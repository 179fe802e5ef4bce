"""The one way a batch reaches Mixpanel's ingestion API, and how its answer is read.

Every delivery mode (``sync``, ``background``, ``celery``), :class:`PoliteBufferedConsumer` and
``pmixpanel import`` post through :class:`MixpanelTransport`. It knows what Mixpanel documents
and what its official clients do, and nothing else knows it:

* **Events go to** ``/import?strict=1``, whatever their age: Mixpanel recommends ``/import`` for
  server-side sending (reference/track-event, "When to use /track vs /import"), it takes events
  of any date after 1971 (``/track`` silently drops those older than five days, so a spooled
  event would be lost after an outage), and with ``strict=1`` it names every record it refuses
  instead of dropping it silently. It authenticates with the service account, else the legacy
  API secret, else the project token as basic-auth user with an empty password
  (reference/import-events, "Authentication").
* **Profiles and groups go to** ``/engage`` and ``/groups`` with ``strict=1`` (per-record errors
  instead of a silent ``200``; reference/profile-set, reference/group-set-property) as plain JSON:
  ``/engage`` does not support gzip (reference/profile-set) and no official client gzips
  ``/groups``. ``/track`` and ``/import`` bodies are gzip'd (reference/track-event).
* **Before posting, every record is prepared and checked**: event ``time`` becomes integer
  milliseconds (``/import`` wants a whole number of seconds or milliseconds), an event without
  ``ip`` gets ``"ip": "0"`` and a profile update without ``$ip`` gets ``"$ip": "0"`` (otherwise
  Mixpanel geolocates the record to this server; docs/tracking-best-practices/geolocation), an
  event without ``$insert_id`` gets one derived from its content (so a resend stays a
  duplicate), and a record that breaks a documented rule (:mod:`pyramid_mixpanel.rules`) is
  refused here with its reason instead of being posted.
* **A 413 splits the batch** in halves, down to single records; a single record still too large
  is refused with the reason (troubleshooting/errors/413-payload-too-large).

The answer becomes an :class:`~.base.Outcome`: every record arrived, some must be retried (429,
5xx, 408, no answer), or some were refused (with Mixpanel's message per record).
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass, field

import orjson
import requests
import urllib3

from .. import rules
from .._extras import optional
from ..log import redact
from . import deadline
from .base import Outcome, Prepared
from .policy import is_retryable, parse_retry_after

if t.TYPE_CHECKING:
    from ..settings import MixpanelSettings

#: The fast extra's gzip (see gzip_array), or None.
_igzip = optional("isal.igzip")
#: Each posting thread's buffer for the JSON array of a batch (see gzip_array).
_scratch = threading.local()

__all__ = ["ENDPOINTS", "GZIP_ENDPOINTS", "PATHS", "MixpanelTransport", "accepts_connections"]

#: The client library's endpoint names and where they are posted.
PATHS = {"events": "/import", "people": "/engage", "groups": "/groups", "imports": "/import"}
ENDPOINTS = tuple(PATHS)
#: Gzip is documented for /track and /import only.
GZIP_ENDPOINTS = frozenset({"events", "imports"})
EVENT_ENDPOINTS = frozenset({"events", "imports"})
#: Mixpanel's limits per ingestion request: 2000 records, 10 MB (decimal) of uncompressed JSON.
MAX_RECORDS = 2000
MAX_BYTES = 10_000_000
#: Records joined at a time into a batch's buffer (see gzip_array): about 50 kB of events.
GZIP_SLICE = 256
#: The largest buffer a posting thread keeps for its next batch (bytes).
KEEP_BUFFER = 1 << 20


@dataclass
class _Result:
    """What happened to the positions of one batch, gathered over its (split) posts."""

    dead: dict[int, str] = field(default_factory=dict)
    retry: list[int] = field(default_factory=list)
    first_failure: Outcome | None = None

    def outcome(self, count: int) -> Outcome:
        if not self.dead and not self.retry:
            return Outcome("sent")
        failure = self.first_failure or Outcome("dead")
        failed = frozenset(self.dead)
        reasons = {position: reason for position, reason in self.dead.items() if reason}
        if self.retry:
            pending = frozenset(self.retry)
            whole = len(pending) == count
            return Outcome(
                "retry",
                failure.error,
                failure.retry_after,
                failed=failed,
                reasons=reasons,
                unreachable=failure.unreachable,
                no_connection=failure.no_connection,
                pending=frozenset() if whole else pending,
            )
        whole = len(failed) == count
        return Outcome(
            "dead", failure.error, failed=frozenset() if whole else failed, reasons=reasons
        )


class MixpanelTransport:
    """Posts batches to Mixpanel's ingestion API (the ``mixpanel`` lane).

    :param api_host: base URL, e.g. ``https://api-eu.mixpanel.com``.
    :param timeout: ``(connect, read)`` seconds for every post.
    :param import_auth: basic-auth ``(user, password)`` for ``/import``: a service account, the
        legacy API secret, or the project token as user with an empty password. Without it, the
        ``token`` each event carries (the official client puts it there) is used the same way;
        an event without one is refused (``/import`` would answer 401).
    :param project_id: the service account's project, sent to ``/import``.
    :param secrets: scrubbed from every error text.
    :param prepared: the bodies are already in Mixpanel's form (``pmixpanel import`` prepares
        and checks its rows itself): post them as they are.
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
        prepared: bool = False,
        session: requests.Session | None = None,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        self.base = api_host if "://" in api_host else f"https://{api_host}"
        self.timeout = timeout
        self.import_auth = import_auth
        self.secrets = tuple(secrets)
        self.max_records = max(1, min(max_records, MAX_RECORDS))
        self.max_bytes = max(1, min(max_bytes, MAX_BYTES))
        self.compresslevel = compresslevel
        self.prepared = prepared
        self.session = session or deadline.session()
        # requests bounds each socket operation; this bounds the whole exchange (a trickling
        # answer would otherwise hold the sender for as long as the server likes).
        self.total_timeout = timeout[0] + timeout[1]
        self.clock = clock
        strict = {"strict": "1"}
        self.params: dict[str, dict[str, str]] = {
            "events": dict(strict),
            "imports": dict(strict),
            "people": {**strict, "verbose": "1"},
            "groups": {**strict, "verbose": "1"},
        }
        if project_id is not None:
            self.params["events"]["project_id"] = project_id
            self.params["imports"]["project_id"] = project_id
        self.urls = {endpoint: self.base + path for endpoint, path in PATHS.items()}

    @classmethod
    def from_settings(
        cls,
        settings: MixpanelSettings,
        *,
        compresslevel: int = 5,
        prepared: bool = False,
        session: requests.Session | None = None,
    ) -> MixpanelTransport:
        """The transport for the configured host, timeouts, batch limits and credentials."""
        project_id = None
        auth: tuple[str, str] | None
        if settings.has_service_account:
            auth = (
                t.cast(str, settings.service_account_username),
                t.cast(str, settings.service_account_secret),
            )
            project_id = settings.service_account_project_id
        elif settings.api_secret or settings.token:
            # The legacy secret, or the project token, as basic-auth user with no password.
            auth = (t.cast(str, settings.api_secret or settings.token), "")
        else:
            auth = None
        return cls(
            settings.api_host,
            timeout=(settings.connect_timeout, settings.read_timeout),
            import_auth=auth,
            project_id=project_id,
            secrets=settings.secrets,
            max_records=settings.batch_max_records,
            max_bytes=settings.batch_max_bytes,
            compresslevel=compresslevel,
            prepared=prepared,
            session=session,
        )

    # -- posting ----------------------------------------------------------------------------

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        """Send ``bodies`` (JSON messages, text or UTF-8) to ``endpoint`` as one batch."""
        result = _Result()
        # Records to post, grouped by the basic-auth credentials of their post (events only):
        # their positions in the batch and their bodies.
        groups: dict[tuple[str, str] | None, tuple[list[int], list[bytes]]] = {}
        now_ms = int(self.clock() * 1000)
        auth = self.import_auth if endpoint in EVENT_ENDPOINTS else None
        if auth is not None and list(map(type, bodies)).count(Prepared) == len(bodies):
            # The busy path: events MixpanelTrack built in their final form, posted as they
            # are (joined as text and encoded once: no object per record).
            self._send(endpoint, range(len(bodies)), bodies, auth, result)
            return result.outcome(len(bodies))
        for position, body in enumerate(t.cast("t.Sequence[str | bytes]", bodies)):
            raw = body.encode() if isinstance(body, str) else body
            token = None
            if self.prepared:
                prepared: bytes | None = raw
            else:
                prepared, reason, token = self._prepare(endpoint, raw, now_ms)
            key = auth
            if prepared is not None and endpoint in EVENT_ENDPOINTS and auth is None:
                if token is None:
                    # /import needs credentials, and /track would drop old events silently:
                    # refused, with a reason an operator can act on, never counted as sent.
                    prepared, reason = None, "no credentials for /import (no token, no account)"
                key = (token or "", "")
            if prepared is None:
                result.dead[position] = f"refused before sending: {reason}"
            else:
                positions, group = groups.setdefault(key, ([], []))
                positions.append(position)
                group.append(prepared)
        for group_auth, (positions, group) in groups.items():
            if result.retry:
                # Mixpanel cannot take more now: the other groups wait with the first's retry.
                result.retry.extend(positions)
            else:
                self._send(endpoint, positions, group, group_auth, result)
        if result.dead and result.first_failure is None:
            result.first_failure = Outcome("dead", next(iter(result.dead.values())))
        return result.outcome(len(bodies))

    def _send(
        self,
        endpoint: str,
        positions: t.Sequence[int],
        bodies: t.Sequence[str] | t.Sequence[bytes],
        auth: tuple[str, str] | None,
        result: _Result,
    ) -> None:
        """Post ``bodies``, the records at ``positions`` of the batch.

        On a 413, each half is posted on its own (down to single records).
        """
        outcome, too_large = self._post_once(endpoint, bodies, auth)
        if too_large:
            if len(bodies) == 1:
                result.dead[positions[0]] = f"too large for Mixpanel even alone: {outcome.error}"
                result.first_failure = result.first_failure or outcome
                return
            half = len(bodies) // 2
            self._send(endpoint, positions[:half], bodies[:half], auth, result)
            if result.retry:
                # Mixpanel cannot take more now: the second half waits with the first's retry.
                result.retry.extend(positions[half:])
                return
            self._send(endpoint, positions[half:], bodies[half:], auth, result)
            return
        _, retry, dead = outcome.partition(len(bodies))
        if retry or dead:
            result.first_failure = result.first_failure or outcome
        result.retry.extend(positions[index] for index in retry)
        for index in dead:
            result.dead[positions[index]] = outcome.reasons.get(index, outcome.error)

    def _post_once(
        self,
        endpoint: str,
        bodies: t.Sequence[str] | t.Sequence[bytes],
        auth: tuple[str, str] | None,
    ) -> tuple[Outcome, bool]:
        """One HTTP request; the outcome and whether Mixpanel found it too large (413)."""
        headers = {"Content-Type": "application/json"}
        if endpoint in GZIP_ENDPOINTS:
            raw = gzip_array(bodies, self.compresslevel)
            headers["Content-Encoding"] = "gzip"
        else:
            raw = b"[" + _joined(bodies) + b"]"
        with deadline.deadline(self.total_timeout) as limit:
            try:
                response = self.session.post(
                    self.urls[endpoint],
                    params=self.params[endpoint],
                    data=raw,
                    headers=headers,
                    auth=auth,
                    timeout=self.timeout,
                )
            except requests.RequestException as exc:
                if limit.expired:
                    error = f"no whole answer within {self.total_timeout:g}s"
                else:
                    error = self._clean(f"{type(exc).__name__}: {exc}")
                no_connection = not limit.expired and _no_connection(exc)
                return Outcome("retry", error, unreachable=True, no_connection=no_connection), False
        return self._classify(response, len(bodies)), response.status_code == 413

    def reachable(self) -> bool:
        """Whether the host takes connections again (the engine's probe during an outage)."""
        return accepts_connections(self.base, self.timeout[0])

    def close(self) -> None:
        """Close the keep-alive connections."""
        self.session.close()

    # -- preparing records ------------------------------------------------------------------

    def _prepare(
        self, endpoint: str, raw: bytes, now_ms: int
    ) -> tuple[bytes | None, str, str | None]:
        """The record as Mixpanel gets it (or ``None`` and why not), and an event's token."""
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, "the message is not JSON", None
        if not isinstance(record, dict):
            return None, "a message must be a JSON object", None
        if endpoint in EVENT_ENDPOINTS:
            return self._prepare_event(record, now_ms)
        if endpoint == "people":
            distinct_id = record.get("$distinct_id")
            if not isinstance(distinct_id, str) or rules.blocked_id(distinct_id):
                reason = f"$distinct_id {distinct_id!r} is missing or a value Mixpanel refuses"
                return None, reason, None
            # Without $ip, Engage geolocates the profile to this server.
            record.setdefault("$ip", "0")
        return orjson.dumps(record), "", None

    def _prepare_event(
        self, event: dict[str, t.Any], now_ms: int
    ) -> tuple[bytes | None, str, str | None]:
        properties = event.get("properties")
        if not isinstance(properties, dict):
            return None, "properties is missing or not an object", None
        token = properties.get("token")
        token = token if isinstance(token, str) and token else None
        when = rules.time_ms(properties.get("time"))
        if when is None:
            return None, "properties.time is missing or not epoch seconds or milliseconds", token
        properties["time"] = when
        # Without ip, /import geolocates the event to this server, not to the user.
        properties.setdefault("ip", "0")
        if "$insert_id" not in properties:
            # Derived from the content, so sending the same message again stays a duplicate.
            digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS))
            properties["$insert_id"] = digest.hexdigest()[:32]
        problem = rules.event_problem(event, now_ms)
        if problem is not None:
            return None, problem[1], token
        body = orjson.dumps(event)
        if len(body) >= rules.MAX_EVENT_BYTES:
            size = f"{len(body):,}"
            return None, f"the event is {size} bytes (Mixpanel takes less than 1 MB)", token
        return body, "", token

    # -- reading answers --------------------------------------------------------------------

    def _classify(self, response: requests.Response, count: int) -> Outcome:
        status = response.status_code
        try:
            answer = response.json()
        except ValueError:
            answer = None
        error = self._clean(_error_text(answer, response.text))
        if is_retryable(status):
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return Outcome("retry", f"HTTP {status}: {error}", retry_after)
        if status == 200 and answer is None and response.text.strip() not in ("1", "0"):
            # Mixpanel answers JSON (or 1/0). Anything else comes from something in between
            # (a proxy's error page, a captive portal): the records did not reach Mixpanel.
            return Outcome("retry", f"HTTP 200 with an answer that is not Mixpanel's: {error}")
        refused = _failed_records(answer, count)
        reasons = {index: self._clean(message) for index, message in refused.items() if message}
        if status == 200 and not refused and _accepted(answer):
            return Outcome("sent")
        if refused and len(refused) < count:
            return Outcome(
                "dead", f"HTTP {status}: {error}", failed=frozenset(refused), reasons=reasons
            )
        return Outcome("dead", f"HTTP {status}: {error}", reasons=reasons)

    def _clean(self, text: str) -> str:
        return redact(text[:500], self.secrets)


def gzip_array(bodies: t.Sequence[str] | t.Sequence[bytes], level: int) -> bytes:
    """The JSON array of ``bodies`` (JSON texts, str or UTF-8), gzip'd.

    The array is written ``GZIP_SLICE`` records at a time into a buffer the calling thread
    keeps (up to ``KEEP_BUFFER`` bytes), then compressed in one go: a fresh allocation of a
    batch's size (400 kB for 2000 events) at every post costs more in page faults than its
    compression.

    With ISA-L when the ``fast`` extra installed it, else with zlib: ISA-L compresses a batch of
    events about five times faster than zlib, a little smaller, into the same gzip format; its
    levels are 0 to 3, zlib's 0 to 9 (mapped: 1-3 to 1, 4-6 to 2, 7-9 to 3). Without it, zlib
    at ``level`` (``mtime=0``: no clock read per batch).
    """
    buffer: bytearray = getattr(_scratch, "buffer", None) or bytearray(1 << 16)
    end = 0
    for start in range(0, len(bodies), GZIP_SLICE):
        piece = _joined(bodies[start : start + GZIP_SLICE])
        if end + len(piece) + 2 > len(buffer):  # room for the piece, a comma and "]"
            grown = bytearray(max(2 * len(buffer), end + len(piece) + 2))
            grown[:end] = memoryview(buffer)[:end]
            buffer = grown
        buffer[end] = 0x2C if start else 0x5B  # "," between pieces, "[" before the first
        buffer[end + 1 : end + 1 + len(piece)] = piece  # as long as what it replaces: a copy
        end += 1 + len(piece)
    if not bodies:
        buffer[0], end = 0x5B, 1
    buffer[end] = 0x5D  # "]"
    with memoryview(buffer) as whole, whole[: end + 1] as array:
        if _igzip is not None:
            packed = t.cast(bytes, _igzip.compress(array, min(3, (level + 2) // 3)))
        else:
            packed = gzip.compress(array, compresslevel=level, mtime=0)
    # Kept for this thread's next batch unless a batch of unusual size grew it too far.
    _scratch.buffer = buffer if len(buffer) <= KEEP_BUFFER else None
    return packed


def _joined(bodies: t.Sequence[str] | t.Sequence[bytes]) -> bytes:
    """``bodies`` joined by commas, as UTF-8 (text is joined first, then encoded once)."""
    if bodies and isinstance(bodies[0], str):
        return ",".join(t.cast("t.Sequence[str]", bodies)).encode()
    return b",".join(t.cast("t.Sequence[bytes]", bodies))


def _no_connection(exc: requests.RequestException) -> bool:
    """Whether not even a connection could be opened (refused, no route, name, connect timeout).

    A read timeout or a connection dropped mid-answer means the host accepted one: checking
    whether it accepts connections would then say nothing about whether it answers.
    """
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def accepts_connections(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the host of ``url`` can be opened within ``timeout``.

    Cheaper and politer than a post: nothing is sent. Behind a proxy the host may stay
    unreachable directly; the engine then waits out its backoff as it would without a probe.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _accepted(answer: object) -> bool:
    """A 200 answer that says the records were taken (``1``, ``status: 1`` or ``"OK"``)."""
    if isinstance(answer, dict):
        return answer.get("status") in (1, "1", "OK")
    return answer in (1, "1")


def _error_text(answer: object, text: str) -> str:
    if isinstance(answer, dict):
        for key in ("error", "message"):
            if answer.get(key):
                return str(answer[key])
    if answer in (0, "0"):
        return "no record was valid (answer 0)"
    return text.strip() or "no error text"


def _failed_records(answer: object, count: int) -> dict[int, str]:
    """``{index: "field: message"}`` of the records a strict answer lists as refused."""
    if not isinstance(answer, dict):
        return {}
    found: dict[int, str] = {}
    for record in answer.get("failed_records") or ():
        index = record.get("index") if isinstance(record, dict) else record
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < count:
            message = record.get("message") if isinstance(record, dict) else None
            found[index] = message if isinstance(message, str) else ""
    return found
