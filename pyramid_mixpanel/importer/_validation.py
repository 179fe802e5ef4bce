"""Row validation: event times, ``$insert_id``, and the JSON Mixpanel gets for a row."""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
import typing as t
from binascii import hexlify
from hashlib import sha256

import orjson

from ..rules import (
    BLOCKED_IDS,
    EARLIEST_MS,
    FUTURE_SLACK_MS,
    MAX_EVENT_BYTES,
    MAX_PROPERTIES,
    MILLISECONDS_FROM,
    blocked_id,
    value_problem,
)
from ._errors import RowRejectedError, clipped, shown

if t.TYPE_CHECKING:
    from ..catalog import Catalog

__all__ = [
    "EARLIEST_MS",
    "FUTURE_SLACK_MS",
    "MAX_EVENT_BYTES",
    "MILLISECONDS_FROM",
    "Preparer",
    "derive_insert_id",
    "event_time_ms",
    "prepare_record",
    "valid_insert_id",
]

# A row with fewer properties than this can take the fast path: with the $insert_id and ip
# added it stays below Mixpanel's limit.
MAX_FAST_PROPERTIES = MAX_PROPERTIES - 2
INSERT_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
ONE_MS = dt.timedelta(milliseconds=1)
# No time needs more characters than this (an ISO 8601 one with nanoseconds and an offset has
# 35): a longer one is refused before int() or float() parse thousands of digits.
MAX_TIME_CHARS = 64
# Undeclared event names up to this long get a "did you mean" hint, cached per name; a longer
# one is not matched (nor kept in the cache) as they may be up to a line long.
MAX_HINTED_CHARS = 255
# orjson.dumps() raises on values nested 255 levels deep or more.
ORJSON_MAX_DEPTH = 255

# orjson parses and encodes about five times faster than the standard library, which is most
# of an import's CPU. One encoding serves both the body and the hash behind $insert_id. Keys are
# sorted so "properties" is the last key and the body ends with the "}}" that closes it.
SORTED = orjson.OPT_SORT_KEYS


def event_time_ms(value: object, latest_ms: int | None = None) -> int:
    """Mixpanel's ``time`` as integer milliseconds since the epoch.

    ``value`` is epoch seconds or milliseconds (a number, or a string of one) or an ISO 8601
    string (UTC when it has no offset). Raises :class:`RowRejectedError` for anything else, a date
    before 1971-01-01, or one after ``latest_ms`` (default: an hour from now).
    """
    number: object = value
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_TIME_CHARS:
            raise RowRejectedError(
                f"time {shown(value)} is {len(text):,} characters long: not a time"
            )
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return _in_range(_iso_ms(text, value), value, latest_ms)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise RowRejectedError(
            f"time {shown(value)} is not epoch seconds, epoch milliseconds or ISO 8601"
        )
    # Only a float can be infinite or NaN: math.isfinite() would turn an int into a float, and
    # one of 310 digits or more overflows.
    if isinstance(number, float) and not math.isfinite(number):
        raise RowRejectedError(f"time {shown(value)} is not a finite number")
    if abs(number) >= MILLISECONDS_FROM:
        ms = round(number)
    else:
        ms = number * 1000 if isinstance(number, int) else round(number * 1000)
    return _in_range(ms, value, latest_ms)


def _in_range(ms: int, value: object, latest_ms: int | None) -> int:
    if ms < EARLIEST_MS:
        raise RowRejectedError(f"time {shown(value)} is before 1971-01-01: Mixpanel refuses it")
    if latest_ms is None:
        latest_ms = int(time.time() * 1000) + FUTURE_SLACK_MS
    if ms > latest_ms:
        raise RowRejectedError(
            f"time {shown(value)} is more than an hour in the future: Mixpanel would move the"
            " event to the time of import"
        )
    return ms


