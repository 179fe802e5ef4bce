"""A loopback stand-in for Mixpanel's Lexicon Schemas API, holding schemas in memory.

Every rule comes from Mixpanel's published documentation, named next to it:

- openapi/lexicon-schemas.openapi.yaml: the paths under ``/api/app/projects/{projectId}``,
  basic auth with the service account (``security: ServiceAccount``), the entity types
  (``SchemaEntityType``: ``event``, ``profile``), the request bodies (``SchemaEntry``,
  ``Schema``, batch ``entries`` + ``truncate`` with ``additionalProperties: false``) and the
  answers (``ListSchemasResponse``, ``BatchUploadSchemasResponse``, ``DeleteSchemasResponse``,
  errors as ``{"error": ..., "status": "error"}``);
- reference/upload-schemas-for-project: an upload replaces the entity's schema, but metadata
  the new schema leaves out is merged from the old one ("set the value to null" to remove it);
  ``$user`` is the user profile schema;
- reference/limits: 5 requests per organization per minute, 4000 events and properties
  updated per minute, at most 3000 truncations/deletions per request.

``requests`` records every call (method, path, JSON body) so tests can assert what was sent.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import typing as t
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USERNAME = "lexicon-sa.mp-service-account"
SECRET = "lexicon-secret-0123456789"
PROJECT_ID = "4242"
# openapi: SchemaEntityType.
ENTITY_TYPES = ("event", "profile")
# openapi: Schema.properties.additionalProperties.properties.type.enum.
PROPERTY_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")
# openapi: the property definition's keys (additionalProperties: false) — plus "format" and
# "examples", which the example bodies of reference/upload-schemas-for-project use.
PROPERTY_KEYS = {"type", "description", "metadata", "format", "examples"}
# openapi: Schema.metadata["com.mixpanel"] (additionalProperties: false), entity and property.
ENTITY_METADATA = {
    "$source",
    "displayName",
    "tags",
    "hidden",
    "dropped",
    "contacts",
    "teamContacts",
}
PROPERTY_METADATA = {"displayName", "hidden", "dropped"}


@dataclass
class Limits:
    """reference/limits; ``None`` lifts one."""

    requests_per_minute: int | None = 5
    updates_per_minute: int | None = 4000
    deletions_per_request: int = 3000


@dataclass
class Seen:
    """One request as the stand-in received it."""

    method: str
    path: str
    body: t.Any = None


@dataclass
class LexiconStandIn:
    """The server; use as a context manager. ``schemas`` maps (entityType, name) to schemaJson."""

    limits: Limits = field(default_factory=Limits)
    schemas: dict[tuple[str, str], dict[str, t.Any]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    #: Statuses the next calls answer instead of serving them (e.g. ``[429]``).
    fail_next: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._times: list[float] = []
        self._updates: list[tuple[float, int]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.standin = self  # type: ignore[attr-defined]  # the handlers' way back
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the region's application host."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def settings(self, **extra: str) -> dict[str, str]:
        """The ``mixpanel.*`` settings of an app that uses this stand-in."""
        return {
            "mixpanel.query_api_host": self.base_url,
            "mixpanel.service_account.username": USERNAME,
            "mixpanel.service_account.secret": SECRET,
            "mixpanel.service_account.project_id": PROJECT_ID,
            **extra,
        }

    def writes(self) -> list[Seen]:
        """The requests that changed something (POST and DELETE)."""
        return [seen for seen in self.requests if seen.method != "GET"]

    def __enter__(self) -> LexiconStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # -- rules ---------------------------------------------------------------------------------

    def admit(self) -> bool:
        """reference/limits: "requests per organization per minute: 5"."""
        now = time.monotonic()
        self._times = [when for when in self._times if now - when < 60]
        limit = self.limits.requests_per_minute
        if limit is not None and len(self._times) >= limit:
            return False
        self._times.append(now)
        return True

    def count_updates(self, units: int) -> bool:
        """reference/limits: "events and properties updated per organization per minute: 4000"."""
        now = time.monotonic()
        self._updates = [(when, n) for when, n in self._updates if now - when < 60]
        limit = self.limits.updates_per_minute
        if limit is not None and sum(n for _, n in self._updates) + units > limit:
            return False
        self._updates.append((now, units))
        return True

    def store(self, key: tuple[str, str], schema: dict[str, t.Any]) -> None:
        """reference/upload-schemas-for-project: replace, merging metadata left out; null
        removes a metadata property."""
        old = self.schemas.get(key, {}).get("metadata", {}).get("com.mixpanel", {})
        new = dict(schema)
        mine = dict(new.get("metadata", {}).get("com.mixpanel", {}))
        merged = {**old, **mine}
        merged = {k: v for k, v in merged.items() if v is not None}
        if merged:
            new["metadata"] = {**new.get("metadata", {}), "com.mixpanel": merged}
        self.schemas[key] = new


def schema_problem(schema: object) -> str | None:
    """What is wrong with a Schema (openapi: components.schemas.Schema), or ``None``."""
    if not isinstance(schema, dict):
        return "schemaJson must be an object"
    if "description" in schema and not isinstance(schema["description"], str):
        return "description must be a string"
    if "$schema" in schema and "draft-07" not in str(schema["$schema"]):
        # reference/lexicon-schemas-api: "defined with json-schema" draft-07.
        return "$schema must be JSON Schema draft-07"
    if "required" in schema and not (
        isinstance(schema["required"], list) and all(isinstance(n, str) for n in schema["required"])
    ):
        return "required must be a list of property names"
    problem = _metadata_problem(schema.get("metadata"), ENTITY_METADATA)
    if problem:
        return problem
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return "properties must be an object"
    for name, definition in properties.items():
        if not isinstance(definition, dict):
            return f"property {name!r} must be an object"
        if "type" not in definition:  # required: [type]
            return f"property {name!r} needs a type"
        if definition["type"] not in PROPERTY_TYPES:
            return f"property {name!r}: type must be one of {', '.join(PROPERTY_TYPES)}"
        extra = set(definition) - PROPERTY_KEYS
        if extra:
            return f"property {name!r}: unknown keys {sorted(extra)}"
        if "description" in definition and not isinstance(definition["description"], str):
            return f"property {name!r}: description must be a string"
        problem = _metadata_problem(definition.get("metadata"), PROPERTY_METADATA)
        if problem:
            return f"property {name!r}: {problem}"
    return None


def _metadata_problem(metadata: object, allowed: set[str]) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "metadata must be an object"
    mixpanel = metadata.get("com.mixpanel", {})
    if not isinstance(mixpanel, dict):
        return "metadata.com.mixpanel must be an object"
    extra = set(mixpanel) - allowed
    return f"metadata.com.mixpanel: unknown keys {sorted(extra)}" if extra else None


def entries_problem(body: object) -> str | None:
    """openapi: the batch POST body (``entries`` required, ``truncate``, nothing else)."""
    if not isinstance(body, dict) or "entries" not in body:
        return "the body must be an object with entries"
    if set(body) - {"entries", "truncate"}:
        return f"unknown keys {sorted(set(body) - {'entries', 'truncate'})}"
    if not isinstance(body.get("truncate", False), bool):
        return "truncate must be a boolean"
    if not isinstance(body["entries"], list):
        return "entries must be an array"
    for entry in body["entries"]:
        # SchemaEntry: required name, entityType, schemaJson; additionalProperties: false.
        if not isinstance(entry, dict) or set(entry) != {"entityType", "name", "schemaJson"}:
            return "each entry has exactly entityType, name and schemaJson"
        if entry["entityType"] not in ENTITY_TYPES:
            return f"entityType must be one of {', '.join(ENTITY_TYPES)}"
        if not isinstance(entry["name"], str) or not entry["name"]:
            return "name must be a non-empty string"
        problem = schema_problem(entry["schemaJson"])
        if problem:
            return f"{entry['name']}: {problem}"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # stdlib's name
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        standin: LexiconStandIn = self.server.standin  # type: ignore[attr-defined]  # set above
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._error(400, "the body is not JSON")
            return
        path = urllib.parse.urlsplit(self.path).path
        with standin.lock:
            standin.requests.append(Seen(method, path, body))
            if standin.fail_next:
                self._error(standin.fail_next.pop(0), "the stand-in was told to fail")
                return
            # security: ServiceAccount (basic auth).
            if self.headers.get("Authorization") != "Basic " + _b64(f"{USERNAME}:{SECRET}"):
                self._error(401, "Invalid service account credentials")
                return
            parts = [urllib.parse.unquote(p) for p in path.split("/") if p]
            # servers: https://{regionAndDomain}.com/api/app + /projects/{projectId}/schemas;
            # anything else is not the API (the answer is the stand-in's own).
            if parts[:3] != ["api", "app", "projects"] or len(parts) < 5 or parts[4] != "schemas":
                self._error(404, "no such path")
                return
            # reference/lexicon-schemas-api-authentication: the service account works on its
            # own projects only (the 403 of the spec's responses).
            if parts[3] != PROJECT_ID:
                self._error(403, "The service account cannot access this project")
                return
            if not standin.admit():
                self._error(429, "Rate limit exceeded: 5 requests per minute")
                return
            # paths: .../schemas, .../schemas/{entityType}, .../schemas/{entityType}/{name}.
            rest = parts[5:]
            if len(rest) > 2 or (rest and rest[0] not in ENTITY_TYPES):
                self._error(400, f"entityType must be one of {', '.join(ENTITY_TYPES)}")
                return
            self._route(standin, method, rest, body)

    def _route(self, standin: LexiconStandIn, method: str, rest: list[str], body: t.Any) -> None:
        schemas = standin.schemas
        matching = [key for key in schemas if key[: len(rest)] == tuple(rest)]
        if method == "GET":
            if len(rest) == 2:
                # "Get the schema for a specific entity type and entity name"; the spec has
                # no answer for a missing one: a 404 here.
                if not matching:
                    self._error(404, "schema not found")
                    return
                self._json(200, schemas[matching[0]])
                return
            results = [
                {"entityType": k[0], "name": k[1], "schemaJson": schemas[k]} for k in matching
            ]
            self._json(200, {"results": results, "status": "ok"})
            return
        # "Delete all schemas in a project" / "of a specific entity type" / "for an entity
        # type and entity name", answered with DeleteSchemasResponse.
        if method == "DELETE":
            if len(matching) > standin.limits.deletions_per_request:
                self._error(400, "more than 3000 deletions in one request")
                return
            for key in matching:
                del schemas[key]
            self._json(200, {"results": {"delete_count": len(matching)}, "status": "ok"})
            return
        # POST: batch on .../schemas, one on .../schemas/{entityType}/{name}.
        if len(rest) == 1:  # the spec defines no POST on .../schemas/{entityType}
            self._error(405, "POST a batch to /schemas or one schema to /schemas/{type}/{name}")
            return
        if len(rest) == 2:
            body = {"entries": [{"entityType": rest[0], "name": rest[1], "schemaJson": body}]}
        problem = entries_problem(body)
        if problem:
            self._error(400, problem)
            return
        entries = body["entries"]
        units = sum(1 + len(e["schemaJson"].get("properties", {})) for e in entries)
        if not standin.count_updates(units):
            self._error(429, "Rate limit exceeded: 4000 events and properties per minute")
            return
        deleted = 0
        if body.get("truncate"):
            if len(schemas) > standin.limits.deletions_per_request:
                self._error(400, "more than 3000 deletions in one request")
                return
            deleted = len(schemas)
            schemas.clear()
        for entry in entries:
            standin.store((entry["entityType"], entry["name"]), entry["schemaJson"])
        if len(rest) == 2:
            self._json(200, {"status": "ok"})
        else:
            self._json(
                200, {"results": {"added": len(entries), "deleted": deleted}, "status": "ok"}
            )

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message, "status": "error"})

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
