"""Smoke test of an installed pyramid_mixpanel: one real event from a tiny app to a loopback API.

Not collected by pytest. ``nox -s wheel`` copies this file to a temporary folder and runs it
there with the interpreter of a fresh virtualenv holding only the built wheel and waitress, so
the package comes from the wheel and never from the checkout::

    python smoke_app.py            # the wheel without extras
    python smoke_app.py --extras   # installed with every runtime extra

It starts a stand-in for Mixpanel's ingestion API on 127.0.0.1 (``POST /import?strict=1``, gzip'd
JSON, the project token as basic-auth user: what the package sends in live mode), serves a
Pyramid app that includes ``pyramid_mixpanel`` with ``mixpanel.token`` set and
``mixpanel.api_host`` pointing at the stand-in, makes one request and waits (up to
:data:`DEADLINE` seconds, woken by the stand-in, never a fixed sleep) until the event arrived.
With ``--extras`` it also replicates the event to a Customer.io stand-in, logs through structlog,
imports every module of the package and runs the shipped metrics migrations on SQLite.

Uses the standard library only, besides what it tests. Exits 0 on success, 1 with the reason.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import importlib
import json
import pathlib
import pkgutil
import sys
import threading
import time
import traceback
import typing as t
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if t.TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

#: Seconds the whole smoke may take to see the event arrive (the background engine posts at
#: once when it has work; this is only the bound on a broken install).
DEADLINE = 30.0
TOKEN = "smoke-token"
DISTINCT_ID = "smoke-user"
CUSTOMERIO = ("smoke-site", "smoke-key")


class SmokeError(Exception):
    """What went wrong, for the one-line message the script exits with."""


class Ingestion(ThreadingHTTPServer):
    """Mixpanel's ``/import?strict=1`` and Customer.io's track API on a free loopback port.

    Records what arrived; :attr:`changed` is set on every arrival so the waiter wakes at once.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.events: list[dict[str, t.Any]] = []
        self.customerio: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, done: t.Callable[[], bool], what: str, deadline: float) -> None:
        """Block until ``done()`` (re-checked on every arrival) or fail at ``deadline``."""
        while True:
            with self.lock:
                if self.problems:
                    raise SmokeError("the stand-in refused a request: " + self.problems[0])
                if done():
                    return
                self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0 or not self.changed.wait(left):
                with self.lock:
                    seen = {"events": self.events, "customerio": self.customerio}
                raise SmokeError(f"{what} did not arrive within {DEADLINE:g}s; saw {seen!r}")

    def close(self) -> None:
        """Stop serving and free the port."""
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Ingestion
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _refuse(self, status: int, problem: str) -> None:
        with self.server.lock:
            self.server.problems.append(f"{self.command} {self.path}: {problem}")
        self.server.changed.set()
        self._answer(status, {"code": status, "error": problem, "status": 0})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/api/v1/customers/"):
            return self._customerio(url.path)
        if url.path != "/import" or urllib.parse.parse_qs(url.query).get("strict") != ["1"]:
            return self._refuse(404, "expected POST /import?strict=1")
        if _basic_auth_user(self.headers.get("Authorization")) != TOKEN:
            return self._refuse(401, "expected the project token as basic-auth user")
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        try:
            records = json.loads(raw)
        except ValueError as exc:
            return self._refuse(400, f"invalid JSON: {exc}")
        if not isinstance(records, list):
            return self._refuse(400, "expected a JSON list of events")
        with self.server.lock:
            self.server.events.extend(records)
        self.server.changed.set()
        # The answer /import gives when every record of a strict request was ingested.
        self._answer(200, {"code": 200, "num_records_imported": len(records), "status": "OK"})

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = urllib.parse.urlsplit(self.path)
        if not url.path.startswith("/api/v1/customers/"):
            return self._refuse(404, "unexpected PUT")
        self._customerio(url.path)

    def _customerio(self, path: str) -> None:
        if self.headers.get("Authorization") is None:
            return self._refuse(401, "Customer.io call without credentials")
        with self.server.lock:
            self.server.customerio.append((self.command, urllib.parse.unquote(path)))
        self.server.changed.set()
        self._answer(200, {})


def _basic_auth_user(header: str | None) -> str | None:
    if not header or not header.startswith("Basic "):
        return None
    return base64.b64decode(header[6:]).decode().partition(":")[0]


def make_app(ingestion: Ingestion, extras: bool) -> t.Any:
    """The tiny app: ``/`` tracks a page view, in live mode against ``ingestion``."""
    from pyramid.config import Configurator
    from pyramid.response import Response

    from pyramid_mixpanel import EventProperties, Events

    def page(request: Request) -> Response:
        request.mixpanel.distinct_id = DISTINCT_ID
        request.mixpanel.track(Events.page_viewed, {EventProperties.path: "/"})
        return Response("ok")

    settings = {"mixpanel.token": TOKEN, "mixpanel.api_host": ingestion.base_url}
    if extras:
        settings |= {
            "mixpanel.structlog": "true",
            "customerio.tracking.site_id": CUSTOMERIO[0],
            "customerio.tracking.api_key": CUSTOMERIO[1],
            "customerio.tracking.region": "us",
            "customerio.tracking.url": ingestion.base_url,
        }
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("home", "/")
        config.add_view(page, route_name="home")
    return config.make_wsgi_app()


