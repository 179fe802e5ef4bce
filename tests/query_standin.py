"""A loopback stand-in for Mixpanel's query side: export, engage, funnels, insights, segmentation.

It serves what it holds (``events`` as Mixpanel received them, with UTC epoch ``time``;
``profiles``, ``saved_funnels``, ``bookmarks``) the way Mixpanel documents its APIs, each rule
next to the page it comes from:

- basic auth with the service account and ``project_id`` (reference/query-api-authentication);
- the per-project rate limits, answered with a 429 that carries no ``Retry-After``
  (reference/rate-limits);
- the Raw Event Export as JSON lines (gzip when asked), not deduplicated, in the project's
  timezone for a project created before 2023 (reference/raw-data-export-api,
  docs/export-methods);
- Engage in pages with a ``session_id`` (reference/engage-query);
- funnels computed from the held events, one bucket per day, broken down ``on`` a property and
  cut to the top ``limit`` values (reference/funnels-query);
- segmentation honouring ``on``, ``unit``, ``type``, ``where`` and ``limit``
  (reference/segmentation-query),

so tests compare against answers they can work out. ``fail_next`` makes the next calls answer an
error status, ``cut_export`` drops the connection in the middle of an export, ``hold`` keeps
answers waiting (to see concurrency).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import threading
import time
import typing as t
import urllib.parse
import zoneinfo
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USERNAME = "sa-user.mp-service-account"
SECRET = "sa-secret-0123456789"
PROJECT_ID = "4242"
WHERE = re.compile(r'^properties\["([^"]+)"\]\s*==\s*("(?:[^"\\]|\\.)*")$')
ON = re.compile(r'^properties\["([^"]+)"\]$')
DAY = 86_400

# openapi/query.openapi.yaml, /funnels: "length ... May not be greater than 90 days";
# "length_unit ... "second", "minute", "hour", or "day""; "limit ... Defaults to 255 ...
# Maximum value 10,000".
LENGTH_UNITS = {"day": DAY, "hour": 3_600, "minute": 60, "second": 1}
MAX_LENGTH = 90 * DAY
FUNNEL_LIMIT = 255
MAX_LIMIT = 10_000
# The same page, /segmentation: unit "minute", "hour", "day", or "month" (default "day"); type
# "general", "unique", or "average" (default "general"); limit "Defaults to 60".
SEGMENTATION_UNITS = ("minute", "hour", "day", "month")
SEGMENTATION_TYPES = ("general", "unique", "average")
SEGMENTATION_LIMIT = 60


@dataclass
class RateLimits:
    """Mixpanel's limits of one project (reference/rate-limits): "These rate limits are scope
    per project". ``None`` lifts one.
    """

    #: Query API: "A maximum of 5 concurrent queries and 60 queries per hour."
    queries_per_hour: int | None = 60
    concurrent_queries: int | None = 5
    #: Raw Data Export API: "A maximum of 100 concurrent queries, 60 queries per hour, and 3
    #: queries per second."
    exports_per_hour: int | None = 60
    exports_per_second: int | None = 3
    concurrent_exports: int | None = 100


def day_of(event: dict[str, t.Any], zone: dt.tzinfo = dt.timezone.utc) -> dt.date:
    """The day of a held event (UTC ``time``) in ``zone``."""
    return dt.datetime.fromtimestamp(event["properties"]["time"], zone).date()


def matches(where: str | None, properties: dict[str, t.Any]) -> bool:
    """Evaluate the one ``where`` form the stand-in knows: ``properties["x"] == "value"``."""
    if not where:
        return True
    found = WHERE.match(where.strip())
    if found is None:
        raise ValueError(f"unsupported where: {where}")
    return bool(properties.get(found.group(1)) == json.loads(found.group(2)))


def as_string(value: object) -> str:
    """A property value cast to a string the way Mixpanel labels segments.

    reference/segmentation-expressions, "Casting to String": a number's decimal representation,
    booleans as "true"/"false", and null / undefined as such.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def segment_of(on: str | None, properties: dict[str, t.Any]) -> str:
    """The ``on`` value of an event's properties (``undefined`` when the property is missing)."""
    if on is None:
        return "$overall"
    found = ON.match(on.strip())
    if found is None:
        raise ValueError(f"unsupported on: {on}")
    key = found.group(1)
    return as_string(properties[key]) if key in properties else "undefined"


