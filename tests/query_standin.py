"""A loopback stand-in for Mixpanel's query side: export, engage, funnels, insights, segmentation.

It serves what it holds (``events``, ``profiles``, ``saved_funnels``, ``bookmarks``) the way
Mixpanel's APIs do: basic auth with the service account and ``project_id``; the Raw Event Export
as JSON lines (gzip when asked) filtered by UTC day, event names and a ``where`` equality;
Engage in pages with a ``session_id``; funnels computed from the held events (ordered steps per
user, optionally broken down by a property with ``on``), so tests compare against answers they
can work out. ``fail_next`` makes the next calls answer an error status, ``cut_export`` drops
the connection in the middle of an export.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import threading
import typing as t
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USERNAME = "sa-user.mp-service-account"
SECRET = "sa-secret-0123456789"
PROJECT_ID = "4242"
WHERE = re.compile(r'^properties\["([^"]+)"\]\s*==\s*("(?:[^"\\]|\\.)*")$')


def day_of(event: dict[str, t.Any]) -> dt.date:
    """The UTC day of an exported event."""
    return dt.datetime.fromtimestamp(event["properties"]["time"], dt.timezone.utc).date()


def matches(where: str | None, properties: dict[str, t.Any]) -> bool:
    """Evaluate the one ``where`` form the stand-in knows: ``properties["x"] == "value"``."""
    if not where:
        return True
    found = WHERE.match(where.strip())
    if found is None:
        raise ValueError(f"unsupported where: {where}")
    return bool(properties.get(found.group(1)) == json.loads(found.group(2)))


class QueryStandIn(ThreadingHTTPServer):
    """Mixpanel's query APIs on 127.0.0.1 (a context manager that serves in a thread)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.events: list[dict[str, t.Any]] = []
        self.profiles: list[dict[str, t.Any]] = []
        #: ``{funnel_id: {"name": ..., "steps": [event names]}}``
        self.saved_funnels: dict[int, dict[str, t.Any]] = {}
        self.bookmarks: dict[str, t.Any] = {}
        self.retention: t.Any = {}
        #: What ``/api/query/jql`` answers to any script.
        self.jql_answer: t.Any = []
        self.page_size = 1000
        #: ``(status, body, headers)`` answers for the next calls, first in first out.
        self.fail_next: list[tuple[int, str, dict[str, str]]] = []
        #: Drop the connection after this many lines of the next export.
        self.cut_export: int | None = None
        #: Blank lines between exported events (Mixpanel's stream may hold some).
        self.blank_lines = False
        self.requests: list[dict[str, t.Any]] = []
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def settings(self, **extra: str) -> dict[str, str]:
        """App settings that point a ``MixpanelQuery`` at this stand-in."""
        return {
            "mixpanel.token": "tok-query-tests",
            "mixpanel.query_api_host": self.base_url,
            "mixpanel.export_api_host": self.base_url,
            "mixpanel.service_account.username": USERNAME,
            "mixpanel.service_account.secret": SECRET,
            "mixpanel.service_account.project_id": PROJECT_ID,
            "mixpanel.delivery": "sync",
            **extra,
        }

    def __enter__(self) -> QueryStandIn:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    # -- answers computed from the held data ------------------------------------------------

    def exported(self, params: dict[str, str]) -> list[dict[str, t.Any]]:
        start = dt.date.fromisoformat(params["from_date"])
        end = dt.date.fromisoformat(params["to_date"])
        names = json.loads(params["event"]) if "event" in params else None
        return [
            event
            for event in self.events
            if start <= day_of(event) <= end
            and (names is None or event["event"] in names)
            and matches(params.get("where"), event["properties"])
        ]

    def funnel(self, params: dict[str, str]) -> dict[str, t.Any]:
        saved = self.saved_funnels[int(params["funnel_id"])]
        steps: list[str] = saved["steps"]
        start = dt.date.fromisoformat(params["from_date"])
        end = dt.date.fromisoformat(params["to_date"])
        on = params.get("on")
        key = None
        if on:
            found = re.fullmatch(r'properties\["([^"]+)"\]', on)
            if found is None:
                raise ValueError(f"unsupported on: {on}")
            key = found.group(1)
        # Per (segment, user): how far the user got, steps in order, over the whole range.
        progress: dict[tuple[str, str], int] = {}
        ordered = sorted(
            (e for e in self.events if start <= day_of(e) <= end),
            key=lambda e: e["properties"]["time"],
        )
        for event in ordered:
            properties = event["properties"]
            segment = str(properties.get(key)) if key else "$overall"
            user = (segment, properties["distinct_id"])
            reached = progress.get(user, 0)
            if reached < len(steps) and event["event"] == steps[reached]:
                progress[user] = reached + 1
        segments: dict[str, list[int]] = {}
        for (segment, _), reached in progress.items():
            counts = segments.setdefault(segment, [0] * len(steps))
            for index in range(reached):
                counts[index] += 1
        body = {segment: _funnel_steps(steps, counts) for segment, counts in segments.items()}
        label = params["from_date"]
        return {"meta": {"dates": [label]}, "data": {label: body if key else body["$overall"]}}

    def segmentation(self, params: dict[str, str]) -> dict[str, t.Any]:
        start = dt.date.fromisoformat(params["from_date"])
        end = dt.date.fromisoformat(params["to_date"])
        values: dict[str, dict[str, int]] = {params["event"]: {}}
        day = start
        while day <= end:
            values[params["event"]][day.isoformat()] = 0
            day += dt.timedelta(days=1)
        for event in self.events:
            if event["event"] == params["event"] and start <= day_of(event) <= end:
                values[params["event"]][day_of(event).isoformat()] += 1
        return {"data": {"series": sorted(values[params["event"]]), "values": values}}


