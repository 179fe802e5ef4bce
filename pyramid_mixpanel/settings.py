"""Settings: one table of ``(key, parser, default)`` rows parsed once into a frozen object.

Every mistake is a :class:`MixpanelConfigurationError` at startup naming the setting; an unknown
``mixpanel.*`` key is logged with the closest known key. Secrets are kept out of ``repr``.
"""

from __future__ import annotations

import logging
import typing as t
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pyramid.exceptions import ConfigurationError
from pyramid.path import DottedNameResolver

from .catalog import (
    Catalog,
    EventProperties,
    Events,
    GroupKeys,
    GroupProperties,
    ProfileMetaProperties,
    ProfileProperties,
    closest,
    closest_match,
)

logger = logging.getLogger("pyramid_mixpanel")

FALSE_WORDS = frozenset({"", "false", "f", "no", "n", "off", "0", "none", "null"})
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})
RELEASE_POLICIES = ("commit", "success", "always")
DELIVERY_MODES = ("background", "sync", "celery")

# Mixpanel's data residency: ingestion and query hosts per region.
INGESTION_HOSTS = {
    "us": "api.mixpanel.com",
    "eu": "api-eu.mixpanel.com",
    "in": "api-in.mixpanel.com",
}
QUERY_HOSTS = {"us": "mixpanel.com", "eu": "eu.mixpanel.com", "in": "in.mixpanel.com"}
EXPORT_HOSTS = {
    "us": "data.mixpanel.com",
    "eu": "data-eu.mixpanel.com",
    "in": "data-in.mixpanel.com",
}
CUSTOMERIO_REGIONS = ("us", "eu")


class MixpanelConfigurationError(ConfigurationError, ValueError):  # type: ignore[misc]  # untyped base
    """A ``mixpanel.*`` / ``customerio.*`` setting is invalid; the message names the setting."""


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise MixpanelConfigurationError(f"{key} must be a string, got {type(value).__name__}")
    return value.strip()


def as_secret(key: str, value: object) -> str | None:
    """Parse a token or secret: ``false``/``off``/``no``/empty mean "not set"."""
    if value is None or value is False:
        return None
    text = _text(key, value)
    return None if text.lower() in FALSE_WORDS else text


def as_bool(key: str, value: object) -> bool:
    """Parse a boolean strictly: a typo such as ``ture`` is an error, not ``False``."""
    if isinstance(value, bool):
        return value
    text = _text(key, value).lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise MixpanelConfigurationError(f"{key} must be a boolean (true/false), got {value!r}")


def as_positive_float(key: str, value: object) -> float:
    """Parse a number of seconds greater than zero."""
    try:
        number = float(value)  # type: ignore[arg-type]  # validated right here
    except (TypeError, ValueError):
        raise MixpanelConfigurationError(f"{key} must be a number, got {value!r}") from None
    if not number > 0:
        raise MixpanelConfigurationError(f"{key} must be greater than 0, got {value!r}")
    return number


def _positive_int(maximum: int) -> t.Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
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

    return parse


def as_base_url(key: str, value: object) -> str | None:
    """Parse a host (``api-eu.mixpanel.com``) or a base URL (``http://127.0.0.1:8080``)."""
    text = as_secret(key, value)
    if text is None:
        return None
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MixpanelConfigurationError(
            f"{key} must be a host name or an http(s) base URL, got {value!r}"
        )
    return text.rstrip("/")


def _choice(choices: t.Sequence[str]) -> t.Callable[[str, object], str | None]:
    def parse(key: str, value: object) -> str | None:
        text = as_secret(key, value)
        if text is None:
            return None
        if text.lower() not in choices:
            raise MixpanelConfigurationError(
                f"{key} must be one of {', '.join(choices)}, got {value!r}"
            )
        return text.lower()

    return parse


def _subclass(base: type | tuple[type, ...]) -> t.Callable[[str, object], type | None]:
    bases = base if isinstance(base, tuple) else (base,)
    wanted = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)

    def parse(key: str, value: object) -> type | None:
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                value = DottedNameResolver().resolve(value.strip())
            except (ImportError, ValueError) as exc:
                raise MixpanelConfigurationError(
                    f"{key} = {value!r} cannot be imported: {exc}"
                ) from None
        if not (isinstance(value, type) and issubclass(value, bases)):
            raise MixpanelConfigurationError(f"{key} must name a subclass of {wanted}: {value!r}")
        return value

    return parse


def as_dotted_object(key: str, value: object) -> object:
    """Resolve a dotted name (``myapp.celery:app`` or ``myapp.celery.app``) to an object."""
    if not isinstance(value, str):
        return value
    try:
        return DottedNameResolver().resolve(value.strip())
    except (ImportError, ValueError) as exc:
        raise MixpanelConfigurationError(f"{key} = {value!r} cannot be imported: {exc}") from None


def _consumer_bases() -> tuple[type, ...]:
    import mixpanel

    from .consumer import MockedConsumer

    return (mixpanel.Consumer, mixpanel.BufferedConsumer, MockedConsumer)


