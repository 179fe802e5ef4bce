"""Raw Event Export lines, read defensively: a malformed line is a reason, never an exception.

The export is JSON lines (reference/raw-data-export-api), one ``{"event": name, "properties":
{"time": epoch seconds, "distinct_id": ..., ...}}`` each. What they hold came from whoever could
send an event, so a line may be anything: not UTF-8, not JSON, JSON that is not an object, an
object without ``event`` or ``properties``, ``NaN`` or ``Infinity`` (not JSON, though Python's
parser takes them), a ``time`` that is not a finite number, a ``distinct_id`` or ``$insert_id``
that is an object. :func:`parse_line` returns the event, or a short reason saying what is wrong
(never a value: lines hold personal data). Whatever it accepts,
:class:`~pyramid_mixpanel.metrics.Aggregator` counts without raising.
"""

from __future__ import annotations

import contextlib
import json
import math
import typing as t

import orjson

if t.TYPE_CHECKING:
    from ..query import ExportChunk
    from .sync import ExportChunkLike

__all__ = ["MALFORMED_REASONS", "check_event", "chunk_lines", "parse_line"]


NOT_UTF8 = "not UTF-8"
NOT_JSON = "not JSON"
NOT_FINITE = "NaN or Infinity"
TOO_DEEP = "nested too deeply"
NOT_OBJECT = "not a JSON object"
NO_EVENT = "no event name"
NO_PROPERTIES = "no properties object"
BAD_TIME = "time is not a finite number"
BAD_DISTINCT_ID = "distinct_id is not a string or a number"
BAD_INSERT_ID = "$insert_id is not a string or a number"
#: Every reason :func:`parse_line` may give.
MALFORMED_REASONS = (
    NOT_UTF8,
    NOT_JSON,
    NOT_FINITE,
    TOO_DEEP,
    NOT_OBJECT,
    NO_EVENT,
    NO_PROPERTIES,
    BAD_TIME,
    BAD_DISTINCT_ID,
    BAD_INSERT_ID,
)
NUMBER = (int, float)
# A distinct_id or $insert_id is hashed and used as a key: an object or a list would raise.
KEY = (str, int, float)


class _NotFiniteError(ValueError):
    """``NaN`` or ``Infinity``: Python's parser takes them, JSON has no such thing."""


def _refuse_constant(name: str) -> t.NoReturn:
    raise _NotFiniteError(name)


# One decoder for every line (json.loads with an argument builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def check_event(value: object) -> str | None:
    """Why ``value`` (a decoded line) is not an event the aggregator can count, or ``None``."""
    if not isinstance(value, dict):
        return NOT_OBJECT
    name = value.get("event")
    if not isinstance(name, str) or not name:
        return NO_EVENT
    properties = value.get("properties")
    if not isinstance(properties, dict):
        return NO_PROPERTIES
    moment = properties.get("time")
    # A bool is an int to isinstance: compare classes. An int is always finite (and may be too
    # large for a float, which math.isfinite would raise on); 1e400 decodes to an infinite float.
    if moment.__class__ is not int and not (moment.__class__ is float and math.isfinite(moment)):
        return BAD_TIME
    user = properties.get("distinct_id")
    if user is not None and user.__class__ not in KEY:
        return BAD_DISTINCT_ID
    insert_id = properties.get("$insert_id")
    if insert_id is not None and insert_id.__class__ not in KEY:
        return BAD_INSERT_ID
    return None


def parse_line(line: object) -> dict[str, t.Any] | str:
    """The event of one export line, or the reason it is malformed; never raises.

    :param line: ``bytes`` or ``str`` as read from the stream (anything else is taken for an
        already decoded line, and checked).
    :returns: the event (a ``dict``), or one of :data:`MALFORMED_REASONS` (a ``str``).
    """
    if isinstance(line, (bytes, str)):
        try:
            # orjson first: much faster than json on export lines. It refuses more (NaN, 1e400,
            # integers beyond a double, lone surrogates, nesting past 1024): what it refuses
            # gets the json decoder's verdict and reason, as before. One difference: an integer
            # beyond 64 bits that a double can hold comes back as the nearest float.
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                value = _DECODER.decode(line.decode() if isinstance(line, bytes) else line)
            except UnicodeDecodeError:
                return NOT_UTF8
            except _NotFiniteError:
                return NOT_FINITE
            except RecursionError:  # [[[[... deeper than the interpreter's recursion limit
                return TOO_DEEP
            except ValueError:  # not JSON, or an integer of more digits than Python converts
                return NOT_JSON
    else:
        value = line
    reason = check_event(value)
    return t.cast(dict[str, t.Any], value) if reason is None else reason


def chunk_lines(chunk: ExportChunkLike) -> t.Iterator[object]:
    """The lines of an export chunk, not decoded yet, so a malformed one can be skipped.

    :class:`~pyramid_mixpanel.query.ExportChunk` decodes every line and stops at the first that
    is not JSON; its lines are read here instead. Other chunks (stand-ins, tests) give their
    events, or raw lines, from ``events()``.
    """
    from ..query import ExportChunk

    if isinstance(chunk, ExportChunk):
        return _export_lines(chunk)
    return iter(chunk.events())


def _export_lines(chunk: ExportChunk) -> t.Iterator[bytes]:
    """:meth:`ExportChunk.events`, without decoding the lines (same request, same errors)."""
    import requests

    from ..exceptions import MixpanelQueryError

    query = chunk.query
    params: dict[str, str] = {
        "from_date": chunk.from_date.isoformat(),
        "to_date": chunk.to_date.isoformat(),
    }
    if chunk.event_names is not None:
        params["event"] = json.dumps(list(chunk.event_names))
    if chunk.where:
        params["where"] = chunk.where
    endpoint = "/api/2.0/export"
    with contextlib.ExitStack() as held:
        # ``held`` keeps one of the project's concurrent exports until the stream is read.
        response = query._call(
            "GET", query.settings.export_api_host, endpoint, params, stream=True, held=held
        )
        try:
            for line in response.iter_lines(chunk_size=256 * 1024):
                if line:
                    yield line
        except requests.RequestException as exc:
            raise MixpanelQueryError(
                0,
                query._clean(f"the export stream broke off: {type(exc).__name__}: {exc}"),
                endpoint,
                query._describe("GET", endpoint, params),
            ) from None
        finally:
            response.close()
