"""Loopback stand-ins for Mixpanel's ingestion API and Customer.io's track API.

Real HTTP servers on 127.0.0.1 (free ports, daemon threads), not mocks, so delivery is tested
through sockets, timeouts and status codes as it meets them in production.

:class:`MixpanelStandIn` enforces Mixpanel's documented ingestion rules, each commented with the
doc page it comes from (docs.mixpanel.com, mirrored in the public mixpanel/docs repository), so
that a client mistake the real service would refuse fails here too: no gzip on ``/engage`` and
``/groups``; ``/import`` needs credentials and, with ``strict=1``, refuses invalid events one by
one (``failed_records``) and ingests the rest; ``/track`` answers ``1`` while silently dropping
invalid events and events older than five days (see :attr:`MixpanelStandIn.dropped`);
``/engage`` / ``/groups`` with ``strict=1`` name their refused records; 413 over the request
size; at most 2000 records; events deduplicated on (event, time, distinct_id, ``$insert_id``);
identity clusters merged as the project's ID merge API documents (``identity_model``).
It can be put in a mode at any time: ``up``, ``down`` (connections refused), ``slow`` (answers
after ``delay`` seconds), ``hang`` (accepts, never answers), ``error500``, ``rate_limited``
(429, with ``Retry-After`` only when ``retry_after`` is set), ``bad_request`` (400),
``trickle`` (a 200 whose body comes a byte every 0.1 s) or ``html200`` (a 200 that is an HTML
page, as from a proxy).
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import sys
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .identity_model import IdentityModel

ENDPOINTS = {"/track": "events", "/engage": "people", "/groups": "groups", "/import": "imports"}
MODES = (
    "up",
    "down",
    "slow",
    "hang",
    "error500",
    "rate_limited",
    "bad_request",
    "trickle",
    "html200",
)


@dataclass
class Seen:
    """One request as the stand-in received it."""

    path: str
    query: dict[str, str]
    auth: tuple[str, str] | None
    headers: dict[str, str]
    records: list[dict[str, t.Any]] = field(default_factory=list)
    status: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: MixpanelStandIn | CustomerIOStandIn

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        # A client that timed out and left (the point of slow/hang modes) is not an error.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Base:
    """Start/stop on a fixed port (so ``down`` then ``up`` keeps the URL) and hang control."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()  # set to free hung handlers
        self.port = free_port()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None:
            return
        self.release.clear()
        server = _Server(("127.0.0.1", self.port), self.handler)
        server.owner = self  # type: ignore[assignment]  # both stand-ins share the server class
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and free any hung handler."""
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: Values Mixpanel refuses as distinct_id and $insert_id (reference/import-events).
BLOCKED_IDS = frozenset(
    {"00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a",
     "na", "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}"}
)  # fmt: skip
#: Profile operations of /engage (reference/profile-set and its siblings) and of /groups
#: (reference/group-set-property and siblings): a record carries exactly one.
PROFILE_OPERATIONS = frozenset(
    {"$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete"}
)
GROUP_OPERATIONS = frozenset({"$set", "$set_once", "$unset", "$remove", "$union", "$delete"})
FIVE_DAYS_MS = 5 * 24 * 3600 * 1000


class MixpanelStandIn(_Base):
    """A Mixpanel ingestion API on loopback that enforces Mixpanel's documented rules.

    :param tokens: project tokens (and legacy API secrets) ``/import`` accepts as basic-auth user
        with an empty password (any when empty).
    :param accounts: ``{user: secret}`` of service accounts / API secrets (any when empty).
    :param max_request_bytes: uncompressed bytes per request before a 413.
    :param clock: "now", in seconds (the 5-day window of /track, the 1-hour future of /import).
    :param id_merge: the project's ID merge API (``simplified``, ``original``, ``legacy``):
        :attr:`identity` applies its documented merge rules to every accepted event.
    """

    def __init__(
        self,
        tokens: t.Iterable[str] = (),
        accounts: t.Mapping[str, str] | None = None,
        max_request_bytes: int = 10_000_000,
        clock: t.Callable[[], float] = time.time,
        id_merge: str = "simplified",
    ) -> None:
        self.mode = "up"
        #: Mixpanel's identity clusters, as the accepted events built them.
        self.identity = IdentityModel(id_merge)
        self.delay = 2.0
        # 429 comes without Retry-After: Mixpanel does not document one (reference/rate-limits).
        self.retry_after: str | None = None
        self.tokens = set(tokens)
        self.accounts = dict(accounts or {})
        self.max_request_bytes = max_request_bytes
        self.clock = clock
        self.requests: list[Seen] = []
        #: Every accepted record, per endpoint, in arrival order (duplicates included).
        self.received: dict[str, list[dict[str, t.Any]]] = {e: [] for e in ENDPOINTS.values()}
        #: Records refused with an answer that says so (strict validation), with the message.
        self.refused: list[tuple[str, dict[str, t.Any], str]] = []
        #: Records dropped silently, as Mixpanel does without strict validation.
        self.dropped: list[tuple[str, object, str]] = []
        self._event_keys: set[tuple[object, ...]] = set()
        #: Events after deduplication, as Mixpanel would store them.
        self.unique_events: list[dict[str, t.Any]] = []
        self.handler = _MixpanelHandler
        super().__init__()

    def set_mode(self, mode: str, **options: t.Any) -> None:
        """Switch behaviour: ``down`` stops listening, anything else listens."""
        assert mode in MODES, mode
        for key, value in options.items():
            setattr(self, key, value)
        if mode == "down":
            self.mode = mode
            self.stop()
            return
        if self.mode in ("hang", "trickle") and mode != self.mode:
            self.release.set()  # free the handlers held back
        elif mode in ("hang", "trickle"):
            self.release.clear()
        self.mode = mode
        self.start()

    def events(self) -> list[dict[str, t.Any]]:
        """Unique imported (and tracked) events."""
        with self.lock:
            return list(self.unique_events)

    def profiles(self) -> list[dict[str, t.Any]]:
        """Accepted profile updates."""
        with self.lock:
            return list(self.received["people"])

    def accept(self, endpoint: str, records: list[dict[str, t.Any]]) -> None:
        with self.lock:
            self.received[endpoint].extend(records)
            if endpoint in ("events", "imports"):
                for record in records:
                    properties = record["properties"]
                    # Duplicates are (event, time, distinct_id, $insert_id)
                    # (reference/import-events, "$insert_id").
                    key = (
                        record["event"],
                        _time_ms(properties.get("time")),
                        properties.get("distinct_id"),
                        properties.get("$insert_id"),
                    )
                    if key[3] is None or key not in self._event_keys:
                        self._event_keys.add(key)
                        self.unique_events.append(record)
                        self.identity.observe(record)

    def person_of(self, record: dict[str, t.Any]) -> str:
        """Who Mixpanel attributes an accepted event or profile update to, merges applied."""
        with self.lock:
            if "properties" in record:
                distinct_id = self.identity.distinct_id(record)
            else:
                distinct_id = record.get("$distinct_id")
            return self.identity.person(str(distinct_id))

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, t.Any]]:
        """Wait until ``count`` unique events arrived; return them."""
        return wait_until(lambda: len(self.events()) >= count, timeout, self.events)

    def wait_for_profiles(self, count: int, timeout: float = 10.0) -> list[dict[str, t.Any]]:
        """Wait until ``count`` profile updates arrived; return them."""
        return wait_until(lambda: len(self.profiles()) >= count, timeout, self.profiles)

    # -- the documented rules -----------------------------------------------------------------

    def event_problem(self, record: object, endpoint: str) -> tuple[str, str] | None:
        """``(field, message)`` for the first rule an event breaks (reference/import-events,
        "High-level requirements"), or ``None``."""
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            return "event", "'event' is missing or not a string"
        if not record["event"]:
            return "event", "'event' is empty"
        properties = record.get("properties")
        if not isinstance(properties, dict):
            return "properties", "'properties' is missing or not an object"
        when = properties.get("time")
        ms = _time_ms(when)
        if endpoint == "imports":
            # /import: "time ... in seconds or milliseconds since epoch", an integer (OpenAPI).
            if ms is None or not isinstance(when, int):
                return (
                    "properties.time",
                    "'properties.time' is invalid: must be specified as seconds since epoch",
                )
            if ms < 31_536_000_000:  # "time values that are before 1971-01-01"
                return "properties.time", "'properties.time' is before 1971-01-01"
            if ms > self.clock() * 1000 + 3_600_000:  # "... or more than 1 hour in the future"
                return "properties.time", "'properties.time' is more than 1 hour in the future"
        distinct_id = properties.get("distinct_id")
        if not isinstance(distinct_id, str):
            return "properties.distinct_id", "'properties.distinct_id' is required"
        if distinct_id.strip().lower() in BLOCKED_IDS:
            return "properties.distinct_id", f"'{distinct_id}' is not a valid distinct_id"
        insert_id = properties.get("$insert_id")
        if endpoint == "imports" or insert_id is not None:
            # "$insert_ids must be <= 36 bytes and contain only alphanumeric characters or -"
            if not (
                isinstance(insert_id, str)
                and 0 < len(insert_id.encode()) <= 36
                and all(c.isascii() and (c.isalnum() or c == "-") for c in insert_id)
            ):
                return "properties.$insert_id", "'$insert_id' is invalid"
            if insert_id.lower() in BLOCKED_IDS:
                return "properties.$insert_id", "'$insert_id' is a disallowed value"
        if len(properties) >= 255:  # "fewer than 255 properties"
            return "properties", "too many properties"
        for key, value in properties.items():
            problem = _nesting(value, 1)
            if problem:
                return f"properties.{key}", problem
        if len(json.dumps(record).encode()) >= 1_000_000:  # "smaller than 1MB"
            return "event", "the event is 1MB or more"
        return None

    def profile_problem(self, record: object, endpoint: str) -> str | None:
        """What is wrong with a profile (/engage) or group (/groups) update, or ``None``."""
        if not isinstance(record, dict):
            return "an update must be an object"
        if not isinstance(record.get("$token"), str):
            return "'$token' is required"
        if endpoint == "people":
            distinct_id = record.get("$distinct_id")
            if not isinstance(distinct_id, str) or distinct_id.strip().lower() in BLOCKED_IDS:
                return "'$distinct_id' is missing or invalid"
            operations = PROFILE_OPERATIONS
        else:
            if not isinstance(record.get("$group_key"), str) or "$group_id" not in record:
                return "'$group_key' and '$group_id' are required"
            operations = GROUP_OPERATIONS
        found = [key for key in record if key in operations]
        if len(found) != 1:
            return f"exactly one operation of {sorted(operations)} is required, got {found}"
        return None


def _time_ms(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(value) if abs(value) >= 10**11 else round(value * 1000)


def _nesting(value: object, depth: int) -> str | None:
    # "nested object properties must have fewer than 255 keys and max nesting depth is 3",
    # "array properties must have fewer than 255 elements" (reference/import-events).
    if isinstance(value, (dict, list)):
        if depth > 3:
            return "nested deeper than 3 levels"
        if len(value) >= 255:
            return "an object or a list of 255 items or more"
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            problem = _nesting(item, depth + 1)
            if problem:
                return problem
    return None


class _MixpanelHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        owner = t.cast(MixpanelStandIn, self.server.owner)
        url = urllib.parse.urlsplit(self.path)
        seen = Seen(
            path=url.path,
            query=dict(urllib.parse.parse_qsl(url.query)),
            auth=_basic_auth(self.headers.get("Authorization")),
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with owner.lock:
            owner.requests.append(seen)
        mode = owner.mode
        if mode == "hang":
            owner.release.wait(60)
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(owner.delay)  # the stand-in's own slowness, not a test waiting
        endpoint = ENDPOINTS.get(url.path)
        if endpoint is None:
            return self._answer(seen, 404, {"status": 0, "error": "unknown endpoint"})
        if mode == "error500":
            return self._answer(seen, 500, {"status": 0, "error": "Internal Server Error"})
        if mode == "rate_limited":
            headers = {"Retry-After": owner.retry_after} if owner.retry_after else {}
            body = {"code": 429, "error": "Project exceeded rate limits.", "status": 0}
            return self._answer(seen, 429, body, headers)
        if mode == "trickle":
            # Headers at once, then the body a byte at a time: no single read ever times out.
            seen.status = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                if owner.release.wait(0.1):
                    break
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:  # the client gave up: what the mode is for
                    break
            self.close_connection = True
            return
        if mode == "html200":
            # What a proxy or a captive portal answers in Mixpanel's place.
            seen.status = 200
            payload = b"<html><body>Service temporarily unavailable</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if mode == "bad_request":
            return self._answer(seen, 400, {"status": 0, "error": "bad request: invalid data"})
        gzipped = self.headers.get("Content-Encoding") == "gzip"
        if gzipped and endpoint in ("people", "groups"):
            # "This API does not support gzip encoding." (reference/profile-set); no official
            # client gzips /groups either.
            return self._answer(seen, 400, {"status": 0, "error": "gzip is not supported"})
        if gzipped:
            raw = gzip.decompress(raw)  # "Gzip allowed" on /track and /import
        if len(raw) > owner.max_request_bytes:
            # 10 MB of uncompressed JSON per request (reference/import-events); above it, 413
            # (troubleshooting/errors/413-payload-too-large; StrictTooLarge in the OpenAPI).
            limit = owner.max_request_bytes
            body = {
                "code": 413,
                "error": f"request exceeds max limit of {limit} bytes",
                "status": "Request Entity Too Large",
            }
            return self._answer(seen, 413, body)
        try:
            records = self._records(raw, seen)
        except ValueError as exc:
            return self._answer(seen, 400, {"status": 0, "error": f"invalid payload: {exc}"})
        if len(records) > 2000:  # "up to 2000 events ... per request"
            return self._answer(seen, 400, {"status": 0, "error": "more than 2000 records"})
        seen.records = records
        if endpoint == "imports":
            return self._import(owner, seen, records)
        if endpoint == "events":
            return self._track(owner, seen, records)
        return self._engage(owner, seen, endpoint, records)

    def _import(self, owner: MixpanelStandIn, seen: Seen, records: list[t.Any]) -> None:
        # Service account (with project_id), legacy secret, or the project token as user with an
        # empty password (reference/import-events, "Authentication"); else 401.
        if not self._authorised(owner, seen):
            body = {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
            return self._answer(seen, 401, body)
        failed: list[dict[str, t.Any]] = []
        good = []
        for index, record in enumerate(records):
            problem = owner.event_problem(record, "imports")
            if problem is None:
                good.append(record)
                continue
            field, message = problem
            insert_id = (
                record.get("properties", {}).get("$insert_id")
                if isinstance(record, dict) and isinstance(record.get("properties"), dict)
                else None
            )
            failed.append(
                {"index": index, "insert_id": insert_id, "field": field, "message": message}
            )
            owner.refused.append(("imports", record, message))
        owner.accept("imports", good)
        if failed and seen.query.get("strict") == "1":
            # "If some events pass validation and others fail, Mixpanel will ingest the events
            # that pass validation" and answers 400 with failed_records (StrictInvalid).
            body = {
                "code": 400,
                "error": "some data points in the request failed validation",
                "num_records_imported": len(good),
                "status": "Bad Request",
                "failed_records": failed,
            }
            return self._answer(seen, 400, body)
        for item in failed:  # without strict=1 the invalid ones vanish
            owner.dropped.append(("imports", records[item["index"]], item["message"]))
        return self._answer(
            seen, 200, {"code": 200, "num_records_imported": len(good), "status": "OK"}
        )

    def _track(self, owner: MixpanelStandIn, seen: Seen, records: list[t.Any]) -> None:
        # /track keeps only the last 5 days and drops invalid objects silently; it answers 1
        # when at least one object is valid, 0 when none is, and this does not prove the token
        # is valid (reference/track-event; the "Received" answer of the OpenAPI).
        good = []
        for record in records:
            problem = owner.event_problem(record, "events")
            if problem is None:
                ms = _time_ms(record["properties"].get("time"))
                if ms is not None and ms < owner.clock() * 1000 - FIVE_DAYS_MS:
                    problem = ("properties.time", "older than 5 days")
            if problem is None:
                good.append(record)
            else:
                owner.dropped.append(("events", record, problem[1]))
        owner.accept("events", good)
        status = 1 if good else 0
        if seen.query.get("verbose") == "1":
            error = None if good else "no valid data"
            return self._answer(seen, 200, {"status": status, "error": error})
        return self._answer(seen, 200, status)

    def _engage(
        self, owner: MixpanelStandIn, seen: Seen, endpoint: str, records: list[t.Any]
    ) -> None:
        # /engage and /groups answer 200 even when records are invalid; strict=1 makes them
        # validate and return per-record errors (reference/profile-set, group-set-property).
        # The shape of that answer is not documented: the stand-in uses /import's
        # (StrictInvalid), which the client reads the same way.
        failed: list[dict[str, t.Any]] = []
        good = []
        for index, record in enumerate(records):
            problem = owner.profile_problem(record, endpoint)
            if problem is None:
                good.append(record)
            else:
                failed.append({"index": index, "message": problem})
                owner.refused.append((endpoint, record, problem))
        owner.accept(endpoint, good)
        if failed and seen.query.get("strict") == "1":
            body = {
                "status": 0,
                "error": "some records failed validation",
                "failed_records": failed,
            }
            return self._answer(seen, 400, body)
        for item in failed:
            owner.dropped.append((endpoint, records[item["index"]], item["message"]))
        status = 1 if good else 0
        if seen.query.get("verbose") == "1":
            return self._answer(seen, 200, {"status": status, "error": None if good else "invalid"})
        return self._answer(seen, 200, status)

    def _authorised(self, owner: MixpanelStandIn, seen: Seen) -> bool:
        if seen.auth is None or not seen.auth[0]:
            return False
        user, secret = seen.auth
        if not secret:  # the project token
            return not owner.tokens or user in owner.tokens
        if "project_id" in seen.query or not owner.accounts:
            return not owner.accounts or owner.accounts.get(user) == secret
        return owner.accounts.get(user) == secret

    def _records(self, raw: bytes, seen: Seen) -> list[t.Any]:
        if self.headers.get("Content-Type", "").startswith("application/json"):
            text = raw.decode()
        else:
            # What mixpanel-python's Consumer sends: a form with the JSON in ``data`` and the
            # other parameters (``verbose=1``, ``ip=0``) beside it, read as the query's are
            # (the official client relies on the verbose answer).
            form = urllib.parse.parse_qs(raw.decode())
            text = form["data"][0]
            for key, values in form.items():
                if key != "data":
                    seen.query.setdefault(key, values[0])
        data = json.loads(text)
        return data if isinstance(data, list) else [data]

    def _answer(
        self, seen: Seen, status: int, body: object, headers: dict[str, str] | None = None
    ) -> None:
        seen.status = status
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


class CustomerIOStandIn(_Base):
    """Customer.io's track API v1 on loopback: identify (PUT) and events (POST)."""

    def __init__(self) -> None:
        self.mode = "up"
        self.requests: list[tuple[str, str, tuple[str, str] | None, dict[str, t.Any]]] = []
        self.handler = _CustomerIOHandler
        super().__init__()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[t.Any]:
        """Wait until ``count`` calls arrived; return them."""
        return wait_until(lambda: len(self.requests) >= count, timeout, lambda: self.requests)


class _CustomerIOHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        owner = t.cast(CustomerIOStandIn, self.server.owner)
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if owner.mode == "hang":
            owner.release.wait(60)
            self.close_connection = True
            return
        with owner.lock:
            owner.requests.append(
                (
                    self.command,
                    urllib.parse.unquote(self.path),
                    _basic_auth(self.headers.get("Authorization")),
                    json.loads(raw or b"{}"),
                )
            )
        status = {"error500": 500, "bad_request": 400}.get(owner.mode, 200)
        payload = b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


R = t.TypeVar("R")


def wait_until(predicate: t.Callable[[], bool], timeout: float, result: t.Callable[[], R]) -> R:
    """Poll ``predicate`` until true (or fail after ``timeout``); return ``result()``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {result()!r}"[:2000])
        time.sleep(0.02)
    return result()


class SilentServer:
    """A TCP server on loopback that accepts connections and never answers (a hung broker)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections.append(connection)

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self.sock.close()
        for connection in self.connections:
            connection.close()

    def __enter__(self) -> t.Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