def _limit(params: dict[str, str], default: int) -> int:
    limit = int(params.get("limit", default))
    if not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


class QueryStandIn(ThreadingHTTPServer):
    """Mixpanel's query APIs on 127.0.0.1 (a context manager that serves in a thread)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: What Mixpanel received: ``time`` in UTC epoch seconds.
        self.events: list[dict[str, t.Any]] = []
        self.profiles: list[dict[str, t.Any]] = []
        #: ``{funnel_id: {"name": ..., "steps": [event names], "length": 30,
        #: "length_unit": "day"}}`` (length and its unit: what was saved in the UI).
        self.saved_funnels: dict[int, dict[str, t.Any]] = {}
        self.bookmarks: dict[str, t.Any] = {}
        #: Cohort id -> the distinct ids of its members (``filter_by_cohort``).
        self.cohorts: dict[str, list[str | None]] = {}
        #: Group profiles per data_group_id (a group key's id): ``$distinct_id`` is the group id.
        self.group_profiles: dict[str, list[dict[str, t.Any]]] = {}
        self.retention: t.Any = {}
        #: What ``/api/2.0/jql`` answers to any script.
        self.jql_answer: t.Any = []
        self.page_size = 1000
        #: The project's timezone, for a project created before 2023 (``None``: UTC export).
        self.project_timezone: str | None = None
        #: Export every n-th event twice, the way Mixpanel stored a retried send.
        self.duplicate_every: int | None = None
        self.limits = RateLimits()
        #: The clock of the rate limits (seconds; tests may move it).
        self.clock: t.Callable[[], float] = time.monotonic
        #: ``(status, body, headers)`` answers for the next calls, first in first out.
        self.fail_next: list[tuple[int, str, dict[str, str]]] = []
        #: Drop the connection after this many lines of the next export.
        self.cut_export: int | None = None
        #: Blank lines between exported events (Mixpanel's stream may hold some).
        self.blank_lines = False
        #: When set, every answer waits until the event is set (at most 10 s).
        self.hold: threading.Event | None = None
        self.requests: list[dict[str, t.Any]] = []
        #: Answers of 429 because a rate limit was reached, and the most calls seen at once.
        self.rate_limited = 0
        self.most_at_once = {"query": 0, "export": 0}
        self.lock = threading.Lock()
        self._calls: dict[str, list[float]] = {"query": [], "export": []}
        self._running = {"query": 0, "export": 0}
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def zone(self) -> dt.tzinfo:
        """The timezone of the export's days and of the reports' buckets."""
        if self.project_timezone is None:
            return dt.timezone.utc
        return zoneinfo.ZoneInfo(self.project_timezone)

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
        if self.hold is not None:
            self.hold.set()
        self.shutdown()
        self.server_close()

    # -- rate limits ------------------------------------------------------------------------

    def admit(self, kind: str) -> bool:
        """Count a call against the project's limits; ``False`` when one is reached."""
        limits = self.limits
        if kind == "query":
            windows = [(limits.queries_per_hour, 3600.0)]
            concurrent = limits.concurrent_queries
        else:
            windows = [(limits.exports_per_hour, 3600.0), (limits.exports_per_second, 1.0)]
            concurrent = limits.concurrent_exports
        with self.lock:
            now = self.clock()
            calls = self._calls[kind] = [at for at in self._calls[kind] if at > now - 3600.0]
            for limit, period in windows:
                if limit is not None and sum(at > now - period for at in calls) >= limit:
                    self.rate_limited += 1
                    return False
            if concurrent is not None and self._running[kind] >= concurrent:
                self.rate_limited += 1
                return False
            calls.append(now)
            self._running[kind] += 1
            self.most_at_once[kind] = max(self.most_at_once[kind], self._running[kind])
            return True

    def done(self, kind: str) -> None:
        """A call admitted by :meth:`admit` has been answered."""
        with self.lock:
            self._running[kind] -= 1

    # -- answers computed from the held data ------------------------------------------------

    def exported(self, params: dict[str, str]) -> list[dict[str, t.Any]]:
        """The events of an export request, as Mixpanel's export holds them."""
        start = dt.date.fromisoformat(params["from_date"])
        end = dt.date.fromisoformat(params["to_date"])
        names = json.loads(params["event"]) if "event" in params else None
        # docs/export-methods: "The `from_date` and `to_date` params are interpreted using UTC
        # timezones. For projects created before 1 January 2023, [they] are interpreted using
        # your current project timezone."
        zone = self.zone
        found = [
            event
            for event in self.events
            if start <= day_of(event, zone) <= end
            and (names is None or event["event"] in names)
            and matches(params.get("where"), event["properties"])
        ]
        if self.project_timezone is not None:
            # docs/export-methods: "For projects created before 1 Jan 2023, your event timestamp
            # is stored in your local project timezone at the time of ingestion" (and
            # docs/orgs-and-projects/managing-projects: "the ingestion offset adjusts" with
            # daylight saving time): ``time`` is the project's local wall clock, in seconds.
            found = [_local_time(event, zone) for event in found]
        if self.duplicate_every:
            # reference/raw-data-export-api: "deduplication is not applied to raw data exports.
            # If you export events via the API, you may see duplicates": a send that was retried
            # is stored twice, same name, distinct_id, time and $insert_id. The copies come
            # at the end of the stream, out of time order, as the export is not sorted.
            found += found[self.duplicate_every - 1 :: self.duplicate_every]
        return found

    def funnel(self, params: dict[str, str]) -> dict[str, t.Any]:
        """A saved funnel's answer (reference/funnels-query, openapi/query.openapi.yaml)."""
        saved = self.saved_funnels[int(params["funnel_id"])]
        steps: list[str] = saved["steps"]
        start = dt.date.fromisoformat(params["from_date"])
        end = dt.date.fromisoformat(params["to_date"])
        # "length: The number of units (defined by length_unit) each user has to complete the
        # funnel ... This defaults to the value that was previously saved in the UI for this
        # funnel"; so does length_unit: a length alone is read in the saved unit.
        unit = params.get("length_unit", saved.get("length_unit", "day"))
        if unit not in LENGTH_UNITS:
            raise ValueError(f"length_unit must be one of {', '.join(LENGTH_UNITS)}")
        window = int(params.get("length", saved.get("length", 30))) * LENGTH_UNITS[unit]
        if not 0 < window <= MAX_LENGTH:
            raise ValueError("length may not be greater than 90 days")
        on = params.get("on")
        limit = _limit(params, FUNNEL_LIMIT)
        buckets = _buckets(start, end, params)
        zone = self.zone
        by_user: dict[str, list[dict[str, t.Any]]] = {}
        for event in sorted(self.events, key=lambda e: e["properties"]["time"]):
            by_user.setdefault(event["properties"]["distinct_id"], []).append(event)
        # Per bucket: each user enters on their first first-step event of the bucket (its
        # segment is that event's ``on`` value) and goes through the steps in order within
        # the window, "we will query for events past the end of to_date to look for funnel
        # completions".
        counts: dict[str, dict[str, list[int]]] = {label: {} for label in buckets.values()}
        for events in by_user.values():
            entered: set[str] = set()
            for index, event in enumerate(events):
                label = buckets.get(day_of(event, zone))
                if label is None or event["event"] != steps[0] or label in entered:
                    continue
                entered.add(label)
                deadline = event["properties"]["time"] + window
                reached = 1
                for later in events[index + 1 :]:
                    if later["properties"]["time"] > deadline or reached == len(steps):
                        break
                    if later["event"] == steps[reached]:
                        reached += 1
                segment = segment_of(on, event["properties"])
                row = counts[label].setdefault(segment, [0] * len(steps))
                for step in range(reached):
                    row[step] += 1
        if on is not None:
            # "limit: Return the top property values. Defaults to 255 if not explicitly included.
            # Maximum value 10,000. This parameter does nothing if "on" is not specified": the
            # values with the most users entering over the whole range, the rest left out.
            totals: dict[str, int] = {}
            for rows in counts.values():
                for segment, row in rows.items():
                    totals[segment] = totals.get(segment, 0) + row[0]
            top = set(sorted(totals, key=lambda s: (-totals[s], s))[:limit])
            data: dict[str, t.Any] = {
                label: {s: _funnel_steps(steps, row) for s, row in rows.items() if s in top}
                for label, rows in counts.items()
            }
        else:
            data = {
                label: _funnel_steps(steps, rows.get("$overall", [0] * len(steps)))
                for label, rows in counts.items()
            }
        return {"meta": {"dates": list(counts)}, "data": data}

    def segmentation(self, params: dict[str, str]) -> dict[str, t.Any]:
        """A segmentation answer (reference/segmentation-query, openapi/query.openapi.yaml)."""
        name = params["event"]
        start = dt.date.fromisoformat(params["from_date"])
        end = dt.date.fromisoformat(params["to_date"])
        unit = params.get("unit", "day")
        kind = params.get("type", "general")
        if unit not in SEGMENTATION_UNITS or kind not in SEGMENTATION_TYPES:
            raise ValueError(
                f"unit must be one of {SEGMENTATION_UNITS}, type of {SEGMENTATION_TYPES}"
            )
        on = params.get("on")
        limit = _limit(params, SEGMENTATION_LIMIT)
        zone = self.zone
        series = _series(start, end, unit)
        # Per segment (the event's name without ``on``) and bucket: the events, and their users.
        events: dict[str, dict[str, int]] = {}
        users: dict[str, dict[str, set[str]]] = {}
        for event in self.events:
            properties = event["properties"]
            moment = dt.datetime.fromtimestamp(properties["time"], zone)
            if event["event"] != name or not start <= moment.date() <= end:
                continue
            if not matches(params.get("where"), properties):
                continue
            segment = segment_of(on, properties) if on else name
            label = _label(moment, unit)
            events.setdefault(segment, dict.fromkeys(series, 0))[label] += 1
            users.setdefault(segment, {}).setdefault(label, set()).add(properties["distinct_id"])
        if on is not None:
            # "limit: Return the top property values. Defaults to 60. ... This parameter does
            # nothing if "on" is not specified."
            top = sorted(events, key=lambda s: (-sum(events[s].values()), s))[:limit]
            events = {segment: events[segment] for segment in top}
        elif not events:
            events = {name: dict.fromkeys(series, 0)}
        # type: "unique" counts users; "general" every event; "average" events per user.
        values: dict[str, dict[str, float]] = {}
        for segment, counted in events.items():
            seen = users.get(segment, {})
            if kind == "general":
                values[segment] = dict(counted)
            elif kind == "unique":
                values[segment] = {label: len(seen.get(label, ())) for label in counted}
            else:
                values[segment] = {
                    label: round(n / len(seen[label]), 4) if n else 0.0
                    for label, n in counted.items()
                }
        return {"data": {"series": series, "values": values}, "legend_size": len(values)}


