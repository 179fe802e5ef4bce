"""Loopback stand-ins for Mixpanel's ingestion API and Customer.io's track API.

Real HTTP servers on 127.0.0.1 (free ports, daemon threads), not mocks, so delivery is tested
through sockets, timeouts and status codes as it meets them in production.

:class:`MixpanelStandIn` accepts ``/track``, ``/engage``, ``/groups`` and ``/import`` batches
as a JSON body (optionally gzip'd) or as the form field ``data`` (what mixpanel-python's
``Consumer`` sends), deduplicates events on ``$insert_id``, answers verbosely, and can be put in
a mode at any time: ``up``, ``down`` (connections refused), ``slow`` (answers after
``delay`` seconds), ``hang`` (accepts, never answers), ``error500``, ``rate_limited`` (429 with
``Retry-After``) or ``bad_request`` (400). A strict ``/import`` refuses records without
``event`` or ``properties.time`` individually, listing them in ``failed_records``.
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

ENDPOINTS = {"/track": "events", "/engage": "people", "/groups": "groups", "/import": "imports"}
MODES = ("up", "down", "slow", "hang", "error500", "rate_limited", "bad_request")


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


class MixpanelStandIn(_Base):
    """A Mixpanel ingestion API on loopback; see the module docstring."""

    def __init__(self) -> None:
        self.mode = "up"
        self.delay = 2.0
        self.retry_after = "1"
        self.requests: list[Seen] = []
        #: Every accepted record, per endpoint, in arrival order (duplicates included).
        self.received: dict[str, list[dict[str, t.Any]]] = {e: [] for e in ENDPOINTS.values()}
        self._insert_ids: set[str] = set()
        #: Events after ``$insert_id`` deduplication, as Mixpanel would store them.
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
        if self.mode == "hang" and mode != "hang":
            self.release.set()
        self.mode = mode
        self.start()

    def events(self) -> list[dict[str, t.Any]]:
        """Unique tracked and imported events."""
        with self.lock:
            return list(self.unique_events)

    def accept(self, endpoint: str, records: list[dict[str, t.Any]]) -> None:
        with self.lock:
            self.received[endpoint].extend(records)
            if endpoint in ("events", "imports"):
                for record in records:
                    insert_id = record.get("properties", {}).get("$insert_id")
                    if insert_id is None or insert_id not in self._insert_ids:
                        if insert_id is not None:
                            self._insert_ids.add(insert_id)
                        self.unique_events.append(record)

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, t.Any]]:
        """Wait until ``count`` unique events arrived; return them."""
        return wait_until(lambda: len(self.events()) >= count, timeout, self.events)


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
            time.sleep(owner.delay)
        endpoint = ENDPOINTS.get(url.path)
        if endpoint is None:
            return self._answer(seen, 404, {"status": 0, "error": "unknown endpoint"})
        if mode == "error500":
            return self._answer(seen, 500, {"status": 0, "error": "Internal Server Error"})
        if mode == "rate_limited":
            return self._answer(
                seen,
                429,
                {"status": 0, "error": "rate limited"},
                {"Retry-After": owner.retry_after},
            )
        if mode == "bad_request":
            return self._answer(seen, 400, {"status": 0, "error": "bad request: invalid data"})
        try:
            records = self._records(raw)
        except ValueError as exc:
            return self._answer(seen, 400, {"status": 0, "error": f"invalid payload: {exc}"})
        if len(records) > 2000:
            return self._answer(seen, 400, {"status": 0, "error": "more than 2000 records"})
        seen.records = records
        if endpoint == "imports" and seen.query.get("strict") == "1":
            failed = [
                {"index": i, "message": "'time' is invalid or missing"}
                for i, record in enumerate(records)
                if not record.get("event") or "time" not in record.get("properties", {})
            ]
            owner.accept(endpoint, [r for i, r in enumerate(records) if i not in _indices(failed)])
            if failed:
                return self._answer(
                    seen,
                    400,
                    {
                        "code": 400,
                        "error": "some data points in the request failed validation",
                        "num_records_imported": len(records) - len(failed),
                        "status": "Bad Request",
                        "failed_records": failed,
                    },
                )
            return self._answer(
                seen, 200, {"code": 200, "num_records_imported": len(records), "status": "OK"}
            )
        owner.accept(endpoint, records)
        return self._answer(seen, 200, {"status": 1, "error": None})

    def _records(self, raw: bytes) -> list[dict[str, t.Any]]:
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            text = raw.decode()
        else:
            form = urllib.parse.parse_qs(raw.decode())
            text = form["data"][0]
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


def _indices(failed: list[dict[str, t.Any]]) -> set[int]:
    return {int(item["index"]) for item in failed}


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
