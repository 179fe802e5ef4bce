"""The wire protocol of Mixpanel's browser SDK (``mixpanel-browser``), read and answered.

What the SDK sends (``src/mixpanel-core.js``, ``_send_request`` and ``_encode_data_for_request``
of mixpanel-browser 2.83):

- the payload is JSON (one object, or an array when the SDK batches), either as is
  (``api_payload_format: "json"``) or base64 of its UTF-8 (``"base64"``, the default for an
  ``api_host`` that is not Mixpanel's);
- by POST (the default) the body is ``data=<payload, URL-encoded>`` with
  ``Content-Type: application/x-www-form-urlencoded`` (XHR) or ``text/plain;charset=UTF-8``
  (``navigator.sendBeacon``, used as the page is left); by GET (``api_method: "GET"``) ``data``
  is a query parameter;
- the query string carries ``verbose=1`` (the batcher always asks for it), ``ip=1`` or ``ip=0``
  (geolocate the client or not), ``_=<ms>`` (a cache-buster) and any ``api_extra_query_params``.

What it expects back: with ``verbose``, a JSON object ``{"status": 1|0, "error": ...}``; without,
the text ``1`` or ``0``. Its batcher (``src/request-batcher.js``) retries on 5xx and 429 (after
``Retry-After``), halves the batch on 413, and drops the batch on any other answer.
"""

from __future__ import annotations

import base64
import binascii
import typing as t
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson

from ..relay.view import RelayRefusedError

__all__ = ["Call", "ProtocolError", "decode_call", "encode_answer"]

#: Content types the SDK posts with: XHR's form encoding, sendBeacon's text.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "text/plain"})
# Query or form fields the SDK sends; more are ignored (api_extra_query_params may add some),
# but parsing stops at this many: a body of a million "&" costs nothing.
MAX_FIELDS = 32


class ProtocolError(RelayRefusedError, ValueError):
    """The request is not one the SDK sends; ``reason`` names the refusal counter."""


@dataclass(frozen=True)
class Call:
    """One decoded SDK request."""

    #: The items: event, profile-update or group-update objects, as the SDK built them.
    items: list[t.Any]
    #: The SDK sent an array (its batcher) rather than one object.
    batch: bool
    #: ``verbose=1``: answer with a JSON object rather than ``1``/``0``.
    verbose: bool
    #: ``ip=1`` (the SDK's default): geolocate with the client's address.
    geolocate: bool


def _fields(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:  # more fields than MAX_FIELDS
        raise ProtocolError(400, "bad_payload", "too many form fields") from None
    return dict(pairs)


def _payload(data: str) -> object:
    text = data.strip()
    if text[:1] in ("{", "["):
        raw = text.encode("utf-8", "surrogatepass")
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(
                400, "bad_payload", "data is neither JSON nor base64 of JSON"
            ) from None
    try:
        # orjson refuses lone surrogates, invalid UTF-8, NaN and nesting deeper than 1024.
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(400, "bad_payload", "data is not valid JSON") from None


def decode_call(
    method: str, query_string: str, content_type: str, body: bytes | None, max_items: int
) -> Call:
    """Decode one request of the SDK; raise :class:`ProtocolError` for anything else.

    ``body`` is the raw POST body (already limited in size by the caller); ``None`` for GET.
    """
    query = _fields(query_string)
    if method == "POST":
        if content_type not in FORM_TYPES:
            raise ProtocolError(
                415,
                "content_type",
                "send data=... as application/x-www-form-urlencoded or text/plain",
            )
        try:
            text = t.cast(bytes, body).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(400, "bad_payload", "the body is not UTF-8") from None
        data = _fields(text).get("data")
    else:
        data = query.get("data")
    if not data:
        raise ProtocolError(400, "bad_payload", "no data field")
    payload = _payload(data)
    if isinstance(payload, list):
        if not payload:
            raise ProtocolError(400, "bad_payload", "an empty batch")
        if len(payload) > max_items:
            # 413: the SDK's batcher halves its batch and sends again (request-batcher.js).
            raise ProtocolError(413, "too_large", f"a batch holds at most {max_items} items")
        items, batch = payload, True
    elif isinstance(payload, dict):
        items, batch = [payload], False
    else:
        raise ProtocolError(400, "bad_payload", "data must be a JSON object or array")
    return Call(
        items=items,
        batch=batch,
        verbose=query.get("verbose") == "1",
        geolocate=query.get("ip", "1") != "0",
    )


def encode_answer(verbose: bool, success: bool, error: str | None) -> tuple[bytes, str]:
    """The body and content type the SDK reads: JSON with ``verbose``, else ``1``/``0``."""
    if verbose:
        return orjson.dumps({"status": int(success), "error": error}), "application/json"
    return (b"1" if success else b"0"), "text/plain"