@dataclass(frozen=True)
class MixpanelSettings:
    """The parsed, validated settings of one app. Build it with :func:`parse_settings`."""

    token: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    events: type = Events
    event_properties: type = EventProperties
    profile_properties: type = ProfileProperties
    profile_meta_properties: type = ProfileMetaProperties
    group_keys: type = GroupKeys
    group_properties: type = GroupProperties
    consumer: type | None = None
    region: str = "us"
    api_host: str = "https://api.mixpanel.com"
    query_api_host: str = "https://mixpanel.com"
    export_api_host: str = "https://data.mixpanel.com"
    service_account_username: str | None = None
    service_account_secret: str | None = field(default=None, repr=False)
    service_account_project_id: str | None = None
    service_account_workspace_id: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    query_timeout: float = 60.0
    release_policy: str = "commit"
    delivery: str = "background"
    spool_path: str | None = None
    celery_app: object = None
    queue_max_messages: int = 100_000
    queue_max_bytes: int = 64 * 1024 * 1024
    flush_interval: float = 1.0
    shutdown_timeout: float = 5.0
    batch_max_records: int = 2000
    batch_max_bytes: int = 10 * 1024 * 1024
    structlog: bool = False
    customerio_site_id: str | None = field(default=None, repr=False)
    customerio_api_key: str | None = field(default=None, repr=False)
    customerio_region: str | None = None
    customerio_url: str | None = None

    @property
    def testing(self) -> bool:
        """True when no token is configured: messages are recorded, never sent."""
        return self.token is None

    @property
    def customerio_enabled(self) -> bool:
        """True when all three Customer.io settings are present."""
        return self.customerio_site_id is not None

    @property
    def has_service_account(self) -> bool:
        """True when service-account credentials are configured."""
        return self.service_account_username is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret, for scrubbing log lines and error messages."""
        values = (
            self.token,
            self.api_secret,
            self.service_account_secret,
            self.customerio_api_key,
            self.customerio_site_id,
        )
        return tuple(v for v in values if v)

    def build_catalog(self) -> Catalog:
        """Index the configured catalogue classes."""
        return Catalog(
            events=self.events,
            event_properties=self.event_properties,
            profile_properties=self.profile_properties,
            profile_meta_properties=self.profile_meta_properties,
            group_keys=self.group_keys,
            group_properties=self.group_properties,
        )


Parser = t.Callable[[str, object], object]

# (setting key, MixpanelSettings field, parser). Defaults live on the dataclass.
SETTINGS: tuple[tuple[str, str, Parser], ...] = (
    ("mixpanel.token", "token", as_secret),
    ("mixpanel.api_secret", "api_secret", as_secret),
    ("mixpanel.events", "events", _subclass(Events)),
    ("mixpanel.event_properties", "event_properties", _subclass(EventProperties)),
    ("mixpanel.profile_properties", "profile_properties", _subclass(ProfileProperties)),
    (
        "mixpanel.profile_meta_properties",
        "profile_meta_properties",
        _subclass(ProfileMetaProperties),
    ),
    ("mixpanel.group_keys", "group_keys", _subclass(GroupKeys)),
    ("mixpanel.group_properties", "group_properties", _subclass(GroupProperties)),
    ("mixpanel.consumer", "consumer", lambda k, v: _subclass(_consumer_bases())(k, v)),
    ("mixpanel.region", "region", _choice(tuple(INGESTION_HOSTS))),
    ("mixpanel.api_host", "api_host", as_base_url),
    ("mixpanel.query_api_host", "query_api_host", as_base_url),
    ("mixpanel.export_api_host", "export_api_host", as_base_url),
    ("mixpanel.service_account.username", "service_account_username", as_secret),
    ("mixpanel.service_account.secret", "service_account_secret", as_secret),
    ("mixpanel.service_account.project_id", "service_account_project_id", as_secret),
    ("mixpanel.service_account.workspace_id", "service_account_workspace_id", as_secret),
    ("mixpanel.connect_timeout", "connect_timeout", as_positive_float),
    ("mixpanel.read_timeout", "read_timeout", as_positive_float),
    ("mixpanel.query_timeout", "query_timeout", as_positive_float),
    ("mixpanel.release_policy", "release_policy", _choice(RELEASE_POLICIES)),
    ("mixpanel.delivery", "delivery", _choice(DELIVERY_MODES)),
    ("mixpanel.spool_path", "spool_path", as_secret),
    ("mixpanel.celery_app", "celery_app", as_dotted_object),
    ("mixpanel.queue_max_messages", "queue_max_messages", _positive_int(10**9)),
    ("mixpanel.queue_max_bytes", "queue_max_bytes", _positive_int(2**40)),
    ("mixpanel.flush_interval", "flush_interval", as_positive_float),
    ("mixpanel.shutdown_timeout", "shutdown_timeout", as_positive_float),
    ("mixpanel.batch_max_records", "batch_max_records", _positive_int(2000)),
    ("mixpanel.batch_max_bytes", "batch_max_bytes", _positive_int(10 * 1024 * 1024)),
    ("pyramid_heroku.structlog", "structlog", as_bool),
    ("customerio.tracking.site_id", "customerio_site_id", as_secret),
    ("customerio.tracking.api_key", "customerio_api_key", as_secret),
    ("customerio.tracking.region", "customerio_region", _choice(CUSTOMERIO_REGIONS)),
    ("customerio.tracking.url", "customerio_url", as_base_url),
)
KNOWN_KEYS = tuple(key for key, _, _ in SETTINGS)
WATCHED_PREFIXES = ("mixpanel.", "customerio.tracking.")
#: Keys parsed (and checked for typos) by optional includes, e.g. ``pyramid_mixpanel.relay``.
DELEGATED_PREFIXES = ("mixpanel.relay.", "mixpanel.metrics.", "mixpanel.insights.")


def parse_prefixed(
    settings: t.Mapping[str, object],
    prefix: str,
    parsers: t.Iterable[tuple[str, Parser]],
    also_known: t.Iterable[str] = (),
) -> dict[str, object]:
    """Parse the ``prefix + name`` keys of an include's settings table (``(name, parser)`` rows).

    Returns ``{name: value}`` for the keys given, leaving out values that mean "not set". A key
    under ``prefix`` that is neither in the table nor in ``also_known`` (names parsed elsewhere)
    is logged with the closest known key, compared without the shared prefix.
    """
    values: dict[str, object] = {}
    names = list(also_known)
    for name, parser in parsers:
        names.append(name)
        raw = settings.get(prefix + name)
        if raw is not None:
            parsed = parser(prefix + name, raw)
            if parsed is not None:
                values[name] = parsed
    for key in settings:
        if key.startswith(prefix) and key[len(prefix) :] not in names:
            match = closest_match(key[len(prefix) :], names)
            hint = f" Did you mean {prefix + match!r}?" if match else ""
            logger.warning("Unknown setting %s is ignored.%s", key, hint)
    return values


def parse_settings(settings: t.Mapping[str, object]) -> MixpanelSettings:
    """Parse and validate the ``mixpanel.*`` / ``customerio.tracking.*`` keys of ``settings``."""
    values: dict[str, object] = {}
    for key, attr, parser in SETTINGS:
        raw = settings.get(key)
        if raw is None:
            continue
        parsed = parser(key, raw)
        if parsed is not None:
            values[attr] = parsed

    for key in settings:
        if (
            key.startswith(WATCHED_PREFIXES)
            and not key.startswith(DELEGATED_PREFIXES)
            and key not in KNOWN_KEYS
        ):
            logger.warning("Unknown setting %s is ignored.%s", key, closest(key, KNOWN_KEYS))

    if "consumer" in values:
        # A custom consumer is called at the end of the request, like the original package did.
        if values.get("delivery") == "background":
            raise MixpanelConfigurationError(
                "mixpanel.consumer sends at the end of the request: it cannot be combined with"
                " mixpanel.delivery = background (drop one of them)"
            )
        values["delivery"] = "sync"
    if "spool_path" in values and values.get("delivery", "background") != "background":
        raise MixpanelConfigurationError("mixpanel.spool_path needs mixpanel.delivery = background")
    if (values.get("delivery") == "celery") != ("celery_app" in values):
        raise MixpanelConfigurationError(
            "mixpanel.delivery = celery and mixpanel.celery_app (the dotted name of your Celery"
            " app) go together"
        )

    region = t.cast(str, values.get("region", "us"))
    values.setdefault("api_host", f"https://{INGESTION_HOSTS[region]}")
    values.setdefault("query_api_host", f"https://{QUERY_HOSTS[region]}")
    values.setdefault("export_api_host", f"https://{EXPORT_HOSTS[region]}")

    _all_or_none(
        values,
        {
            "mixpanel.service_account.username": "service_account_username",
            "mixpanel.service_account.secret": "service_account_secret",
            "mixpanel.service_account.project_id": "service_account_project_id",
        },
    )
    _all_or_none(
        values,
        {
            "customerio.tracking.site_id": "customerio_site_id",
            "customerio.tracking.api_key": "customerio_api_key",
            "customerio.tracking.region": "customerio_region",
        },
    )
    if "customerio_url" in values and "customerio_site_id" not in values:
        raise MixpanelConfigurationError(
            "customerio.tracking.url is set but customerio.tracking.site_id, .api_key and"
            " .region are not"
        )
    if values.get("customerio_site_id"):
        _require_customerio()

    parsed = MixpanelSettings(**values)  # type: ignore[arg-type]  # keys come from the table
    # Build the catalogue once here so a bad class ('$' misuse…) fails at startup.
    parsed.build_catalog()
    return parsed


def _all_or_none(values: dict[str, object], group: dict[str, str]) -> None:
    present = [key for key, attr in group.items() if attr in values]
    if present and len(present) != len(group):
        missing = [key for key in group if key not in present]
        raise MixpanelConfigurationError(
            f"{', '.join(missing)} must be set together with {', '.join(present)}"
        )


def _require_customerio() -> None:
    try:
        import customerio  # noqa: F401
    except ImportError:
        raise MixpanelConfigurationError(
            "customerio.tracking.* is set but the customerio package is not installed:"
            " pip install 'pyramid_mixpanel[customerio]'"
        ) from None
