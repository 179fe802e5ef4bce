"""Settings tables: one row format, one parser and the converters every table uses.

The core (``mixpanel.*``, ``customerio.tracking.*``) and every include (``mixpanel.relay.*``,
``mixpanel.metrics.*``, ``mixpanel.insights.*``) declare their settings as rows of
:class:`Setting` and parse them with :func:`parse_table`, inside a configuration action, so a
later ``config.add_settings`` still counts. A converter takes ``(key, raw value)`` and returns
the typed value, or ``None`` for "not set"; every mistake is a
:class:`~pyramid_mixpanel.exceptions.MixpanelConfigurationError` naming the key. Values set from
Python (``True``, ``3``, a class, a list) are accepted as well as the strings of an ``.ini``
file.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import typing as t
import zoneinfo
from dataclasses import dataclass
from urllib.parse import urlsplit

from pyramid.path import DottedNameResolver

from .catalog import closest, closest_match
from .exceptions import MixpanelConfigurationError, with_note

__all__ = [
    "FALSE_WORDS",
    "TRUE_WORDS",
    "Converter",
    "Setting",
    "as_auto_bool",
    "as_base_url",
    "as_bool",
    "as_callable",
    "as_cookie_name",
    "as_database_url",
    "as_dotted_object",
    "as_hmac_secret",
    "as_lines",
    "as_name_list",
    "as_positive_float",
    "as_secret",
    "as_timezone",
    "from_environment",
    "one_of",
    "parse_table",
    "positive_int",
    "redact_url",
    "subclass_of",
]

logger = logging.getLogger("pyramid_mixpanel")

FALSE_WORDS = frozenset({"", "false", "f", "no", "n", "off", "0", "none", "null"})
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})

COOKIE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# HMAC keys shorter than this are guessable; 32 characters or more are suggested.
MIN_SECRET_LENGTH = 16

#: ``(key, raw value) -> typed value``, or ``None`` for "not set".
Converter = t.Callable[[str, object], object]


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise MixpanelConfigurationError(f"{key} must be a string, got {type(value).__name__}")
    return value.strip()


def as_secret(key: str, value: object) -> str | None:
    """Text, where ``false``/``off``/``no``/``0``/empty mean "not set" (tokens, secrets, names)."""
    if value is None or value is False:
        return None
    text = _text(key, value)
    return None if text.lower() in FALSE_WORDS else text


def as_bool(key: str, value: object) -> bool:
    """A boolean, strictly: a typo such as ``ture`` is an error, not ``False``."""
    if isinstance(value, bool):
        return value
    text = _text(key, value).lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise MixpanelConfigurationError(f"{key} must be a boolean (true/false), got {value!r}")


def as_auto_bool(key: str, value: object) -> bool | None:
    """A boolean, or ``auto`` (``None``: decided per request, e.g. Secure on HTTPS)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return as_bool(key, value)


def as_cookie_name(key: str, value: object) -> str | None:
    """A cookie name: letters, digits, ``_.-`` (``false``/empty: not set)."""
    text = as_secret(key, value)
    if text is not None and not COOKIE_NAME.fullmatch(text):
        raise MixpanelConfigurationError(f"{key} must be a cookie name (letters, digits, _.-)")
    return text


def as_hmac_secret(key: str, value: object) -> str | None:
    """A signing key of at least 16 characters; the message never repeats the value."""
    text = as_secret(key, value)
    if text is not None and len(text) < MIN_SECRET_LENGTH:
        raise MixpanelConfigurationError(
            f"{key} must be at least {MIN_SECRET_LENGTH} characters long (32 or more is"
            " better), e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return text


def as_positive_float(key: str, value: object) -> float:
    """A finite number greater than zero (seconds, rates)."""
    if isinstance(value, bool):
        raise MixpanelConfigurationError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]  # validated right here
    except (TypeError, ValueError):
        raise MixpanelConfigurationError(f"{key} must be a number, got {value!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise MixpanelConfigurationError(
            f"{key} must be a finite number greater than 0, got {value!r}"
        )
    return number


def positive_int(maximum: int) -> t.Callable[[str, object], int]:
    """A converter of whole numbers from 1 to ``maximum``."""

    def convert(key: str, value: object) -> int:
        if isinstance(value, bool):
            raise MixpanelConfigurationError(f"{key} must be a whole number, got {value!r}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise MixpanelConfigurationError(
                f"{key} must be a whole number, got {value!r}"
            ) from None
        if not 0 < number <= maximum:
            raise MixpanelConfigurationError(
                f"{key} must be between 1 and {maximum}, got {value!r}"
            )
        return number

    return convert


