"""The tracking plan as code, kept in Mixpanel's Lexicon through its Schemas API.

Every declared event becomes one ``event`` schema (JSON Schema draft-07): its description, the
event properties (and group keys) with their descriptions and types, and ``required`` from
``Event(requires=...)``. The ``ProfileProperties`` become the ``profile`` schema named ``$user``
(reference/upload-schemas-for-project, "Adding a schema for User Profiles").

:func:`diff` compares the catalogue with what Lexicon holds; :class:`LexiconClient` reads and
writes it (``/api/app/projects/{projectId}/schemas`` on the region's application host, basic
auth with the service account: openapi/lexicon-schemas.openapi.yaml). A push uploads only the
schemas that changed, through the batch endpoint, starting from what Lexicon holds so that
whatever the code does not own (``metadata``: hidden, tags, display names…; ``examples``)
stays as it is. It deletes nothing unless asked to prune.
"""

from __future__ import annotations

import copy
import json
import time
import typing as t
import urllib.parse
from dataclasses import asdict, dataclass, field

import requests

from .catalog import Catalog, Property
from .delivery.policy import RetryPolicy, is_retryable, parse_retry_after
from .exceptions import MixpanelQueryError
from .log import redact
from .query import _error_text
from .settings import MixpanelSettings

__all__ = [
    "DRAFT_07",
    "MAX_UPDATES_PER_MINUTE",
    "PROFILE",
    "Change",
    "LexiconClient",
    "LexiconDiff",
    "LexiconMissingAccountError",
    "batches",
    "desired_schemas",
    "diff",
    "render_diff",
]

DRAFT_07 = "http://json-schema.org/draft-07/schema"
#: The user profile schema: entity type ``profile``, name ``$user``.
PROFILE = ("profile", "$user")
#: reference/limits: "events and properties updated per organization per minute: 4000".
MAX_UPDATES_PER_MINUTE = 4000
#: Our types as JSON Schema; ``datetime`` is a string in the ``date-time`` format, as in the
#: example body of reference/upload-schemas-for-project.
JSON_TYPES: dict[str, dict[str, str]] = {
    "string": {"type": "string"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "list": {"type": "array"},
    "object": {"type": "object"},
}
Key = tuple[str, str]
Schema = dict[str, t.Any]


class LexiconMissingAccountError(ValueError):
    """The Lexicon commands need a service account, and none is configured."""


@dataclass(frozen=True)
class Change:
    """One difference between the code and Lexicon.

    ``kind`` is ``only_in_code`` / ``only_in_lexicon`` (an entity, or with ``property`` a
    property of one), ``description``, ``type`` or ``required``; ``code`` and ``lexicon`` are
    the two values compared.
    """

    kind: str
    entity_type: str
    entity: str
    property: str | None = None
    code: str | None = None
    lexicon: str | None = None


@dataclass
class LexiconDiff:
    """The changes, and what a push would send: schemas to upload and entities to delete."""

    changes: list[Change] = field(default_factory=list)
    uploads: list[dict[str, t.Any]] = field(default_factory=list)
    deletions: list[Key] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changes)


def lexicon_type(definition: t.Mapping[str, t.Any]) -> str | None:
    """Our type of a Lexicon property definition (``integer`` is a ``number``)."""
    kind = definition.get("type")
    if kind == "string" and definition.get("format") == "date-time":
        return "datetime"
    return {
        "string": "string",
        "number": "number",
        "integer": "number",
        "boolean": "boolean",
        "array": "list",
        "object": "object",
    }.get(kind if isinstance(kind, str) else "")


def _properties(members: t.Iterable[Property]) -> dict[str, Property]:
    found: dict[str, Property] = {}
    for prop in members:
        found.setdefault(prop.name, prop)
    return found


def desired_schemas(catalog: Catalog) -> dict[Key, tuple[str, dict[str, Property], list[str]]]:
    """What the code declares: ``{(entity type, name): (description, properties, required)}``."""
    event_props = _properties(
        [*catalog.event_properties.by_attr.values(), *catalog.group_keys.by_attr.values()]
    )
    desired: dict[Key, tuple[str, dict[str, Property], list[str]]] = {}
    for event in catalog.events.by_attr.values():
        required = [prop.name for prop in event.requires]
        desired.setdefault(("event", event.name), (event.description, event_props, required))
    profile = _properties(catalog.profile_properties.by_attr.values())
    desired[PROFILE] = ("", profile, [])
    return desired