def request_once(app: t.Any) -> None:
    """``GET /`` through waitress on a free port (or WebTest when waitress is not installed)."""
    try:
        from waitress.server import create_server
    except ImportError:
        try:
            from webtest import TestApp
        except ImportError:
            raise SmokeError("install waitress (or webtest) next to the wheel") from None
        if TestApp(app).get("/").text != "ok":
            raise SmokeError("GET / did not answer ok") from None
        return
    server = create_server(app, host="127.0.0.1", port=0, threads=2)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}/"
        with urllib.request.urlopen(url, timeout=DEADLINE) as response:
            body = response.read()
        if response.status != 200 or body != b"ok":
            raise SmokeError(f"GET / answered {response.status} {body[:200]!r}")
    finally:
        server.close()


def check_installed() -> str:
    """Where pyramid_mixpanel was imported from; fail when it is not an installed copy."""
    import pyramid_mixpanel

    where = pathlib.Path(pyramid_mixpanel.__file__).resolve().parent
    if "site-packages" not in where.parts:
        raise SmokeError(f"pyramid_mixpanel imported from {where}, not from the installed wheel")
    return str(where)


#: Modules that cannot be imported on their own, with every extra installed, by design.
NOT_IMPORTABLE = {
    "pyramid_mixpanel.metrics.migrations.env": "Alembic's env.py: runs inside alembic only",
    "pyramid_mixpanel.testing": "the pytest plugin: needs pytest, which no extra installs",
}


def check_extras() -> None:
    """With every extra, every module imports, and the shipped migrations run."""
    import pyramid_mixpanel

    failed = []
    for found in pkgutil.walk_packages(pyramid_mixpanel.__path__, "pyramid_mixpanel."):
        if found.name not in NOT_IMPORTABLE:
            try:
                importlib.import_module(found.name)
            except ImportError as exc:
                failed.append(f"{found.name}: {exc}")
    if failed:
        raise SmokeError("with every extra installed, modules fail to import: " + "; ".join(failed))
    from pyramid_mixpanel.metrics import MetricsStore

    with MetricsStore("sqlite://") as store:
        store.upgrade()
        if not store.is_current():
            raise SmokeError(f"metrics migrations did not reach {MetricsStore.head()}")


def check_event(event: dict[str, t.Any]) -> None:
    """The one event is the page view the view tracked, for the right project and person."""
    props = event.get("properties", {})
    expected = {"event": "Page Viewed", "Path": "/", "distinct_id": DISTINCT_ID, "token": TOKEN}
    found = {"event": event.get("event")} | {key: props.get(key) for key in list(expected)[1:]}
    if found != expected:
        raise SmokeError(f"unexpected event: {event!r}")
    if not props.get("$insert_id") or not props.get("time"):
        raise SmokeError(f"event without $insert_id or time: {event!r}")


def main(argv: list[str] | None = None) -> int:
    """Run the smoke; print what it saw."""
    parser = argparse.ArgumentParser(description="Smoke test of an installed pyramid_mixpanel.")
    parser.add_argument("--extras", action="store_true", help="also check the runtime extras")
    extras = parser.parse_args(argv).extras
    started = time.monotonic()
    deadline = started + DEADLINE
    ingestion = Ingestion()
    try:
        where = check_installed()
        if extras:
            check_extras()
        app = make_app(ingestion, extras)
        request_once(app)
        ingestion.wait_for(lambda: bool(ingestion.events), "the page view", deadline)
        if extras:
            events_path = f"/api/v1/customers/{DISTINCT_ID}/events"
            ingestion.wait_for(
                lambda: ("POST", events_path) in ingestion.customerio,
                "the Customer.io replica",
                deadline,
            )
        # Closing drains the delivery lanes: a duplicate post would have arrived by now.
        from pyramid_mixpanel import get_runtime

        get_runtime(app.registry).close()
        with ingestion.lock:
            events = list(ingestion.events)
        if len(events) != 1:
            raise SmokeError(f"expected one event, got {len(events)}: {events!r}")
        check_event(events[0])
    except SmokeError as exc:
        print(f"smoke FAILED: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an install that cannot even start the app: say so, with where
        traceback.print_exc()
        print(f"smoke FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        ingestion.close()
    took = time.monotonic() - started
    print(f"smoke ok: 1 event delivered in {took:.2f}s by pyramid_mixpanel from {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