def _local_time(event: dict[str, t.Any], zone: dt.tzinfo) -> dict[str, t.Any]:
    moment = event["properties"]["time"]
    offset = dt.datetime.fromtimestamp(moment, zone).utcoffset() or dt.timedelta(0)
    return {
        **event,
        "properties": {**event["properties"], "time": moment + int(offset.total_seconds())},
    }


def _buckets(start: dt.date, end: dt.date, params: dict[str, str]) -> dict[dt.date, str]:
    """Day -> the label of its bucket.

    openapi/query.openapi.yaml, /funnels: "interval: The number of days you want each bucket to
    contain. The default value is 1"; "unit: This is an alternate way of specifying interval and
    can be "day", "week", or "month"". (Week and month labels are the stand-in's choice: the
    first day of the bucket within the range.)
    """
    unit = params.get("unit")
    interval = {"day": 1, "week": 7}.get(unit or "", int(params.get("interval", 1)))
    if unit not in (None, "day", "week", "month") or interval < 1:
        raise ValueError("unit must be day, week or month; interval a whole number of days")
    out: dict[dt.date, str] = {}
    day = start
    while day <= end:
        if unit == "month":
            first = max(start, day.replace(day=1))
        else:
            first = start + dt.timedelta(days=(day - start).days // interval * interval)
        out[day] = first.isoformat()
        day += dt.timedelta(days=1)
    return out


def _label(moment: dt.datetime, unit: str) -> str:
    """A segmentation bucket's label: ``YYYY-MM-DD`` for days (the documented example); the
    other units' are the stand-in's choice."""
    if unit == "minute":
        return moment.strftime("%Y-%m-%d %H:%M:00")
    if unit == "hour":
        return moment.strftime("%Y-%m-%d %H:00:00")
    if unit == "month":
        return moment.strftime("%Y-%m-01")
    return moment.date().isoformat()


def _series(start: dt.date, end: dt.date, unit: str) -> list[str]:
    """Every bucket label from ``start`` to ``end`` (days inclusive)."""
    step = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1)}.get(
        unit, dt.timedelta(days=1)
    )
    labels: dict[str, None] = {}
    moment = dt.datetime.combine(start, dt.time())
    while moment.date() <= end:
        labels[_label(moment, unit)] = None
        moment += step
    return list(labels)