def as_base_url(key: str, value: object) -> str | None:
    """A host (``api-eu.mixpanel.com``) or an http(s) base URL (``http://127.0.0.1:8080``)."""
    text = as_secret(key, value)
    if text is None:
        return None
    if "://" not in text:
        text = f"https://{text}"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise MixpanelConfigurationError(
            f"{key} must be a host name or an http(s) base URL, got {_safe(value)!r}"
        )
    return text.rstrip("/")


def _safe(value: object) -> object:
    """A URL without the user and password it may carry, for an error message."""
    return redact_url(value) if isinstance(value, str) else value


def redact_url(url: str) -> str:
    """``url`` with the user and password of its authority replaced by ``***`` (for logs).

    Only the authority is looked at (before the first ``/`` after the scheme), so an ``@`` in a
    path or query is not mistaken for credentials.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, tail = rest.partition("/")
    if "@" not in authority:
        return url
    host = authority.rpartition("@")[2]
    return f"{scheme}{sep}***@{host}{slash}{tail}"


def one_of(choices: t.Sequence[str]) -> Converter:
    """A converter of one of ``choices`` (case-insensitive); "not set" words give ``None``."""

    def convert(key: str, value: object) -> str | None:
        text = as_secret(key, value)
        if text is None:
            return None
        if text.lower() not in choices:
            raise MixpanelConfigurationError(
                f"{key} must be one of {', '.join(choices)}, got {value!r}"
            )
        return text.lower()

    return convert


def as_dotted_object(key: str, value: object) -> object:
    """An object named by a dotted name (``myapp.celery:app`` or ``myapp.celery.app``).

    Anything that is not a string was set from Python and is taken as it is.
    """
    if not isinstance(value, str):
        return value
    try:
        return DottedNameResolver().resolve(value.strip())
    except (ImportError, ValueError, AttributeError) as exc:
        raise MixpanelConfigurationError(f"{key} = {value!r} cannot be imported: {exc}") from None


def as_callable(key: str, value: object) -> t.Callable[..., t.Any] | None:
    """A callable named by a dotted name; empty means "not set"."""
    if isinstance(value, str) and not value.strip():
        return None
    found = as_dotted_object(key, value)
    if not callable(found):
        raise MixpanelConfigurationError(f"{key} must name a callable, got {value!r}")
    return t.cast("t.Callable[..., t.Any]", found)


def subclass_of(*bases: type, named: str | None = None) -> Converter:
    """A converter of a class (or a dotted name of one) that subclasses one of ``bases``.

    ``named`` is how the error calls the bases (default: their dotted names). The messages are
    the original package's (apps' tests compare them); the setting and its value are a note.
    """
    wanted = named or " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)

    def convert(key: str, value: object) -> type | None:
        if isinstance(value, str) and not value.strip():
            return None
        if not isinstance(value, (str, type)):
            raise with_note(
                MixpanelConfigurationError(
                    f"dotted_name must be a string, but it is: {type(value).__name__}"
                ),
                f"{key} takes a dotted name (or, from Python, a class), not an instance",
            )
        found = as_dotted_object(key, value)
        if not (isinstance(found, type) and issubclass(found, bases)):
            raise with_note(
                MixpanelConfigurationError(f"class in dotted_name needs to be based on {wanted}"),
                f"{key} = {value!r}",
            )
        return found

    return convert


def as_lines(key: str, value: object) -> list[str]:
    """A list from a multi-line or comma-separated setting; lists from Python pass through."""
    if isinstance(value, str):
        return [item.strip() for item in re.split(r"[\n,]", value) if item.strip()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [str(item).strip() for item in value if str(item).strip()]
    raise MixpanelConfigurationError(f"{key}: expected a list, got {value!r}")


def as_name_list(key: str, value: object) -> tuple[str, ...]:
    """Names, one per line or comma-separated; ``off``/``false``/empty mean none at all."""
    if isinstance(value, str) and value.strip().lower() in FALSE_WORDS:
        return ()
    return tuple(as_lines(key, value))


@functools.cache
def _zone_names() -> frozenset[str]:
    # Scanning the time zone database takes a while: once per process, and only when set.
    return frozenset(zoneinfo.available_timezones())


def as_timezone(key: str, value: object) -> str | None:
    """An IANA time zone name (``Europe/Ljubljana``), checked against :mod:`zoneinfo`."""
    name = as_secret(key, value)
    if name is None:
        return None
    try:
        zoneinfo.ZoneInfo(name)
        known = name in _zone_names()
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        known = False
    if not known:
        raise MixpanelConfigurationError(
            f"{key} must be an IANA time zone name such as Europe/Ljubljana or UTC, got"
            f" {value!r}.{closest(name, _zone_names())}"
        )
    return name


def as_database_url(key: str, value: object) -> str | None:
    """An SQLAlchemy URL whose dialect is installed; never echoed (it may hold a password)."""
    url = as_secret(key, value)
    if url is None:
        return None
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    except ImportError:
        raise MixpanelConfigurationError(
            f"{key} needs SQLAlchemy: pip install 'pyramid_mixpanel[metrics]'"
        ) from None
    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise MixpanelConfigurationError(
            f"{key} is not an SQLAlchemy database URL with an installed dialect, e.g."
            " sqlite:///mixpanel-metrics.db or postgresql+psycopg://user@host/dbname"
        ) from None
    return url


@dataclass(frozen=True)
class Setting:
    """One row of a settings table.

    :param key: the full setting key, e.g. ``mixpanel.relay.path``.
    :param field: the attribute of the parsed settings object that receives the value.
    :param convert: the converter.
    :param fallback: another key read when ``key`` is absent (a setting shared with another
        package, such as ``pyramid_heroku.structlog``).
    """

    key: str
    field: str
    convert: Converter
    fallback: str | None = None


#: ``env:NAME``: the value of the environment variable ``NAME`` (a shell-style name).
ENV_REFERENCE = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")


def from_environment(key: str, raw: object) -> object:
    """``raw``, or the environment variable it names as ``env:NAME``.

    Lets an ``.ini`` keep secrets out of the file (``mixpanel.token = env:MIXPANEL_TOKEN``).
    An unset variable is an error naming the setting and the variable, never a value.
    """
    if not isinstance(raw, str) or not raw.strip().startswith("env:"):
        return raw
    reference = raw.strip()
    match = ENV_REFERENCE.fullmatch(reference)
    if match is None:
        raise MixpanelConfigurationError(
            f"{key} = {reference[:60]!r}: env: must be followed by a variable name"
            " (letters, digits and _)"
        )
    name = match.group(1)
    value = os.environ.get(name)
    if value is None:
        raise MixpanelConfigurationError(
            f"{key} = env:{name}: the environment variable {name} is not set"
        )
    return value


def parse_table(
    settings: t.Mapping[str, object],
    table: t.Iterable[Setting],
    *,
    namespaces: t.Sequence[str] = (),
    elsewhere: t.Sequence[str] = (),
    also_known: t.Iterable[str] = (),
) -> dict[str, object]:
    """Convert the keys of ``table`` found in ``settings``; return ``{field: value}``.

    Values that mean "not set" are left out, so the dataclass defaults apply. A key under one of
    ``namespaces`` that is neither in the table, nor in ``also_known``, nor under a prefix in
    ``elsewhere`` (parsed by another table) is logged with the closest known key: a typo must
    not pass silently.
    """
    values: dict[str, object] = {}
    known = set(also_known)
    for row in table:
        known.add(row.key)
        key = row.key
        raw = settings.get(key)
        if raw is None and row.fallback is not None:
            key, raw = row.fallback, settings.get(row.fallback)
        if raw is None:
            continue
        value = row.convert(key, from_environment(key, raw))
        if value is not None:
            values[row.field] = value
    for key in settings:
        if not isinstance(key, str) or not key.startswith(tuple(namespaces)):
            continue
        if key in known or key.startswith(tuple(elsewhere)):
            continue
        prefix = max((p for p in namespaces if key.startswith(p)), key=len)
        # Compared without the shared prefix, which would make every key look alike.
        names = [k[len(prefix) :] for k in known if k.startswith(prefix)]
        match = closest_match(key[len(prefix) :], names)
        hint = f" Did you mean {prefix + match!r}?" if match else ""
        logger.warning("Unknown setting %s is ignored.%s", key, hint)
    return values