def diff(
    catalog: Catalog, held: t.Iterable[t.Mapping[str, t.Any]], prune: bool = False
) -> LexiconDiff:
    """Compare the catalogue with Lexicon's schema entries (``GET .../schemas`` results).

    Only ``event`` schemas and the ``$user`` profile schema are compared; other profile schemas
    (group profiles) are not the catalogue's. With ``prune``, the uploads drop the properties
    only Lexicon has and the deletions list the events only Lexicon has; otherwise those are
    reported and kept.
    """
    lexicon: dict[Key, Schema] = {}
    for entry in held:
        key = (str(entry.get("entityType")), str(entry.get("name")))
        if key[0] == "event" or key == PROFILE:
            lexicon[key] = dict(entry.get("schemaJson") or {})
    result = LexiconDiff()
    for key, (description, props, required) in desired_schemas(catalog).items():
        existing = lexicon.pop(key, None)
        changes = _compare(key, description, props, required, existing)
        result.changes.extend(changes)
        upload = [c for c in changes if prune or c.kind != "only_in_lexicon"]
        if upload:
            result.uploads.append(
                {
                    "entityType": key[0],
                    "name": key[1],
                    "schemaJson": _merged(existing, description, props, required, prune),
                }
            )
    for key in lexicon:
        result.changes.append(Change("only_in_lexicon", key[0], key[1]))
        if prune:
            result.deletions.append(key)
    return result


def _compare(
    key: Key,
    description: str,
    props: dict[str, Property],
    required: list[str],
    existing: Schema | None,
) -> list[Change]:
    kind, name = key
    if existing is None:
        return [Change("only_in_code", kind, name, code=description or None)]
    changes = []
    held_description = existing.get("description") or ""
    if description and description != held_description:
        changes.append(Change("description", kind, name, None, description, held_description))
    held_required = sorted(existing.get("required") or [])
    if sorted(required) != held_required:
        changes.append(
            Change(
                "required", kind, name, None, ", ".join(sorted(required)), ", ".join(held_required)
            )
        )
    held_props: dict[str, t.Any] = existing.get("properties") or {}
    for prop_name, prop in props.items():
        definition = held_props.get(prop_name)
        if not isinstance(definition, dict):
            changes.append(Change("only_in_code", kind, name, prop_name, prop.type))
            continue
        held_description = definition.get("description") or ""
        if prop.description and prop.description != held_description:
            changes.append(
                Change("description", kind, name, prop_name, prop.description, held_description)
            )
        held_type = lexicon_type(definition)
        if prop.type is not None and prop.type != held_type:
            changes.append(Change("type", kind, name, prop_name, prop.type, held_type))
    for prop_name in held_props:
        if prop_name not in props:
            changes.append(Change("only_in_lexicon", kind, name, prop_name))
    return changes


def _merged(
    existing: Schema | None,
    description: str,
    props: dict[str, Property],
    required: list[str],
    prune: bool,
) -> Schema:
    """The schema to upload: Lexicon's, with the code's descriptions, types and requirements."""
    schema: Schema = copy.deepcopy(existing) if existing is not None else {}
    schema["$schema"] = DRAFT_07
    if description:
        schema["description"] = description
    if required or "required" in schema:
        schema["required"] = required
    schema.setdefault("additionalProperties", True)
    held: dict[str, t.Any] = schema.get("properties") or {}
    merged: dict[str, t.Any] = {} if prune else {k: v for k, v in held.items() if k not in props}
    for name, prop in props.items():
        definition = dict(held.get(name) or {})
        if prop.type is not None:
            definition.pop("format", None)
            definition.update(JSON_TYPES[prop.type])
        # Lexicon requires a type (openapi: "required: [type]"): Mixpanel's default, string,
        # for a property that declares none and that Lexicon does not type yet.
        definition.setdefault("type", "string")
        if prop.description:
            definition["description"] = prop.description
        merged[name] = definition
    schema["properties"] = merged
    return schema


def _units(entry: t.Mapping[str, t.Any]) -> int:
    """How many "events and properties updated" an entry counts for (reference/limits)."""
    return 1 + len(entry["schemaJson"].get("properties") or {})


