"""Mixpanel's documented rules for one record, in one place.

Used where messages are built (:class:`~pyramid_mixpanel.track.MixpanelTrack` raises at the
call), where they are sent (the transport refuses a record before posting it, and dead-letters
it with the reason) and by ``pmixpanel import``. Sources: docs.mixpanel.com
``reference/import-events`` ("High-level requirements", ``distinct_id``, ``$insert_id``) and
``reference/track-event`` ("Limits").
"""

from __future__ import annotations

import math
import re
import typing as t

__all__ = [
    "BLOCKED_IDS",
    "EARLIEST_MS",
    "FUTURE_SLACK_MS",
    "INSERT_ID",
    "MAX_COLLECTION",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_PROPERTIES",
    "MILLISECONDS_FROM",
    "blocked_id",
    "event_problem",
    "time_ms",
    "value_problem",
]

#: Values Mixpanel refuses as ``distinct_id`` and as ``$insert_id`` (reference/import-events).
BLOCKED_IDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "anon",
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "<nil>",
        "0",
        "-1",
        "true",
        "false",
        "[]",
        "{}",
    }
)
#: An event must have fewer than 255 properties.
MAX_PROPERTIES = 255
#: Nested objects must have fewer than 255 keys, arrays fewer than 255 elements.
MAX_COLLECTION = 255
#: "max nesting depth is 3".
MAX_DEPTH = 3
#: Each event must be smaller than 1 MB of uncompressed JSON.
MAX_EVENT_BYTES = 1_000_000
#: ``/import`` refuses events dated before 1971-01-01 (milliseconds since the epoch) ...
EARLIEST_MS = 31_536_000_000
#: ... or more than an hour in the future.
FUTURE_SLACK_MS = 3_600_000
#: Epoch numbers from here up are milliseconds (10^11 seconds would be the year 5138).
MILLISECONDS_FROM = 10**11
_COLLECTIONS = (dict, list)
#: ``$insert_id``: at most 36 bytes of letters, digits and ``-``.
INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")


def blocked_id(value: object) -> bool:
    """Whether Mixpanel refuses ``value`` as a ``distinct_id`` / ``$insert_id``."""
    return isinstance(value, str) and value.strip().lower() in BLOCKED_IDS


def time_ms(value: object) -> int | None:
    """Epoch seconds or milliseconds (a number) as integer milliseconds; else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return None
    if abs(value) >= MILLISECONDS_FROM:
        return round(value)
    return value * 1000 if isinstance(value, int) else round(value * 1000)


def value_problem(value: object, depth: int = 1) -> str | None:
    """What is wrong with a property value (nesting, sizes), or ``None``.

    ``depth`` is the nesting level of ``value``: 1 for a property's own value, so an object
    or a list may hold others down to level :data:`MAX_DEPTH`.
    """
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            return f"objects nested deeper than {MAX_DEPTH} levels"
        if len(value) >= MAX_COLLECTION:
            return f"an object with {len(value)} keys (fewer than {MAX_COLLECTION} allowed)"
        items: t.Iterable[object] = value.values()
    elif isinstance(value, list):
        if depth > MAX_DEPTH:
            return f"lists nested deeper than {MAX_DEPTH} levels"
        if len(value) >= MAX_COLLECTION:
            return f"a list of {len(value)} items (fewer than {MAX_COLLECTION} allowed)"
        items = value
    else:
        return None
    for item in items:
        problem = value_problem(item, depth + 1)
        if problem is not None:
            return problem
    return None


def event_problem(event: object, now_ms: int) -> tuple[str, str] | None:
    """``(field, message)`` for the first rule ``event`` breaks, or ``None``.

    ``event`` is ``{"event": ..., "properties": {...}}`` with ``time`` already in integer
    milliseconds.
    """
    if not isinstance(event, dict):
        return "event", "an event must be a JSON object"
    name = event.get("event")
    if not isinstance(name, str) or not name:
        return "event", "the event name is missing"
    properties = event.get("properties")
    if not isinstance(properties, dict):
        return "properties", "properties is missing or not an object"
    when = properties.get("time")
    if not isinstance(when, int) or isinstance(when, bool):
        return "properties.time", "properties.time is missing or not a number"
    if when < EARLIEST_MS:
        return "properties.time", "properties.time is before 1971-01-01"
    if when > now_ms + FUTURE_SLACK_MS:
        return "properties.time", "properties.time is more than an hour in the future"
    distinct_id = properties.get("distinct_id")
    if not isinstance(distinct_id, str):
        return "properties.distinct_id", "properties.distinct_id is missing or not a string"
    if blocked_id(distinct_id):
        return "properties.distinct_id", f"distinct_id {distinct_id!r} is a value Mixpanel refuses"
    insert_id = properties.get("$insert_id")
    if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
        return "properties.$insert_id", "$insert_id must be 1 to 36 letters, digits or '-'"
    if blocked_id(insert_id):
        return "properties.$insert_id", f"$insert_id {insert_id!r} is a value Mixpanel refuses"
    if len(properties) >= MAX_PROPERTIES:
        return (
            "properties",
            f"{len(properties)} properties (fewer than {MAX_PROPERTIES} allowed)",
        )
    for key, value in properties.items():
        # Most values are scalars: only objects and lists need a closer look.
        if type(value) in _COLLECTIONS:
            problem = value_problem(value, 1)
            if problem is not None:
                return f"properties.{key}", f"properties.{key} has {problem}"
    return None