def _iso_ms(text: str, value: object) -> int:
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not read "Z"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RowRejectedError(
            f"time {shown(value)} is not epoch seconds, epoch milliseconds or ISO 8601"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return (when - EPOCH) // ONE_MS


def _hash_id(canonical: bytes) -> str:
    return sha256(canonical).hexdigest()[:32]


def derive_insert_id(event: str, properties: t.Mapping[str, object]) -> str:
    """The deterministic ``$insert_id`` of an event as sent (``time`` in ms, ``distinct_id``).

    32 hex digits of the SHA-256 of ``{"event", "properties"}`` with sorted keys, without any
    ``$insert_id``: the same event always gets the same id, within Mixpanel's rule of at most
    36 letters, digits or ``-``.
    """
    props = {key: value for key, value in properties.items() if key != "$insert_id"}
    return _hash_id(orjson.dumps({"event": event, "properties": props}, option=SORTED))


def valid_insert_id(value: object) -> bool:
    """True for a ``$insert_id`` Mixpanel accepts: 1 to 36 letters, digits or ``-``."""
    return isinstance(value, str) and 0 < len(value) <= 36 and INSERT_ID_CHARS.issuperset(value)


class Preparer:
    """Validate and normalise one row into the JSON Mixpanel gets, or raise RowRejectedError."""

    def __init__(self, catalog: Catalog | None, latest_ms: int) -> None:
        self.catalog = catalog
        self.declared: t.Container[str] = catalog.events.by_name if catalog else ()
        self.latest_ms = latest_ms
        # The hint (a fuzzy match over the catalogue) is computed once per undeclared name.
        self.undeclared = functools.lru_cache(maxsize=1024)(self._undeclared)

    def __call__(self, record: object, owned: bool = False) -> bytes:
        """The event's JSON; ``owned``: ``record`` was parsed here and may be changed in place."""
        # The fast path, inline (a call per row costs more than most of its tests): a
        # well-formed row with a string distinct_id, a whole-number time and no $insert_id of
        # its own, which is nearly every row of a large import. It tests only what such a row
        # can break; anything else, including every row that will be rejected, takes the full
        # path (_checked), which sends the same body or says why not.
        if type(record) is not dict:
            return self._checked(record, owned)
        event, properties = record.get("event"), record.get("properties")
        if not (
            type(event) is str
            and type(properties) is dict
            and event
            and (self.catalog is None or event in self.declared)
        ):
            return self._checked(record, owned)
        distinct_id, when = properties.get("distinct_id"), properties.get("time")
        if not (
            type(distinct_id) is str
            and type(when) is int
            and "$insert_id" not in properties
            and len(properties) < MAX_FAST_PROPERTIES
            and distinct_id.strip().lower() not in BLOCKED_IDS  # rules.blocked_id
        ):
            return self._checked(record, owned)
        ms = when if when >= MILLISECONDS_FROM else when * 1000
        if not EARLIEST_MS <= ms <= self.latest_ms:
            return self._checked(record, owned)
        if owned:
            sent = properties
            # A row of just "event" and "properties" is encoded as it is: no new dict per row.
            top = record if len(record) == 2 else {"event": event, "properties": sent}
        else:
            sent = dict(properties)
            top = {"event": event, "properties": sent}
        sent["time"] = ms
        added_ip = "ip" not in sent
        if added_ip:
            sent["ip"] = "0"  # without ip, /import geolocates the event to this machine
        try:
            encoded = orjson.dumps(top, option=SORTED)
        except TypeError:  # not JSON (a Python caller's value): the full path says which
            pass
        else:
            # A value that nests (an object or a list) must stay within Mixpanel's depth and
            # sizes. Two byte searches tell whether there is one: with nothing nested, the only
            # braces are the event's and its properties', and there is no bracket. (One inside
            # a string only costs the check of each value.)
            if (encoded.count(b"{") == 2 and b"[" not in encoded) or _nesting_allowed(sent):
                digest = sha256(encoded).digest()
                body = b'%s,"$insert_id":"%s"}}' % (encoded[:-2], hexlify(digest[:16]))
                if len(body) < MAX_EVENT_BYTES:
                    return body
        # Put the row back as it came: the full path reads it anew (a time in the
        # milliseconds of 1971 would otherwise read as seconds, far in the future).
        sent["time"] = when
        if added_ip:
            del sent["ip"]
        return self._checked(record, owned)

    def _checked(self, record: object, owned: bool) -> bytes:
        if not isinstance(record, dict):
            raise RowRejectedError(f"a row must be a JSON object, got {type(record).__name__}")
        event = record.get("event")
        if not isinstance(event, str) or not event:
            raise RowRejectedError(
                "event is missing" if event in (None, "") else "event is not a string"
            )
        if self.catalog is not None and event not in self.declared:
            raise RowRejectedError(
                self.undeclared(event)
                if len(event) <= MAX_HINTED_CHARS
                else f"event {shown(event)} is not declared (--allow-undeclared imports it anyway)"
            )
        properties = record.get("properties")
        if not isinstance(properties, dict):
            raise RowRejectedError("properties is missing or not an object")
        distinct_id = properties.get("distinct_id")
        if isinstance(distinct_id, bool) or not isinstance(distinct_id, (str, int)):
            raise RowRejectedError(
                "properties.distinct_id is missing"
                if distinct_id is None
                else f"distinct_id {shown(distinct_id)} is not a string"
            )
        # A Python caller's int may have more digits than str() converts (4300).
        if type(distinct_id) is int and distinct_id.bit_length() > 64:
            raise RowRejectedError(f"distinct_id {shown(distinct_id)} is too large a number")
        if blocked_id(str(distinct_id)):
            raise RowRejectedError(f"distinct_id {shown(distinct_id)} is a value Mixpanel refuses")
        if "time" not in properties:
            raise RowRejectedError("properties.time is missing")
        ms = event_time_ms(properties["time"], self.latest_ms)
        given = properties.get("$insert_id")
        if given is not None and not valid_insert_id(given):
            raise RowRejectedError(
                f"$insert_id {shown(given)} is invalid: Mixpanel wants 1 to 36 letters, digits"
                " or '-'"
            )
        if blocked_id(given):
            raise RowRejectedError(f"$insert_id {shown(given)} is a value Mixpanel refuses")
        # With the $insert_id and ip that every sent event carries.
        count = len(properties) + ("$insert_id" not in properties) + ("ip" not in properties)
        if count >= MAX_PROPERTIES:
            raise RowRejectedError(
                f"{count} properties: Mixpanel takes fewer than {MAX_PROPERTIES}"
            )
        for key, value in properties.items():
            problem = value_problem(value)
            if problem is not None:
                raise RowRejectedError(f"properties.{clipped(str(key))} has {problem}")
        # Normalise in place when the row is ours (saves a copy per row), else on a copy.
        sent = properties if owned else dict(properties)
        sent["time"] = ms
        sent.setdefault("ip", "0")
        if type(distinct_id) is not str:
            sent["distinct_id"] = str(distinct_id)
        if given is not None:
            del sent["$insert_id"]
        try:
            encoded = orjson.dumps({"event": event, "properties": sent}, option=SORTED)
        except TypeError as exc:  # a Python caller's value that is not JSON
            raise RowRejectedError(f"a property is not JSON: {exc}") from None
        insert_id = given or _hash_id(encoded)
        body = b'%s,"$insert_id":"%s"}}' % (encoded[:-2], insert_id.encode())
        if len(body) >= MAX_EVENT_BYTES:
            raise RowRejectedError(f"the event is {len(body):,} bytes: Mixpanel's limit is 1 MB")
        return body

    def _undeclared(self, event: str) -> str:
        section = t.cast("Catalog", self.catalog).events
        return f"event {section.describe_unknown(event)} (--allow-undeclared imports it anyway)"


def _nesting_allowed(properties: dict[str, t.Any]) -> bool:
    """True when no property value breaks Mixpanel's limits of nesting depth and size."""
    return all(value_problem(value) is None for value in properties.values())


def prepare_record(record: object, catalog: Catalog | None = None) -> str:
    """The JSON Mixpanel gets for one row, as :func:`import_file` sends it.

    Checks the event name against ``catalog`` when given. Raises :class:`RowRejectedError`.
    """
    # Rows read from a file cannot hold NaN (the parser refuses it); a Python caller's can, and
    # orjson would write it as null: refuse it instead of changing the data.
    if not _finite(record):
        raise RowRejectedError("NaN and Infinity are not valid JSON for Mixpanel")
    return Preparer(catalog, int(time.time() * 1000) + FUTURE_SLACK_MS)(record).decode()


def _finite(value: object, depth: int = 0) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    # orjson refuses to encode anything nested this deep (a rejected row), so the search stops
    # there rather than recursing as deep as a caller's value goes.
    if depth >= ORJSON_MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return all(_finite(item, depth + 1) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(item, depth + 1) for item in value)
    return True