def batches(
    entries: list[dict[str, t.Any]], limit: int = MAX_UPDATES_PER_MINUTE
) -> list[list[dict[str, t.Any]]]:
    """Split uploads so that no request updates more than ``limit`` events and properties."""
    out: list[list[dict[str, t.Any]]] = []
    size = 0
    for entry in entries:
        units = _units(entry)
        if out and size + units <= limit:
            out[-1].append(entry)
            size += units
        else:
            out.append([entry])
            size = units
    return out


def render_diff(result: LexiconDiff, fmt: str = "table") -> str:
    """The changes as an aligned ``table`` or as ``json`` (a list of objects)."""
    if fmt == "json":
        return json.dumps([asdict(change) for change in result.changes], indent=2) + "\n"
    if not result.changes:
        return "Lexicon matches the code.\n"
    header = ("change", "entity", "property", "code", "lexicon")
    rows = [header] + [
        (
            c.kind,
            f"{c.entity_type} {c.entity}",
            c.property or "",
            _cell(c.code),
            _cell(c.lexicon),
        )
        for c in result.changes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + f"\n{len(result.changes)} difference(s)\n"


def _cell(value: str | None) -> str:
    if value is None:
        return "-"
    return value if len(value) <= 40 else value[:39] + "…"


class LexiconClient:
    """Reads and writes a project's Lexicon schemas with the service account.

    Uses the query client's settings: the region's application host (``query_api_host``), the
    connect and read timeouts, and the same backoff for 429 and 5xx answers. Errors are
    :class:`~pyramid_mixpanel.exceptions.MixpanelQueryError` with Mixpanel's own text, never a
    secret.
    """

    def __init__(
        self,
        settings: MixpanelSettings,
        session: requests.Session | None = None,
        *,
        retry: RetryPolicy | None = None,
        max_retries: int = 5,
        sleep: t.Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.has_service_account:
            raise LexiconMissingAccountError(
                "needs a service account: set mixpanel.service_account.username, .secret and"
                " .project_id (reference/lexicon-schemas-api-authentication)"
            )
        self.settings = settings
        self.session = session or requests.Session()
        self.retry = retry or RetryPolicy()
        self.max_retries = max_retries
        self.sleep = sleep
        project = urllib.parse.quote(str(settings.service_account_project_id), safe="")
        self.base = f"{settings.query_api_host}/api/app/projects/{project}/schemas"
        self.auth = (
            str(settings.service_account_username),
            str(settings.service_account_secret),
        )

    def schemas(self) -> list[dict[str, t.Any]]:
        """Every schema entry of the project (``GET /projects/{projectId}/schemas``)."""
        answer = self._call("GET", "")
        return list(answer.get("results") or [])

    def upload(self, entries: list[dict[str, t.Any]]) -> int:
        """Create or replace schemas in batches (``POST .../schemas``); the requests sent."""
        sent = 0
        for batch in batches(entries):
            self._call("POST", "", {"entries": batch, "truncate": False})
            sent += 1
        return sent

    def delete(self, entity_type: str, name: str) -> None:
        """Delete one schema (``DELETE .../schemas/{entityType}/{name}``)."""
        self._call("DELETE", f"/{entity_type}/{urllib.parse.quote(name, safe='')}")

    def _call(self, method: str, path: str, body: object = None) -> dict[str, t.Any]:
        settings = self.settings
        timeout = (settings.connect_timeout, settings.query_timeout)
        endpoint = "/api/app/projects/{projectId}/schemas" + path
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.session.request(
                    method,
                    self.base + path,
                    json=body,
                    auth=self.auth,
                    headers={"Accept": "application/json"},
                    timeout=timeout,
                )
            except requests.RequestException as exc:
                status, error, retry_after = 0, f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code == 200:
                    answer = response.json()
                    return answer if isinstance(answer, dict) else {}
                status, error = response.status_code, _error_text(response)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
            if (status and not is_retryable(status)) or attempt > self.max_retries:
                clean = redact(error[:500], settings.secrets)
                raise MixpanelQueryError(status, clean, endpoint, f"{method} {endpoint}")
            self.sleep(self.retry.delay(attempt, retry_after))