def _funnel_steps(steps: list[str], counts: list[int]) -> dict[str, t.Any]:
    first = counts[0] or 1
    rows = []
    for index, (name, count) in enumerate(zip(steps, counts, strict=True)):
        previous = counts[index - 1] if index else count
        rows.append(
            {
                "count": count,
                "event": name,
                "goal": name,
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
        kind = "export" if url.path == "/api/2.0/export" else "query"
        if not self.server.admit(kind):
            # reference/rate-limits: "Getting a 429 response code from our API means that you
            # have reached our rate-limit"; no Retry-After is documented, none is sent.
            return self._json(429, {"error": "rate limit exceeded", "status": "error"})
        try:
            if self.server.hold is not None:
                self.server.hold.wait(10)
            self._route(url.path, params)
        except (KeyError, ValueError) as exc:
            self._json(400, {"error": f"bad request: {exc}", "status": "error"})
        finally:
            self.server.done(kind)

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
        # reference/query-jql documents /api/query/jql; the query host serves the same APIs
        # under the older /api/2.0/ prefix (group-analytics-faq: /api/2.0/engage), which the
        # original package used and pyramid_mixpanel keeps (query.JQL_PATH).
        if path == "/api/2.0/jql":
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
        # reference/engage-query: pages after the first need the session_id of the first.
        if page and params.get("session_id") != "session-1":
            return self._json(400, {"error": "session_id is required after page 0"})
        where = params.get("where")
        wanted = json.loads(params["output_properties"]) if "output_properties" in params else None
        profiles = server.profiles
        if "filter_by_cohort" in params:
            # reference/engage-query: filter_by_cohort={"id": N} gives the cohort's profiles.
            cohort = str(json.loads(params["filter_by_cohort"])["id"])
            if cohort not in server.cohorts:
                return self._json(400, {"error": f"unknown cohort {cohort}", "status": "error"})
            members = set(server.cohorts[cohort])
            profiles = [p for p in profiles if p["$distinct_id"] in members]
        if "data_group_id" in params:
            # group-analytics-faq, "Exporting Group Profiles via API": data_group_id names a
            # group key by its id (Project Settings > Group Keys); an unknown id is refused.
            key = params["data_group_id"]
            if key not in server.group_profiles:
                return self._json(400, {"error": f"unknown data_group_id {key}", "status": "error"})
            profiles = server.group_profiles[key]
        found = [p for p in profiles if matches(where, p["$properties"])]
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
