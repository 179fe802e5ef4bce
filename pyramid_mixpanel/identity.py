"""One visitor, one id: the signed first-party device cookie and Mixpanel's ID merge modes.

Mixpanel links an anonymous visitor to the user they become in one of three ways, chosen per
project (docs.mixpanel.com, "Identity Management Overview"):

``simplified`` (projects created since March 2023)
    Events carry ``$device_id`` (the anonymous id) and, once the visitor signed in, ``$user_id``
    too; the first event with both merges them ("Identifying Users (Simplified)"). Anonymous
    events have ``distinct_id = $device:<device id>``, signed-in ones the user id.
``original`` (Original ID Merge)
    Anonymous events have ``distinct_id = <device id>``; an ``$identify`` event with
    ``$identified_id`` (the user) and ``$anon_id`` (the device id, a UUID v4) merges them
    ("Identifying Users (Original)", reference/create-identity).
``legacy`` (before ID merge)
    As ``original``, but a ``$create_alias`` event makes the user id an alias of the anonymous id
    (reference/identity-create-alias).

The device id lives in a cookie signed with HMAC-SHA256 (WebOb's ``SignedSerializer``), so a
visitor cannot choose another visitor's id: a forged, unsigned or malformed value is ignored and
a fresh id is issued.
"""

from __future__ import annotations

import re
import typing as t
import uuid
from dataclasses import dataclass, field

from webob.cookies import SignedSerializer

if t.TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

__all__ = ["ID_MERGE_MODES", "DeviceCookie", "anonymous_id", "new_device_id"]

ID_MERGE_MODES = ("simplified", "original", "legacy")
# Separates the cookie's HMAC key from any other use of the same secret.
COOKIE_SALT = "pyramid_mixpanel.device_cookie"
#: A device id: a UUID in its canonical form. Original ID Merge only merges an ``$anon_id`` in
#: UUID v4 format (reference/create-identity), so that is what :func:`new_device_id` draws.
DEVICE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def new_device_id() -> str:
    """A fresh device id (a random UUID v4, canonical form)."""
    return str(uuid.uuid4())


def anonymous_id(device_id: str, id_merge: str) -> str:
    """The ``distinct_id`` of an anonymous visitor's events in an ID merge mode.

    Simplified ID Merge sets ``$device:<id>`` for events without ``$user_id``; the SDKs of the
    older modes use the device id itself, which ``$identify`` / ``$create_alias`` then name.
    """
    return f"$device:{device_id}" if id_merge == "simplified" else device_id


class _DeviceIdSerializer:
    """The device id as the signed bytes of :class:`~webob.cookies.SignedSerializer`."""

    @staticmethod
    def dumps(appstruct: str) -> bytes:
        return appstruct.encode("ascii")

    @staticmethod
    def loads(bstruct: bytes) -> str:
        text = bstruct.decode("ascii")  # UnicodeDecodeError is a ValueError
        if not DEVICE_ID.fullmatch(text):
            raise ValueError("not a device id")
        return text


@dataclass(frozen=True)
class DeviceCookie:
    """The signed first-party cookie that holds a visitor's device id (built once, at startup).

    :param name: the cookie's name (``mixpanel.device_cookie``).
    :param secret: the HMAC key (``mixpanel.cookie_secret``); never shown.
    :param secure: ``True``/``False``, or ``None`` for Secure exactly when the request is HTTPS.
    :param max_age: seconds the browser keeps the cookie.
    """

    name: str
    secret: str = field(repr=False)
    secure: bool | None = None
    max_age: int = 365 * 24 * 3600
    _signer: SignedSerializer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        signer = SignedSerializer(
            self.secret, COOKIE_SALT, hashalg="sha256", serializer=_DeviceIdSerializer()
        )
        object.__setattr__(self, "_signer", signer)

    def read(self, request: Request) -> str | None:
        """The device id signed into the request's cookie; ``None`` if absent or not genuine."""
        return self.device_id(request.cookies.get(self.name))

    def device_id(self, value: str | None) -> str | None:
        """The device id signed into a cookie value; ``None`` if empty, forged or unsigned."""
        if not value:
            return None
        try:
            # Verified in constant time by WebOb.
            return t.cast(str, self._signer.loads(value.encode("ascii")))
        except ValueError:  # not ASCII, not base64, a wrong signature or not a device id
            return None

    def value(self, device_id: str) -> str:
        """The cookie value for ``device_id`` (signed)."""
        return t.cast(bytes, self._signer.dumps(device_id)).decode("ascii")

    def write(self, request: Request, response: Response, device_id: str) -> None:
        """Set the cookie for ``device_id`` on ``response``: HttpOnly, SameSite=Lax, signed."""
        secure = request.scheme == "https" if self.secure is None else self.secure
        response.set_cookie(
            self.name,
            self.value(device_id),
            max_age=self.max_age,
            path="/",
            secure=secure,
            httponly=True,
            samesite="Lax",
        )