def _funnel_steps(steps: list[str], counts: list[int]) -> dict[str, t.Any]:
    first = counts[0] or 1
    rows = []
    for index, (name, count) in enumerate(zip(steps, counts, strict=True)):
        previous = counts[index - 1] if index else count
        rows.append(
            {
                "count": count,
                "event": name,
                "step_conv_ratio": count / previous if previous else 0.0,
                "overall_conv_ratio": count / first,
            }
        )
    return {
        "steps": rows,
        "analysis": {"completion": counts[-1], "starting_amount": counts[0], "steps": len(steps)},
    }


class _Handler(BaseHTTPRequestHandler):
    server: QueryStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # stdlib's name
        pass

    def do_GET(self) -> None:
        self._handle({})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        self._handle(form)

    def _handle(self, form: dict[str, str]) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        params.update(form)
        auth = self.headers.get("Authorization", "")
        with self.server.lock:
            self.server.requests.append(
                {"method": self.command, "path": url.path, "params": params, "auth": auth}
            )
            failure = self.server.fail_next.pop(0) if self.server.fail_next else None
        if failure is not None:
            status, body, headers = failure
            return self._send(status, body.encode(), headers)
        expected = "Basic " + _b64(f"{USERNAME}:{SECRET}")
        if auth != expected or params.get("project_id") != PROJECT_ID:
            return self._json(401, {"error": "Invalid credentials", "status": "error"})
        try:
            self._route(url.path, params)
        except (KeyError, ValueError) as exc:
            self._json(400, {"error": f"bad request: {exc}", "status": "error"})

    def _route(self, path: str, params: dict[str, str]) -> None:
        server = self.server
        if path == "/api/2.0/export":
            return self._export(server.exported(params))
        if path == "/api/query/engage":
            return self._engage(params)
        if path == "/api/query/funnels/list":
            listed = [{"funnel_id": k, "name": v["name"]} for k, v in server.saved_funnels.items()]
            return self._json(200, listed)
        if path == "/api/query/funnels":
            if int(params["funnel_id"]) not in server.saved_funnels:
                return self._json(400, {"error": "Funnel does not exist", "status": "error"})
            return self._json(200, server.funnel(params))
        if path == "/api/query/insights":
            if params["bookmark_id"] not in server.bookmarks:
                return self._json(404, {"error": "Report not found", "status": "error"})
            return self._json(200, server.bookmarks[params["bookmark_id"]])
        if path == "/api/query/segmentation":
            return self._json(200, server.segmentation(params))
        if path == "/api/query/retention":
            return self._json(200, server.retention)
        if path == "/api/query/jql":
            json.loads(params["params"])  # must be JSON, as Mixpanel requires
            return self._json(200, server.jql_answer)
        return self._json(404, {"error": f"no such endpoint {path}", "status": "error"})

    def _export(self, events: list[dict[str, t.Any]]) -> None:
        gap = b"\n" if self.server.blank_lines else b""
        lines = [json.dumps(event).encode() + b"\n" + gap for event in events]
        cut = self.server.cut_export
        self.server.cut_export = None
        if cut is not None:
            # Announce the whole body, send part of it, hang up: an interrupted stream.
            body = b"".join(lines)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(b"".join(lines[:cut]))
            self.wfile.flush()
            self.close_connection = True
            return
        body = b"".join(lines)
        headers = {"Content-Type": "text/plain"}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(200, body, headers)

    def _engage(self, params: dict[str, str]) -> None:
        server = self.server
        page = int(params.get("page", 0))
        if page and params.get("session_id") != "session-1":
            return self._json(400, {"error": "session_id is required after page 0"})
        where = params.get("where")
        wanted = json.loads(params["output_properties"]) if "output_properties" in params else None
        found = [p for p in server.profiles if matches(where, p["$properties"])]
        chunk = found[page * server.page_size : (page + 1) * server.page_size]
        if wanted is not None:
            chunk = [
                {**p, "$properties": {k: v for k, v in p["$properties"].items() if k in wanted}}
                for p in chunk
            ]
        self._json(
            200,
            {
                "page": page,
                "page_size": server.page_size,
                "session_id": "session-1",
                "status": "ok",
                "total": len(found),
                "results": chunk,
            },
        )

    def _json(self, status: int, body: object) -> None:
        self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()
